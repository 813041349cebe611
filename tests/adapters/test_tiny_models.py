"""The tiny test models load with mlx-lm, generate deterministically and are not degenerate."""

import json

import mlx.core as mx
import pytest
from mlx_lm import generate, load
from mlx_lm.generate import generate_step
from support.tiny_models import ARCHS, EOS_TOKEN_ID, VOCAB_SIZE, make_tiny_model

PROMPT = "The capital of France is Paris, and the river in the city is 1,000 years old."
STRINGS = ["Hello, world!", "  two  spaces\tand a tab\n", "naïve café — 東京 🙂 ∑x²", "12345 + 678 = 13023?"]


@pytest.fixture(scope="module")
def loaded(tiny_model_path):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = load(str(tiny_model_path(arch)))
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_is_deterministic(loaded, arch):
    model, tok = loaded(arch)
    a = generate(model, tok, PROMPT, max_tokens=16)
    b = generate(model, tok, PROMPT, max_tokens=16)
    assert a == b and len(a) > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_not_degenerate(loaded, arch):
    model, tok = loaded(arch)
    ids = tok.encode(PROMPT)[:20]
    assert len(ids) == 20
    out = [int(t) for t, _ in generate_step(mx.array(ids), model, max_tokens=40)]
    assert len(set(out)) >= 5, out
    probs = mx.softmax(model(mx.array(ids)[None])[0, -1].astype(mx.float32))
    assert probs.shape == (VOCAB_SIZE,)
    assert probs.max().item() > 10 / VOCAB_SIZE


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer(loaded, arch):
    _, tok = loaded(arch)
    assert tok.eos_token_id == EOS_TOKEN_ID and EOS_TOKEN_ID in tok.eos_token_ids
    assert tok.encode("Hi")[0] not in (0, 1, 2)  # no BOS
    for s in STRINGS:
        assert tok.decode(tok.encode(s)) == s
    msgs = [{"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert ids[0] == 1 and ids.count(2) == 1


def test_layout_and_rebuild_is_identical(tiny_model_path, tmp_path):
    path = tiny_model_path("gemma3_text")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["eos_token_id"] == EOS_TOKEN_ID and cfg["vocab_size"] == VOCAB_SIZE
    again = make_tiny_model("gemma3_text", tmp_path / "again", seed=0)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (path / name).read_bytes() == (again / name).read_bytes(), name
    weights = mx.load(str(again / "model.safetensors"))
    assert all(w.dtype == mx.float32 for w in weights.values())
    assert "lm_head.weight" not in weights  # tied


def test_sliding_models_mix_cache_kinds(loaded):
    from mlx_lm.models.cache import KVCache, RotatingKVCache

    for arch in ("llama_sliding", "gemma3_text"):
        kinds = {type(c) for c in loaded(arch)[0].make_cache()}
        assert kinds == {KVCache, RotatingKVCache}, arch

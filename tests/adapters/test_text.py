"""Streaming text deltas add up to tokenizer.decode, hold back split characters, keep leading spaces."""

import pytest
from mlx_lm import load as mlx_load

from adapters.text import TextDeltas

STRINGS = [" Paris is the capital.", "héllo 🌍 wörld 😀 日本語", "  two  spaces\tand\ttabs\n", "👩‍👩‍👧 12345"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return mlx_load(str(tiny_model_path("llama")))[1]


@pytest.mark.parametrize("s", STRINGS)
def test_deltas_add_up_to_decode(tokenizer, s):
    ids = tokenizer.encode(s)
    deltas = TextDeltas(tokenizer)
    parts = [deltas.add(t) for t in ids]
    assert all("\ufffd" not in p for p in parts)
    assert "".join(parts) + deltas.flush() == tokenizer.decode(ids) == s
    if not s.isascii():
        assert "" in parts  # the byte-level tokens of a multi-byte character were held back


def test_incomplete_character_is_flushed_at_the_end(tokenizer):
    ids = tokenizer.encode("😀")
    deltas = TextDeltas(tokenizer)
    assert [deltas.add(t) for t in ids[:-1]] == [""] * (len(ids) - 1)
    assert deltas.flush() == tokenizer.decode(ids[:-1])


def test_a_token_decodes_a_short_window_however_long_the_response(tokenizer):
    """Each delta decodes only the latest few tokens, never the whole response, and still the
    deltas of a long response add up to its decode."""
    text = " ".join(STRINGS * 40)
    ids = tokenizer.encode(text)
    windows = []

    class Counting:
        def decode(self, tokens):
            windows.append(len(tokens))
            return tokenizer.decode(tokens)

    deltas = TextDeltas(Counting())
    parts = [deltas.add(t) for t in ids]
    assert max(windows) <= 8 < len(ids) // 10
    assert "".join(parts) + deltas.flush() == tokenizer.decode(ids)
    assert windows[-1] == len(ids)  # flush: one decode of the whole response

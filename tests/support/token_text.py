"""Texts that encode to an exact number of tokens (for limits checked in tokens)."""

from collections.abc import Callable

_ENDINGS = ("", "a", "ab", "a b", "a b c", "a b c d", ".", "..", "1", "12")


def text_of_tokens(count: Callable[[str], int], n: int) -> str:
    """A text of repeated words (and a short ending) for which `count(text) == n`, where
    `count(text)` is the number of tokens the text becomes."""
    lo, hi = 0, n  # the most words whose text has at most n tokens (a word is at least one token)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count("word " * mid) <= n else (lo, mid - 1)
    for k in range(lo, max(lo - 3, -1), -1):
        for ending in _ENDINGS:
            if count(text := "word " * k + ending) == n:
                return text
    raise AssertionError(f"no text of exactly {n} tokens found")

"""Cost per token of the streaming text deltas (adapters/text.py) against decoding the whole
response at every token, at several response lengths, on the embedded model's tokenizer. Both
give the same text (checked); prints µs per token and the ratio.

    python bench/text_deltas.py [--lengths 32,256,1024] [--repeats 5]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.loader import load  # noqa: E402
from adapters.text import TextDeltas  # noqa: E402

TEXT = ("The capital of France is Paris. Héllo wörld 😀 日本語, two  spaces\tand tabs.\n- item one\n"
        "- item two: 3.14 — pi! ") * 120


class WholeDecode:
    """Every token decodes the whole response so far (the way before the window)."""

    def __init__(self, tokenizer):
        self._decode, self.tokens, self.text = tokenizer.decode, [], ""

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self._decode(self.tokens)
        if text.endswith("\ufffd") or not text.startswith(self.text):
            return ""
        delta, self.text = text[len(self.text):], text
        return delta

    def flush(self) -> str:
        text = self._decode(self.tokens)
        delta, self.text = text[len(self.text):], text
        return delta


def per_token_us(kind, tokenizer, ids: list, repeats: int) -> tuple:
    best, text = float("inf"), ""
    for _ in range(repeats):
        start = time.perf_counter()
        deltas = kind(tokenizer)
        text = "".join(deltas.add(t) for t in ids) + deltas.flush()
        best = min(best, time.perf_counter() - start)
    return best / len(ids) * 1e6, text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="32,256,1024")
    ap.add_argument("--repeats", type=int, default=5, help="runs per arm and length; the fastest counts")
    args = ap.parse_args(argv)
    tokenizer = load("default", with_taps=False).tokenizer
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    for n in (int(x) for x in args.lengths.split(",")):
        window, text = per_token_us(TextDeltas, tokenizer, ids[:n], args.repeats)
        whole, reference = per_token_us(WholeDecode, tokenizer, ids[:n], args.repeats)
        assert text == reference == tokenizer.decode(ids[:n])
        print(f"{n:5d} tokens: window {window:7.1f} µs/token, whole decode {whole:7.1f} µs/token, "
              f"ratio {whole / window:.1f}x")


if __name__ == "__main__":
    main()

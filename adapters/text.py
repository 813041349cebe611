"""Streaming text deltas that add up to `tokenizer.decode(tokens)`.

mlx-lm's streaming detokenizers drop the leading space of a response (fine for chat, wrong for
continuing a raw prompt). Here a token's delta is what it adds to the decode of a short window of
the latest tokens (the tokens since the last delta but one, as in vLLM's incremental
detokenization), so a token costs the same however long the response is; `flush` decodes the whole
response once and returns whatever the deltas have not yet given.
"""


class TextDeltas:
    def __init__(self, tokenizer):
        self._decode = tokenizer.decode
        self.tokens: list = []
        self.text = ""
        self._start = 0  # the window: tokens[_start:] ...
        self._read = 0  # ... of which tokens[_start:_read] gave text already

    def add(self, token: int) -> str:
        """Append a token; return the new text (empty while a UTF-8 character is incomplete)."""
        self.tokens.append(token)
        before = self._decode(self.tokens[self._start:self._read])
        text = self._decode(self.tokens[self._start:])
        if len(text) <= len(before) or text.endswith("\ufffd") or not text.startswith(before):
            return ""
        delta = text[len(before):]
        self._start, self._read = self._read, len(self.tokens)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever the deltas have not given of the full decode (an incomplete character decodes to
        U+FFFD)."""
        text = self._decode(self.tokens)
        delta = text[len(self.text):] if text.startswith(self.text) else ""
        self.text = text
        return delta


VERDICTS = {"yes": ("Yes", " Yes", "yes", " yes", "YES", " YES"), "no": ("No", " No", "no", " no", "NO", " NO")}


def verdict_token_ids(tokenizer) -> tuple:
    """(yes ids, no ids): the spellings of "Yes"/"No" that the tokenizer encodes as one token."""
    def ids(words):
        found = {t[0] for w in words if len(t := tokenizer.encode(w, add_special_tokens=False)) == 1}
        return sorted(found) or [tokenizer.eos_token_id]  # never empty: a mass of an unused id is harmless
    return ids(VERDICTS["yes"]), ids(VERDICTS["no"])

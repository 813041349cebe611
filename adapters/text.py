"""Streaming text deltas that always add up to `tokenizer.decode(tokens)`.

mlx-lm's streaming detokenizers drop the leading space of a response (fine for chat, wrong for
continuing a raw prompt); here every delta is the growth of the full decode, so the deltas of a
response concatenate to exactly what `decode` gives for its tokens.
"""


class TextDeltas:
    def __init__(self, tokenizer):
        self._decode = tokenizer.decode
        self.tokens: list = []
        self.text = ""

    def add(self, token: int) -> str:
        """Append a token; return the new text (empty while a UTF-8 character is incomplete)."""
        self.tokens.append(token)
        text = self._decode(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes to U+FFFD)."""
        return self._advance(self._decode(self.tokens))

    def _advance(self, text: str) -> str:
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

"""Turning a job's steps into what /v1 returns: content tokens, stop strings, held-back text, and
each token's string and UTF-8 bytes."""

import dataclasses
import re
from typing import NamedTuple

from ...assessment import response_body
from ...engine import Finished, GenerationJob, StepRecord

SAMPLED_REASON = "sampling (temperature > 0) was used; thresholds were calibrated on greedy output"


def _byte_decoder() -> dict:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenStrings:
    """`token` (decode of the single id, as in /generate's top_logprobs) and its real UTF-8 `bytes`.

    Byte-level BPE and SentencePiece byte-fallback tokens may hold part of a character: their
    `bytes` are the raw bytes from the vocabulary, so a client can join them; anything else falls
    back to the UTF-8 of the decoded string.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._cache: dict = {}
        self._bytes = _byte_decoder()
        try:
            decoder = tokenizer.backend_tokenizer.decoder
            self.byte_level = "ByteLevel" in f"{type(decoder).__name__} {decoder}"
        except Exception:
            self.byte_level = False
        try:
            self.special = set(tokenizer.all_special_ids)
        except Exception:
            self.special = set()

    def get(self, token_id: int) -> tuple:
        if token_id not in self._cache:
            text = self.tok.decode([token_id])
            self._cache[token_id] = (text, self._raw_bytes(token_id, text))
        return self._cache[token_id]

    def _raw_bytes(self, token_id: int, text: str) -> list:
        try:
            if token_id not in self.special:
                piece = self.tok.convert_ids_to_tokens(token_id)
                if isinstance(piece, str) and piece:
                    if self.byte_level and all(c in self._bytes for c in piece):
                        return list(bytes(self._bytes[c] for c in piece))
                    if m := _BYTE_TOKEN.match(piece):
                        return [int(m.group(1), 16)]
                    if "\u2581" in piece and "\ufffd" in text:
                        return list(piece.replace("\u2581", " ").encode("utf-8"))
        except Exception:
            pass
        return list(text.encode("utf-8"))


class Span(NamedTuple):
    record: StepRecord
    start: int  # character offsets of its text in the completion
    end: int


class Piece(NamedTuple):
    text: str
    spans: list


class Run:
    """Turns a job's steps into released pieces of (text, content tokens), honouring stop strings."""

    def __init__(self, job: GenerationJob, stop_ids, stops: list, calibrations: tuple, params_reason, sampling: bool):
        self.job, self.stop_ids, self.stops = job, stop_ids, stops
        self.calibrations, self.params_reason, self.sampling = calibrations, params_reason, sampling
        self.records: list = []  # every step of the response (scored), EOS / P_fail step included
        self.spans: list = []  # content tokens
        self.full = ""  # their text so far
        self.sent = 0  # characters released
        self.released = 0  # spans released
        self.stopped = False  # a stop string ended the text at self.sent
        self.fin: Finished | None = None

    def add(self, rec: StepRecord) -> Piece | None:
        if self.stopped:
            return None  # generated after the stop string: not part of the response
        self.records.append(rec)
        cutoff = self.job.halt_cutoff
        if rec.token_id in self.stop_ids or (cutoff is not None and rec.pfail > cutoff):
            return None  # the EOS step or the step halted on P_fail: scored, no content token
        start = len(self.full)
        self.full += rec.text
        self.spans.append(Span(rec, start, len(self.full)))
        return self._release(final=False)

    def finish(self, fin: Finished) -> Piece | None:
        self.fin = fin
        if self.stopped:
            return None
        if fin.text_tail:  # an incomplete character at the end: it belongs to the last tokens
            self.full += fin.text_tail
            if self.spans:
                self.spans[-1] = self.spans[-1]._replace(end=len(self.full))
        return self._release(final=True)

    def _release(self, final: bool) -> Piece | None:
        hits = [i for s in self.stops if (i := self.full.find(s, self.sent)) >= 0]
        if hits:
            cut = min(hits)
            self.stopped = True
            spans = [s for s in self.spans[self.released:] if s.start < cut]
            return self._take(spans, cut)
        limit = len(self.full) if final else len(self.full) - self._holdback()
        spans = []
        for s in self.spans[self.released:]:
            if s.end > limit:
                break
            spans.append(s)
        # text is released at token boundaries; at the end, a tail without tokens of its own goes too
        return self._take(spans, len(self.full) if final else spans[-1].end if spans else self.sent)

    def _take(self, spans: list, end: int) -> Piece | None:
        if not spans and end == self.sent:
            return None
        text = self.full[self.sent:end]
        self.sent = end
        self.released += len(spans)
        return Piece(text, spans)

    def _holdback(self) -> int:
        """Length of the longest unreleased suffix that is the start of a stop string."""
        room = len(self.full) - self.sent
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, room), best, -1):
                if self.full.endswith(s[:k]):
                    best = k
                    break
        return best

    @property
    def finish_reason(self) -> str:
        """OpenAI's: stop (EOS, stop string, P_fail halt) or length."""
        return "length" if not self.stopped and self.fin.finish_reason == "length" else "stop"

    def body(self) -> dict:
        """The /generate-shaped body of the response (scores, quadrant, usage, timing)."""
        fin = self.fin
        if self.stopped:
            fin = dataclasses.replace(fin, finish_reason="stop")
        return response_body(self.records, fin, self.calibrations, self.params_reason, False)

    def risk(self, body: dict) -> dict:
        calibrated = bool(self.calibrations) and not self.sampling
        reason = None if calibrated else (SAMPLED_REASON if self.sampling else self.params_reason)
        return {
            "scores": body["scores"],
            "quadrant": body["quadrant"],
            "quadrant_reason": body["quadrant_reason"],
            "risk": body["risk"],
            "calibrated": calibrated,
            "calibrated_reason": reason,
            "finish_reason": "stop_sequence" if self.stopped else self.fin.finish_reason,
        }

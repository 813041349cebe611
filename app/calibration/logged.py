"""Labelled response-log entries as calibration data: the loop from deployment back to thresholds
and detectors (`halluwatch calibrate --from-log`).

An entry the operator labelled through POST /feedback (hallucinated: 1, correct: 0) becomes one
training sample: its prompt, in the format it was sent (a raw prompt, a prompt in the chat template,
or a single user message), is generated again greedily on the same model, which reproduces the
logged response, and the sample takes the entry's label. Entries that cannot be replayed are
refused, with the reason: stored without text (HALLUWATCH_LOG_TEXT was off), scored by /score (the
model did not write that response), a multi-turn chat, or logged by another model.
"""

import json
from collections import Counter
from dataclasses import dataclass

from .halueval import DatasetError
from .scoring import RunSpec

LOGGED = "logged"  # the task of a calibration from the log
LABEL_RULE = "feedback: the label an operator gave the logged response (hallucinated: 1, correct: 0)"
LABELS = {"hallucinated": 1, "correct": 0}


@dataclass(frozen=True)
class LoggedSample:
    key: str
    item: int
    prompt: str
    answer: str  # the logged response
    label: int
    task: str = LOGGED

    def label_for(self, text: str) -> int:
        return self.label


def _user_message(prompt: str) -> str | None:
    """The content of a chat of exactly one user message, else None."""
    try:
        messages = json.loads(prompt)
    except ValueError:
        return None
    if isinstance(messages, list) and len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0].get("content")
    return None


def _refusal(row: dict, fingerprint: str) -> str | None:
    if row["prompt"] is None or row["response"] is None:
        return "stored without text (serve with HALLUWATCH_LOG_TEXT=1 to keep it)"
    if row["route"] == "/score":
        return "scored by /score: the model did not write that response"
    if row["prompt_format"] == "messages" and _user_message(row["prompt"]) is None:
        return "a chat of more than one user message"
    if fingerprint is not None and row["model_fingerprint"] != fingerprint:
        return f"logged by another model (fingerprint {row['model_fingerprint']})"
    return None


def logged_samples(rows: list, fingerprint: str | None) -> tuple:
    """(samples, prompt format) from the labelled rows; DatasetError naming every refused entry's reason
    (`fingerprint`: the model's, None before it is loaded)."""
    refused = Counter(reason for row in rows if (reason := _refusal(row, fingerprint)) is not None)
    if refused:
        raise DatasetError(f"{sum(refused.values())} of the {len(rows)} labelled entries cannot be calibration "
                           "data: " + "; ".join(f"{n} {why}" for why, n in refused.items())
                           + " (narrow the selection with --since/--until)", "from_log")
    formats = {"raw" if row["prompt_format"] == "raw" else "chat" for row in rows}
    if len(formats) > 1:
        raise DatasetError("the labelled entries mix raw prompts and chat prompts; one calibration uses one "
                           "prompt format (narrow the selection with --since/--until)", "from_log")
    samples = [LoggedSample(f"log:{row['id']}", i, _user_message(row["prompt"])
                            if row["prompt_format"] == "messages" else row["prompt"], row["response"],
                            LABELS[row["label"]]) for i, row in enumerate(rows)]
    return samples, formats.pop() if formats else "raw"


@dataclass
class LoggedRunSpec(RunSpec):
    """A calibration run whose samples are labelled log entries (train split only)."""

    logged: tuple = ()

    def samples(self, split: str, cache_dir) -> tuple:
        if split != "train":
            raise DatasetError("a calibration from the log has only a train split; evaluate it on another source")
        return list(self.logged), {"task": LOGGED, "split": "train", "n": len(self.logged),
                                   "label_rule": LABEL_RULE, "items": [s.key for s in self.logged]}

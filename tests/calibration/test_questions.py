"""Question sources for own-answer calibration: the labelling rule, file formats, bad input, splits."""

import json

import pytest

from app.calibration.halueval import DatasetError
from app.calibration.questions import (NQ_OPEN, SOURCES, is_correct, load_questions, normalise, read_questions,
                                       source_counts,
                                       source_questions)


@pytest.mark.parametrize("answer,aliases,correct", [
    ("The capital of Kenya is Nairobi.", ["Nairobi"], True),
    ("It was in December 1972.", ["14 December 1972 UTC", "December 1972"], True),
    ("It happened in 1973.", ["1972"], False),
    ("Paris, of course!", ["paris"], True),
    ("He was born in Parisville.", ["Paris"], False),  # whole words only
    ("The Awakening is a statue.", ["Awakening"], True),  # articles do not matter
    ("", ["x"], False),
])
def test_alias_in_answer(answer, aliases, correct):
    assert is_correct(answer, aliases) is correct


def test_normalise():
    assert normalise("  The  U.S.A., an   Empire!") == "usa empire"


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_and_csv_read_alike(tmp_path):
    jsonl = _write(tmp_path / "q.jsonl", [json.dumps({"question": "Who?", "answer": ["A", "B"]}),
                                          json.dumps({"question": "Where?", "answer": "C", "context": "In C."})])
    csv = _write(tmp_path / "q.csv", ["question,answer,context", "Who?,A|B,", "Where?,C,In C."])
    a, b = read_questions(jsonl), read_questions(csv)
    assert [(q.question, q.answers, q.context) for q in a] == [(q.question, q.answers, q.context) for q in b]
    assert a[1].prompt == "Context: In C.\n\nQuestion: Where?" and a[0].prompt == "Who?"
    assert a[0].label_for("It was B.") == 0 and a[0].label_for("Nobody.") == 1


@pytest.mark.parametrize("lines,where", [
    (['{"question": "Q?", "answer": ["A"]}', '{"answer": ["A"]}'], "line 2: field 'question'"),
    (['{"question": "Q?", "answer": []}'], "line 1: field 'answer' is empty"),
    (['{"question": "Q?", "answer": ["  "]}'], "line 1: field 'answer' is empty"),
    (['{"question": "Q?"}'], "line 1: field 'answer' is missing"),
    (['{"question": "Q?", "answer": 3}'], "line 1: field 'answer' must be"),
    (['{"question": "Q?", "answer": "A", "context": ""}'], "line 1: field 'context'"),
    (['{"question": "Q?", "answer": "A"}', "{oops"], "line 2: not valid JSON"),
    (["", "  "], "no questions"),
])
def test_bad_files_name_file_line_and_field(tmp_path, lines, where):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DatasetError, match=where) as e:
        read_questions(path)
    assert str(path) in str(e.value)


def test_csv_without_the_columns_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="line 1: the CSV header"):
        read_questions(_write(tmp_path / "q.csv", ["query,reply", "Who?,A"]))


def test_shipped_sources_and_splits():
    nq = source_questions("nq_open")
    assert len(nq) == sum(1 for p in NQ_OPEN for line in p.read_text().splitlines() if line.strip()) == 5410
    train, split = load_questions(list(SOURCES), "train", 30, seed=3)
    test, _ = load_questions(list(SOURCES), "test", 30, seed=3)
    assert [q.source for q in train].count("nq_open") == 10 and len(train) == 30
    assert not {q.key for q in train} & {q.key for q in test}  # the splits never share a question
    assert load_questions(list(SOURCES), "train", 30, seed=3)[0] == train  # deterministic
    assert split["label_rule"].startswith("alias_in_answer") and set(split["items"]) == set(SOURCES)
    closed = {q.item: q for q in train if q.source == "halueval_closed"}
    assert all(q.context is None for q in closed.values())
    with pytest.raises(DatasetError, match="unknown source"):
        load_questions(["nope"], "train", 10)


@pytest.mark.parametrize("n,shares,counts", [(30, None, [10, 10, 10]), (31, None, [11, 10, 10]),
                                             (2500, [3, 1, 1], [1500, 500, 500]), (11, [3, 1, 1], [7, 2, 2])])
def test_source_counts_follow_the_shares(n, shares, counts):
    assert source_counts(n, list(SOURCES), shares) == counts


def test_shares_pick_more_questions_of_a_source_and_keep_its_first_ones():
    even, _ = load_questions(list(SOURCES), "train", 30, seed=3)
    more, split = load_questions(list(SOURCES), "train", 50, seed=3, shares=[3, 1, 1])
    nq = [q for q in more if q.source == "nq_open"]
    assert len(nq) == 30 and len(more) == 50 and split["shares"] == [3, 1, 1]
    assert nq[:10] == [q for q in even if q.source == "nq_open"]  # a larger share extends the same order
    assert {q.key for q in more if q.source != "nq_open"} == {q.key for q in even if q.source != "nq_open"}


@pytest.mark.parametrize("shares", [[1, 1], [1, 0, 1], [2, -1, 1], [1.5, 1, 1]])
def test_bad_shares_are_refused_naming_the_field(shares):
    with pytest.raises(DatasetError, match="shares must be 3 positive integers") as e:
        load_questions(list(SOURCES), "train", 30, shares=shares)
    assert e.value.field == "shares"

"""Prompt files for label-free calibration: every accepted form, and every bad input named by file,
line and field."""

import json

import pytest

from app.calibration.deployment import Prompt, load_prompts, read_prompts, source_prompts
from app.calibration.halueval import DatasetError
from app.calibration.questions import Question


def _jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_text_file_one_prompt_a_line(tmp_path):
    path = tmp_path / "asked.txt"
    path.write_text("What is the capital of France?\n\n  Who wrote Hamlet?  \n")
    prompts = read_prompts(path)
    assert prompts == [Prompt("asked", 0, "What is the capital of France?"), Prompt("asked", 1, "Who wrote Hamlet?")]
    assert prompts[1].key == "asked:1" and prompts[1].label_for("anything") is None


def test_jsonl_prompts_and_chats(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"}]
    prompts = read_prompts(_jsonl(tmp_path / "log.jsonl", [{"prompt": " Hi? "}, {"messages": chat, "id": 7}]))
    assert prompts[0].prompt == "Hi?" and prompts[0].messages is None
    assert prompts[1].prompt is None and list(prompts[1].messages) == chat


def test_question_files_are_prompt_sources_with_gold_answers_kept(tmp_path):
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "Capital of Peru?", "answer": ["Lima"]}])
    (q,) = read_prompts(path)
    assert isinstance(q, Question) and q.answers == ("Lima",) and q.label_for("It is Lima.") == 0
    csv = tmp_path / "q.csv"
    csv.write_text("question,answer\nCapital of Peru?,Lima|Ciudad de los Reyes\n")
    assert read_prompts(csv)[0].answers == ("Lima", "Ciudad de los Reyes")
    assert source_prompts("nq_open")[0].key == "nq_open:0"  # a shipped source


@pytest.mark.parametrize("lines,where,field", [
    ([{"prompt": ""}], "line 1", "'prompt'"),
    ([{"prompt": "ok"}, {"text": "no prompt"}], "line 2", "'prompt'"),
    ([{"prompt": 3}], "line 1", "'prompt'"),
    (["[1, 2]"], "line 1", "'prompt' or 'messages'"),
    (["{not json"], "line 1", "not valid JSON"),
    ([{"messages": []}], "line 1", "'messages'"),
    ([{"messages": "hi"}], "line 1", "'messages'"),
    ([{"messages": [{"role": "bot", "content": "hi"}]}], "line 1", "'messages[0].role'"),
    ([{"messages": [{"role": "user", "content": " "}]}], "line 1", "'messages[0].content'"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}], "line 1",
     "the last message must be the user's"),
    ([{"prompt": "fine"}, "", {"question": "no answer"}], "line 3", "'prompt'"),
])
def test_bad_jsonl_names_file_line_and_field(tmp_path, lines, where, field):
    path = _jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DatasetError) as e:
        read_prompts(path)
    assert str(path) in str(e.value) and where in str(e.value) and field in str(e.value)
    assert e.value.field == "sources"


@pytest.mark.parametrize("name,text", [("empty.txt", "\n  \n"), ("empty.jsonl", "")])
def test_no_usable_rows(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match="no prompts"):
        read_prompts(tmp_path / name)


def test_unknown_source_and_unreadable_file(tmp_path):
    with pytest.raises(DatasetError, match="unknown source 'nope'") as e:
        source_prompts("nope")
    assert e.value.field == "sources"
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DatasetError, match="cannot read"):
        read_prompts(tmp_path / "latin1.txt")


def test_splits_mix_prompt_files_and_shipped_sources(tmp_path):
    path = tmp_path / "asked.txt"
    path.write_text("".join(f"Prompt {i}?\n" for i in range(40)))
    train, split = load_prompts([str(path), "halueval_closed"], "train", 20, seed=3)
    test, _ = load_prompts([str(path), "halueval_closed"], "test", 20, seed=3)
    assert len(train) == len(test) == 20 and not {p.key for p in train} & {p.key for p in test}
    assert split["task"] == "consistency" and "label_rule" not in split
    assert {type(p) for p in train} == {Prompt, Question}

"""The consistency target: answer cores, when two answers are one, agreement, entropy and the label."""

import math

import pytest

from signals.consistency import clusters, consistency, first_sentence, same_answer, token_f1, without_words


@pytest.mark.parametrize("text,first", [
    ("Paris. It is in France.", "Paris."),
    ("  The U.K.\nand more", "The U.K."),
    ("no end", "no end"),
    ("Line one\n\nLine two", "Line one"),
    ("Is it? Yes", "Is it?"),
    ("3.5 metres. Then", "3.5 metres."),
])
def test_first_sentence(text, first):
    assert first_sentence(text) == first


def test_question_words_are_left_out():
    question = "who was last ruler of aztec empire"
    assert without_words("last ruler of aztec empire was montezuma", question) == "montezuma"
    assert without_words("capital of france", "what is capital of france") == ""


@pytest.mark.parametrize("a,b,same", [
    ("paris", "paris", True),
    ("", "", True),  # two answers that only repeat the question
    ("", "paris", False),
    ("paris", "city of paris", True),  # one contains the other as whole words
    ("par", "paris", False),  # not a whole word
    ("montezuma ii", "montezuma", True),
    ("montezuma ii ruled until 1520", "cuauhtemoc ruled until 1521", False),  # F1 = 0.4
    ("montezuma ruled until 1520 in tenochtitlan", "montezuma ruled until 1521", True),  # F1 = 0.67
    ("1520", "1521", False),
])
def test_same_answer(a, b, same):
    assert same_answer(a, b) is same and same_answer(b, a) is same


def test_token_f1():
    assert token_f1("a b c d", "a b") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("", "a") == 0.0 and token_f1("a a", "a") == pytest.approx(2 / 3)


def test_clusters_join_the_first_matching_head():
    # "paris" opens 0; "lyon" opens 1; "city of paris" joins 0; "lyon france" joins 1; "nice" opens 2
    assert clusters(["paris", "lyon", "city of paris", "lyon france", "nice"]) == [0, 1, 0, 1, 2]


def test_agreement_entropy_and_target():
    c = consistency("paris", ["paris", "city of paris", "lyon", "paris", "nice"])
    assert c == {"agreement": 0.6, "cluster_entropy": pytest.approx(-(4 / 6) * math.log(4 / 6) - 2 * (1 / 6) *
                                                                     math.log(1 / 6)), "clusters": 3, "target": 0}
    c = consistency("paris", ["lyon", "lyon", "paris", "nice"])
    assert c["agreement"] == 0.25 and c["target"] == 1 and c["clusters"] == 3
    c = consistency("paris", ["paris", "lyon"])  # exactly half agree: consistent
    assert c["target"] == 0
    all_same = consistency("paris", ["paris"] * 3)
    assert all_same["cluster_entropy"] == 0.0 and all_same["clusters"] == 1 and all_same["agreement"] == 1.0
    with pytest.raises(ValueError):
        consistency("paris", [])

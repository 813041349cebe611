"""Self-consistency of an answer: does the model say the same when asked again with sampling?

The label-free calibration target. What is compared of an answer is its core (`ANSWER_RULE`):
its first sentence, normalised (by the caller, e.g. SQuAD-style: lower case, no punctuation or
articles), without the words of the question, which a chat model repeats in every answer ("The
last ruler of the Aztec Empire was ..."). `CLUSTER_RULE` says when two cores count as the same
answer, `TARGET_RULE` when the greedy answer is flagged. Pure Python.
"""

import math
import re
from collections import Counter

F1_MIN = 0.5  # token F1 at or above which two answers are one
AGREEMENT_MIN = 0.5  # the greedy answer is consistent when at least this share of samples agrees
ANSWER_RULE = ("answer_core: the answer's first sentence (up to the first line break, or '.', '!' or '?' followed by "
               "white space), normalised SQuAD-style, without the words that occur in the normalised question")
CLUSTER_RULE = ("same_answer: two answer cores are the same answer when they are equal, when one occurs in "
                f"the other as whole words, or when their token F1 (SQuAD) is >= {F1_MIN}; the greedy answer opens "
                "the first cluster and each sample, in seed order, joins the first cluster whose first answer is "
                "the same answer as it, else opens a new one")
TARGET_RULE = (f"inconsistent_if_agreement_below_{AGREEMENT_MIN}: label 1 when fewer than {AGREEMENT_MIN:.0%} of the "
               "K samples fall in the greedy answer's cluster (it is not what the model says most of the time "
               "it is asked), else 0")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")


def first_sentence(text: str) -> str:
    """`text` up to its first line break or sentence end (leading white space skipped)."""
    text = text.strip()
    end = _SENTENCE_END.search(text)
    return text[:end.start()] if end else text


def without_words(answer: str, question: str) -> str:
    """The normalised `answer` without the words of the normalised `question`."""
    asked = set(question.split())
    return " ".join(w for w in answer.split() if w not in asked)


def token_f1(a: str, b: str) -> float:
    """SQuAD token F1 of two normalised answers (0 when either is empty)."""
    x, y = a.split(), b.split()
    common = sum((Counter(x) & Counter(y)).values())
    if not common:
        return 0.0
    precision, recall = common / len(x), common / len(y)
    return 2 * precision * recall / (precision + recall)


def same_answer(a: str, b: str) -> bool:
    """`CLUSTER_RULE` for two normalised answers (two empty answers are the same; one is not)."""
    if a == b:
        return True
    if not a or not b:
        return False
    return f" {a} " in f" {b} " or f" {b} " in f" {a} " or token_f1(a, b) >= F1_MIN


def clusters(answers: list) -> list:
    """The cluster index of each normalised answer (the first one's is 0), by `CLUSTER_RULE`."""
    heads, out = [], []
    for answer in answers:
        found = next((i for i, head in enumerate(heads) if same_answer(head, answer)), None)
        if found is None:
            heads.append(answer)
            found = len(heads) - 1
        out.append(found)
    return out


def consistency(greedy: str, samples: list) -> dict:
    """The greedy answer against its K samples (all normalised): `agreement` (share of the samples
    in the greedy answer's cluster), `cluster_entropy` (nats, of the cluster sizes over greedy and
    samples), `clusters` (how many) and the binary `target` of `TARGET_RULE`."""
    if not samples:
        raise ValueError("consistency needs at least one sample")
    ids = clusters([greedy, *samples])
    agreement = sum(1 for c in ids[1:] if c == 0) / len(samples)
    sizes = Counter(ids).values()
    entropy = -sum(s / len(ids) * math.log(s / len(ids)) for s in sizes)
    return {"agreement": agreement, "cluster_entropy": entropy + 0.0, "clusters": len(sizes),
            "target": int(agreement < AGREEMENT_MIN)}

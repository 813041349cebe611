"""Label-free calibration (task "consistency"): each prompt's greedy answer, scored as in an
own-answer run (records, block states), plus K answers sampled at a temperature in the same batch;
the greedy answer's label is whether its samples agree with it (signals/consistency.py), not a
gold answer. Gold answers, where a source has them, are kept as `gold_label` for evaluation only.
"""

import zlib

import numpy as np

from signals.consistency import ANSWER_RULE, CLUSTER_RULE, TARGET_RULE, consistency, first_sentence, without_words

from ..engine import GenerationJob
from .questions import normalise
from .scoring import _score_record, _states, encode

SEED_RULE = "crc32('<split seed>:<prompt key>:<k>') seeds the k-th sample of a prompt"


def sample_seed(spec, key: str, k: int) -> int:
    """The seed of a prompt's k-th sample: the same in every run, batch and resume (`SEED_RULE`)."""
    return zlib.crc32(f"{spec.seed}:{key}:{k}".encode())


def _jobs(engine, sample, spec) -> list:
    """The greedy job of a prompt (states captured when probes are fitted), then its K sampled jobs."""
    ids = encode(engine, sample, spec)
    greedy = GenerationJob(ids, spec.max_tokens, priority=1, capture_hidden=spec.probes)
    return [greedy] + [GenerationJob(ids, spec.max_tokens, priority=1, temperature=spec.temperature,
                                     top_p=spec.top_p, seed=sample_seed(spec, sample.key, k))
                       for k in range(spec.n_samples)]


def _text(records: list, fin) -> str:
    return "".join(r.text for r in records) + fin.text_tail


def _question(sample) -> str:
    """What the user asked: a question's question (not its context), a prompt, a chat's last message."""
    return getattr(sample, "question", None) or sample.prompt or sample.messages[-1]["content"]


def answer_core(text: str, question: str) -> str:
    """`ANSWER_RULE`: what the consistency target compares of an answer."""
    return without_words(normalise(first_sentence(text)), normalise(question))


def score_batch(engine, samples: list, spec) -> list:
    """(record, states) per prompt: the greedy answer's record (as `scoring.score_batch` writes it)
    with its sampled answers (`samples`), their consistency and `label` = the consistency target;
    the gold label, if any, as `gold_label`. Every row of every prompt goes in one engine batch."""
    rows = spec.n_samples + 1
    jobs = [job for s in samples for job in _jobs(engine, s, spec)]
    results = [h.wait() for h in engine.submit_batch(jobs)]  # Cancelled if the engine stopped
    out = []
    for i, s in enumerate(samples):
        (records, fin), *sampled = results[i * rows:(i + 1) * rows]
        rec = _score_record(s, records, fin)
        texts = [_text(*r) for r in sampled]
        asked = _question(s)
        c = consistency(answer_core(rec["text"], asked), [answer_core(t, asked) for t in texts])
        rec.update(gold_label=rec["label"], label=c.pop("target"), samples=texts, **c)
        out.append((rec, _states(records) if spec.probes else None))
    return out


def protocol(spec, records: list) -> dict:
    """What the params' protocol records of a label-free run: K, T, top_p, the rules, the target's
    class balance and, where gold labels exist, how often the target matches them."""
    target = np.array([r["label"] for r in records])
    gold = [(r["label"], r["gold_label"]) for r in records if r.get("gold_label") is not None]
    return {
        "samples": spec.n_samples, "temperature": spec.temperature, "top_p": spec.top_p, "seed_rule": SEED_RULE,
        "answer_rule": ANSWER_RULE, "cluster_rule": CLUSTER_RULE,
        "target_rule": TARGET_RULE,
        "target_balance": {"inconsistent": int(target.sum()), "consistent": int((target == 0).sum()),
                           "share_inconsistent": float(target.mean())},
        "mean_agreement": float(np.mean([r["agreement"] for r in records])),
        "target_matches_gold": ({"n": len(gold), "share": float(np.mean([t == g for t, g in gold]))}
                                if gold else None),
    }


def run_options(protocol: dict) -> dict:
    """The RunSpec options of the label-free run that wrote params with this protocol (none for others)."""
    lf = protocol.get("label_free")
    return {"n_samples": lf["samples"], "temperature": lf["temperature"], "top_p": lf["top_p"]} if lf else {}

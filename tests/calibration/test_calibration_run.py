"""The scoring pass: batched equals one at a time, and a resumed run equals an uninterrupted one."""

import threading

import numpy as np
import pytest

from app.calibration.scoring import RunSpec, checkpoint_path, read_checkpoint, score_all
from app.engine import Cancelled
from app.calibration.halueval import load_samples
from support.engines import running_engine
from support.qa_data import write_qa

FIELDS = ("hbar_s", "pri", "pfail_max")


@pytest.fixture(scope="module", params=["llama", "llama_sliding"])  # shared-prefix KV copies; rotating caches
def engine(tiny_model_path, request):
    with running_engine(tiny_model_path(request.param)) as e:
        yield e


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    path = write_qa(tmp_path_factory.mktemp("data") / "qa.jsonl", 24)
    return load_samples("qa", "train", 12, seed=7, dataset=path)[0]


def _spec(**kw):
    return RunSpec(**{"model_ref": "tiny", "task": "qa", "n": 12, "max_tokens": 10, **kw})


def test_batched_scores_equal_one_at_a_time(engine, samples, tmp_path):
    saved = engine.lm.stop_ids
    # make a token that several outputs emit at different steps a stop token, so that sequences
    # end at different steps and leave the batch
    first = score_all(engine, samples, _spec(), tmp_path / "first.jsonl")
    where = {}
    for r in first:
        for i, t in enumerate(r["token_ids"][1:], 1):
            where.setdefault(t, set()).add(i)
    stop = max(where, key=lambda t: len(where[t]))
    engine.lm.stop_ids = frozenset({stop, *saved})
    try:
        one = score_all(engine, samples, _spec(), tmp_path / "one.jsonl")
        batched = score_all(engine, samples, _spec(batch_size=5), tmp_path / "batch.jsonl")
    finally:
        engine.lm.stop_ids = saved
    assert len({r["tokens"] for r in one}) > 1, "all sequences ran equally long: filtering untested"
    for a, b in zip(one, batched):
        fields = ("key", "tokens", "finish_reason", "text")
        assert [a[f] for f in fields] == [b[f] for f in fields]
        np.testing.assert_allclose([a[f] for f in FIELDS], [b[f] for f in FIELDS], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a["steps"]["pri"], b["steps"]["pri"], rtol=1e-4, atol=1e-6)


def test_resume_after_interruption_equals_uninterrupted(engine, samples, tmp_path):
    full = score_all(engine, samples, _spec(batch_size=2), tmp_path / "full.jsonl")
    ckpt = tmp_path / "part.jsonl"
    stop = threading.Event()

    def progress(done, total):
        if done >= 5:
            stop.set()

    with pytest.raises(Cancelled):
        score_all(engine, samples, _spec(batch_size=2), ckpt, progress=progress, cancelled=stop)
    kept = read_checkpoint(ckpt)
    assert 5 <= len(kept) < len(samples)
    with open(ckpt, "a") as f:
        f.write('{"key": "qa:torn')  # a crash in the middle of a write
    resumed = score_all(engine, samples, _spec(batch_size=2), ckpt)
    assert resumed == full


def test_checkpoint_path_is_stable_and_bound_to_the_model(engine):
    a = checkpoint_path("r", engine.lm, _spec(), "train")
    assert a == checkpoint_path("r", engine.lm, _spec(n=400), "train")  # n grows, file stays
    assert a.name == f"{engine.lm.model_id.lower()}-{engine.lm.fingerprint.id}_qa_train_seed42_mt10_raw.jsonl"

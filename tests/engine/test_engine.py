"""Generation with signals on tiny models of several architectures.

1. Tokens and logprobs are bit-identical to mlx-lm's own generate_step (short and chunked prefill);
   with the log-softmax made on the host, tokens are, and logprobs equal to float rounding.
2. Every per-step signal equals a reference that recomputes the whole prefix without a KV cache at
   every step (the prototype's method) and applies the formulas in numpy, EOS step included,
   with the log-softmax and the reductions over the vocabulary on the device and on the host.
3. Response scores are top-5 means; P_fail halting stops before appending the token.
4. Idle for a moment, the engine hands the memory its work freed back to the system, once.
"""

import threading
import time

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load as mlx_load
from mlx_lm.generate import generate_step
from support.tiny_models import ARCHS

from adapters import batching
from adapters.batching import generate_steps
from adapters.loader import load
from adapters.text import verdict_token_ids
from app.engine import Engine, GenerationJob, core
from support.engines import running_engine
from support.reference import probs, reference
from signals.response import top_k_mean
from signals.step import STEP_FIELDS, step_signals

N_TOKENS = 32
TEXT = "The quick brown fox jumps over the lazy dog near the river in 1999, and the capital of France is"


def _prompt(tokenizer, n: int) -> list:
    ids = tokenizer.encode(TEXT * 3)
    assert len(ids) >= n
    return ids[:n]


def _reduce(logprobs, hidden, token, prev):
    return step_signals(logprobs, hidden, token, prev, 2.0, 5.0)


def _no_device_reduce(logprobs, hidden, token, prev):
    assert logprobs is None  # the step's reductions are made on the host
    return mx.zeros((hidden.shape[0], 0))


@pytest.mark.parametrize("host_softmax", [False, True], ids=["softmax-on-device", "softmax-on-host"])
@pytest.mark.parametrize("prompt_len,prefill_step", [(5, 2048), (45, 8)], ids=["short", "chunked"])
@pytest.mark.parametrize("arch", ARCHS)
def test_bit_identical_to_mlx_lm(tiny_model_path, monkeypatch, arch, prompt_len, prefill_step, host_softmax):
    # the batch's KV caches grow 8 tokens at a time here (mlx-lm's: 256): 4 times in 32 steps
    monkeypatch.setattr(batching, "BATCH_KV_STEP", 8)
    path = str(tiny_model_path(arch))
    plain, tok = mlx_load(path)  # no taps on this one
    ids = _prompt(tok, prompt_len)
    expected = [(int(t), lp) for t, lp in generate_step(mx.array(ids), plain, max_tokens=N_TOKENS,
                                                          prefill_step_size=prefill_step)]
    lm = load(path, precision="native")
    got = list(generate_steps(lm, ids, N_TOKENS, _no_device_reduce if host_softmax else _reduce, top_logprobs=5,
                              prefill_step_size=prefill_step,
                              host_reduce=(lambda logprobs, token, hidden, prev: logprobs) if host_softmax else None))
    assert [s.token for s in got] == [t for t, _ in expected]
    assert len(set(s.token for s in got)) > 3, "degenerate tiny model: the test would prove little"
    for step, (token, lps) in zip(got, expected):
        lps = np.array(lps)
        order = np.argsort(-lps, kind="stable")[:5]
        assert [t for t, _ in step.top] == order.tolist()
        assert step.top[0][0] == step.token
        if host_softmax:  # float rounding of another logsumexp
            assert step.logprob == pytest.approx(lps[token], rel=1e-6, abs=1e-6)
            np.testing.assert_allclose([lp for _, lp in step.top], lps[order], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(step.rows, lps, rtol=1e-6, atol=1e-6)
        else:
            assert step.logprob == lps[token].item()  # bit-identical
            assert [lp for _, lp in step.top] == lps[order].tolist()
            assert step.rows is None


@pytest.fixture(scope="module")
def engines(tiny_model_path):
    started = {}

    def get(arch):
        if arch not in started:
            started[arch] = Engine(str(tiny_model_path(arch)), precision="native")
            started[arch].start()
        return started[arch]

    yield get
    for e in started.values():
        e.stop()


def _no_cache_reference(path, ids, tokens):
    """Per-step signals recomputed from the whole prefix at every step, without a KV cache."""
    lm = load(path, precision="native")
    rows, prev = [], None
    for t, token in enumerate(tokens):
        logits = lm.model(mx.array(ids + tokens[:t])[None])[0, -1]
        hidden = np.array(lm.taps.stacked()[0])
        rows.append(reference(np.array(logits), hidden, token, prev))
        prev = hidden[-1]
    return np.array(rows)


@pytest.mark.parametrize("host_softmax", [True, False], ids=["softmax-on-host", "softmax-on-device"])
@pytest.mark.parametrize("arch", ARCHS)
def test_signals_equal_no_cache_reference_with_eos(tiny_model_path, engines, arch, host_softmax, monkeypatch):
    from app.engine import core

    monkeypatch.setattr(core, "reductions_on_host", lambda: host_softmax)
    engine = engines(arch)
    ids = _prompt(engine.lm.tokenizer, 20)
    records, fin = engine.submit(GenerationJob(ids, N_TOKENS)).wait()
    tokens = [r.token_id for r in records]
    # Make a token that first appears late in the run the stop token, so the run ends on it.
    k = next(i for i in range(len(tokens) - 1, 5, -1) if tokens[i] not in tokens[:i])
    saved = engine.lm.stop_ids
    engine.lm.stop_ids = frozenset({tokens[k]})
    try:
        records, fin = engine.submit(GenerationJob(ids, N_TOKENS)).wait()
    finally:
        engine.lm.stop_ids = saved
    assert fin.finish_reason == "eos" and fin.stop_token_id == tokens[k]
    assert [r.token_id for r in records] == tokens[: k + 1]
    assert records[-1].text == ""  # the EOS step is scored, its token is not part of the text

    got = np.array([[getattr(r, f) for f in STEP_FIELDS] for r in records])
    ref = _no_cache_reference(str(tiny_model_path(arch)), ids, tokens[: k + 1])
    # 1e-4 relative; the absolute 1e-6 only matters for Δh at step 0 (exactly 0) and tiny P_fail.
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    assert got[0, STEP_FIELDS.index("delta_h")] == 0.0
    # the step-0 probability mass on the "Yes"/"No" spellings, against numpy
    yes_ids, no_ids = verdict_token_ids(engine.lm.tokenizer)
    p0 = probs(np.array(load(str(tiny_model_path(arch)), precision="native").model(mx.array(ids)[None])[0, -1]))
    assert records[0].verdict["p_yes"] == pytest.approx(p0[yes_ids].sum(), rel=1e-4)
    assert records[0].verdict["p_no"] == pytest.approx(p0[no_ids].sum(), rel=1e-4)


def test_response_scores_are_top5_means(tiny_model_path, engines):
    from app.assessment import response_body

    engine = engines("llama")
    records, fin = engine.submit(GenerationJob(_prompt(engine.lm.tokenizer, 12), 12)).wait()
    body = response_body(records, fin, None, "none", include_trace=True)
    assert body["scores"]["hbar_s"] == top_k_mean([r.hbar_s for r in records])
    assert body["scores"]["pri"] == top_k_mean([r.pri for r in records])
    assert body["scores"]["pfail_max"] == max(r.pfail for r in records)
    assert body["scores"]["surprise_mean"] == pytest.approx(np.mean([r.surprise for r in records]))
    assert body["scores"]["prob_min"] == min(r.prob for r in records)
    assert body["text"] == "".join(r.text for r in records) + fin.text_tail
    assert body["usage"]["completion_tokens"] == len(body["trace"]) == 12


def test_pfail_halting_stops_before_appending(engines):
    engine = engines("qwen2")
    tok = engine.lm.tokenizer
    ids = _prompt(tok, 16)
    records, _ = engine.submit(GenerationJob(ids, N_TOKENS)).wait()
    pf = [r.pfail for r in records]
    j = next(i for i in range(2, len(pf)) if pf[i] > max(pf[:i]))
    cutoff = (max(pf[:j]) + pf[j]) / 2
    halted, fin = engine.submit(GenerationJob(ids, N_TOKENS, halt_cutoff=cutoff)).wait()
    assert fin.finish_reason == "pfail"
    assert len(halted) == j + 1  # the halting step is scored ...
    assert halted[-1].text == ""  # ... but its token is not appended
    text = "".join(r.text for r in halted) + fin.text_tail
    assert text == tok.decode([r.token_id for r in records[:j]])


def test_sampling_is_seeded_and_signals_use_the_sampled_token(engines):
    engine = engines("llama")
    ids = _prompt(engine.lm.tokenizer, 10)
    greedy, _ = engine.submit(GenerationJob(ids, 16)).wait()
    runs = [engine.submit(GenerationJob(ids, 16, temperature=1.5, seed=s)).wait()[0] for s in (1, 1, 2)]
    tokens = [[r.token_id for r in recs] for recs in runs]
    assert tokens[0] == tokens[1] and tokens[0] != tokens[2]
    assert tokens[0] != [r.token_id for r in greedy]
    for r in runs[0]:  # surprise is −log p(sampled token) at temperature 1, equal to −logprob
        assert r.surprise == pytest.approx(-r.logprob, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("at", [0, 3])
def test_cancel_stops_after_the_step_in_progress(engines, monkeypatch, at):
    """The engine checks `job.cancelled` after each step it emits: a job cancelled while step `at`
    is being reported (here from inside the report, so nothing races) emits no further step."""
    from app.engine import Cancelled, Finished, core
    from app.engine.handle import Handle

    seen = []

    class CancelAt(Handle):
        def emit(self, item):
            seen.append(item)
            if len(seen) == at + 1:
                self.cancel()
            super().emit(item)

    monkeypatch.setattr(core, "Handle", CancelAt)
    engine = engines("llama")
    handle = engine.submit(GenerationJob(_prompt(engine.lm.tokenizer, 10), N_TOKENS))
    with pytest.raises(Cancelled):
        handle.wait()
    assert len(seen) == at + 2 and isinstance(seen[-1], Finished) and seen[-1].finish_reason == "cancelled"


def test_idle_engine_releases_freed_memory_once(tiny_model_path, monkeypatch):
    calls = []  # the threads that released (other tests' engines may be idle too)
    monkeypatch.setattr(core, "IDLE_RELEASE_S", 0.05)
    monkeypatch.setattr(core, "release_memory", lambda: calls.append(threading.current_thread()))
    with running_engine(tiny_model_path("llama")) as engine:
        def released(n: int) -> bool:
            deadline = time.monotonic() + 5
            while sum(t is engine._thread for t in calls) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # and not again while it stays idle
            return sum(t is engine._thread for t in calls) == n

        assert released(1)  # idle after loading (what loading freed)
        ids = _prompt(engine.lm.tokenizer, 5)
        for n in (2, 3):
            engine.submit(GenerationJob(ids, 4)).wait()
            assert released(n)  # idle again after the work

"""Continuous batching: a sequence in a batch that others join and leave gets what it gets alone.

1. `DecodeBatch` driven by a fixed schedule (rows of different prompt lengths and lengths joining
   at different steps, one leaving early, chunked prefill, prefixes reused) on every tiny
   architecture: each row's tokens equal `generate_steps` alone, logprobs and signals within 1e-4.
2. The engine with jobs submitted while others decode (from inside the engine's reports, so the
   step each joins at is fixed): per-request probes, top logprobs, seeded sampling, a calibration
   batch, one job cancelled mid-batch; each equals the same job run alone.
3. Admission: interactive jobs up to `max_batch_size`, calibration only in the room left; beyond
   the batch `queue_depth` wait and the next is refused with EngineBusy; calibration rows delay an
   interactive job by one step at most.
"""

import numpy as np
import pytest
from mlx_lm.models.cache import KVCache
from support.engines import running_engine
from support.tiny_models import ARCHS

from adapters import batching
from adapters.batching import DecodeBatch, Row, generate_steps
from adapters.loader import load
from app.engine import Cancelled, EngineBusy, Finished, GenerationJob, StepRecord, core
from app.engine.handle import Handle
from signals.probe import Probe
from signals.step import STEP_FIELDS, step_signals

TEXT = "The quick brown fox jumps over the lazy dog near the river in 1999, and the capital of France is"
TOL = dict(rtol=1e-4, atol=1e-5)


def _reduce(logprobs, hidden, token, prev):
    return step_signals(logprobs, hidden, token, prev, 2.0, 5.0)


def _ids(tokenizer, n: int, offset: int = 0) -> list:
    ids = tokenizer.encode(TEXT * 4)
    return ids[offset:offset + n]


def _assert_same(got: list, alone: list) -> None:
    """RawSteps of a batched row against the same sequence alone."""
    assert [s.token for s in got] == [s.token for s in alone]
    np.testing.assert_allclose([s.logprob for s in got], [s.logprob for s in alone], **TOL)
    np.testing.assert_allclose([s.values for s in got], [s.values for s in alone], **TOL)
    assert [[t for t, _ in s.top] for s in got] == [[t for t, _ in s.top] for s in alone]


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_joining_and_leaving_mid_batch_match_alone(tiny_model_path, monkeypatch, arch):
    lm = load(str(tiny_model_path(arch)), precision="native")
    monkeypatch.setattr(batching, "BATCH_KV_STEP", 4)  # the batch's caches grow every 4 steps (alone: 64)
    tok = lm.tokenizer
    base = _ids(tok, 40)
    # (prompt, max_tokens, step it joins at, top_logprobs); the last two share a 40-token prefix
    plan = [(_ids(tok, 5), 14, 0, 3), (_ids(tok, 21, 3), 6, 1, 0), (_ids(tok, 45, 7), 10, 3, 5),
            (base + _ids(tok, 3, 50), 9, 5, 0), (base + _ids(tok, 2, 60), 7, 5, 2)]
    leaves_early = (0, 8)  # row 0 leaves after 8 of its 14 steps (as a cancelled job does)
    batch = DecodeBatch(lm, prefill_step_size=8, reuse_bytes=1 << 26)
    got, reused, rows, kinds = [[] for _ in plan], [None] * len(plan), {}, set()
    step, pending = 0, list(range(len(plan)))
    while pending or batch.rows:
        newcomers = [i for i in pending if plan[i][2] <= step]
        prefills = []
        for i in newcomers:  # those joining at one step join together
            ids, _, _, top = plan[i]
            rows[i] = Row(i, top_logprobs=top, max_steps=plan[i][1])
            prefills.append(batch.prefill(ids, rows[i]))
            while not prefills[-1].done:
                prefills[-1].advance(8)
            reused[i] = prefills[-1].reused
            pending.remove(i)
        if prefills:
            batch.join(prefills)
        if not batch.rows:
            step += 1
            continue
        kinds.add((len(batch.rows), batching._plain(batch._cache)))
        steps, _ = batch.step(_reduce)
        for row, raw in steps:
            got[row.owner].append(raw)
        owner, after = leaves_early
        batch.leave([row for row in batch.rows if row.owner == owner and len(got[owner]) == after])
        step += 1
    assert [len(s) for s in got] == [8, 6, 10, 9, 7]
    # steps are pipelined: the row that left early had one more started; none past its max_steps
    assert [rows[i].started for i in range(len(plan))] == [9, 6, 10, 9, 7]
    monkeypatch.undo()
    for i, (ids, _, _, top) in enumerate(plan):
        alone = list(generate_steps(lm, ids, len(got[i]), _reduce, top_logprobs=top, prefill_step_size=8))
        _assert_same(got[i], alone)
    assert len(set(s.token for s in got[2])) > 2, "degenerate tiny model: the test would prove little"
    if arch in ("llama", "qwen2", "phi3"):  # plain KV caches: prompt 3 starts with prompt 0 but its
        assert reused == [0, 0, 0, 4, 40]  # last token, prompt 4 shares 40 tokens with prompt 3
        # a row alone steps on mlx-lm's own KVCache (as generate_step), first and after the others left
        assert (1, True) in kinds and (1, False) not in kinds and any(n > 1 for n, _ in kinds)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_prompt_cache_keeps_only_the_tokens_kv(tiny_model_path, arch):
    """A prefilled prompt's KV caches are allocated as the batch's are, BATCH_KV_STEP tokens at a
    time (mlx-lm's 256 would hold 32 newcomers prefilled together at 4× their size); the prompt
    cache keeps them cut to the prompt's tokens (its byte budget then holds more prompts), and a
    prompt reusing them still gets what it gets alone (the test above)."""
    lm = load(str(tiny_model_path(arch)), precision="native")
    batch = DecodeBatch(lm, prefill_step_size=8, reuse_bytes=1 << 26)
    ids = _ids(lm.tokenizer, 21)
    prefill = batch.prefill(ids, Row(None))
    while not prefill.done:
        prefill.advance(8)
    expected = 0
    for layer in prefill.cache:
        k, v = layer.state[:2]
        if type(layer) is KVCache:  # the plain layers: the 20 tokens it ran, where 64 were allocated
            assert k.shape[2] == batching.BATCH_KV_STEP == 64
            expected += 20 * (k.nbytes + v.nbytes) // k.shape[2]
        else:  # a sliding-window layer (gemma3) is kept as it is
            expected += k.nbytes + v.nbytes
    assert batch.reuse.nbytes == expected
    assert any(type(layer) is KVCache for layer in prefill.cache)


def test_batch_kv_caches_grow_by_the_batch_step(tiny_model_path):
    lm = load(str(tiny_model_path("llama")), precision="native")
    batch = DecodeBatch(lm)
    prefills = [batch.prefill(_ids(lm.tokenizer, 9, offset), Row(None)) for offset in (0, 1)]
    for prefill in prefills:
        prefill.advance(2048)
    batch.join(prefills)
    for _ in range(3):
        batch.step(_reduce, lambda steps, tag: steps)
    assert {layer.keys.shape[2] for layer in batch._cache} == {8 + batching.BATCH_KV_STEP}  # mlx-lm's: 8 + 256
    batch.leave(batch.rows[:1])  # one row left: mlx-lm's KVCache of its 8 + 4 tokens (a step in flight)
    assert {(type(layer), layer.keys.shape[2]) for layer in batch._cache} == {(KVCache, 12)}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_conversations_next_turn_reuses_the_answer(tiny_model_path, monkeypatch, arch):
    """An interactive answer's KV is kept when it leaves the batch: a next turn made of the prompt,
    the answer and a new message prefills only the new message (and what the answer's last step
    did not feed), and gets what it gets with no prompt cache at all. A calibration answer is not
    kept."""
    path = tiny_model_path(arch)
    with running_engine(path, prompt_cache_mb=0) as engine:
        tok = engine.lm.tokenizer
        prompt, more = _ids(tok, 12), _ids(tok, 5, 30)
        answer = [r.token_id for r in engine.submit(GenerationJob(prompt, 7)).wait()[0]]
        alone = engine.submit(GenerationJob(prompt + answer + more, 6, top_logprobs=2)).wait()[0]
    script = Script(monkeypatch)
    with running_engine(path, prompt_cache_mb=64) as engine:
        assert [r.token_id for r in engine.submit(GenerationJob(prompt, 7)).wait()[0]] == answer
        records, fin = engine.submit(GenerationJob(prompt + answer + more, 6, top_logprobs=2)).wait()
        # it left at its 7th step, never started an 8th: the prompt's last token and 6 answer tokens were fed
        assert fin.cached_tokens == len(prompt) - 1 + 7
        _same_records(records, alone)
        # one cancelled after 4 tokens left with a 5th step started (pipelined): all 4 were fed
        cut = script.name("cut", GenerationJob(prompt[:10], 20))
        handle = engine.submit(cut)
        script.actions[("cut", 3)] = handle.cancel
        with pytest.raises(Cancelled):
            handle.wait()
        partial = [r.token_id for r in script.records("cut")]
        assert len(partial) == 4
        fin = engine.submit(GenerationJob(prompt[:10] + partial + more, 3)).wait()[1]
        assert fin.cached_tokens == 10 + 4
        calibration = GenerationJob(_ids(tok, 12, 50), 7, priority=1)
        answer = [r.token_id for r in engine.submit(calibration).wait()[0]]
        fin = engine.submit(GenerationJob(_ids(tok, 12, 50) + answer, 3)).wait()[1]
        assert fin.cached_tokens == 11  # its prompt only


def _probe(lm, layer: int, seed: int) -> Probe:
    rng = np.random.default_rng(seed)
    d = lm.model.args.hidden_size
    return Probe(layer=layer, position="last_step", mean=rng.normal(size=d), scale=rng.uniform(0.5, 2.0, d),
                 coef=rng.normal(size=d) / np.sqrt(d), intercept=0.3, cv_auroc=0.7, distance_limit=1e6)


class Script:
    """Runs actions on the engine thread when a job emits a given step (so what joins or leaves
    the batch does so at a fixed step), and logs every report with a global sequence number."""

    def __init__(self, monkeypatch):
        self.actions: dict = {}  # (name, step index) -> callable
        self.names: dict = {}  # id(job) -> name
        self.log: list = []  # (name, item)
        self.batch_sizes: list = []
        script = self

        class Scripted(Handle):
            def emit(self, item):
                name = script.names.get(id(self.job))
                script.log.append((name, item))
                if isinstance(item, StepRecord):
                    n = sum(1 for who, it in script.log if who == name and isinstance(it, StepRecord)) - 1
                    if (action := script.actions.pop((name, n), None)) is not None:
                        action()
                super().emit(item)

        monkeypatch.setattr(core, "Handle", Scripted)

    def name(self, name: str, job):
        self.names[id(job)] = name
        return job

    def records(self, name: str) -> list:
        return [it for who, it in self.log if who == name and isinstance(it, StepRecord)]

    def finished(self, name: str) -> Finished:
        return next(it for who, it in self.log if who == name and isinstance(it, Finished))

    def first_seq(self, name: str) -> int:
        return next(i for i, (who, it) in enumerate(self.log) if who == name and isinstance(it, StepRecord))


def _same_records(got: list, alone: list) -> None:
    assert [r.token_id for r in got] == [r.token_id for r in alone]
    assert "".join(r.text for r in got) == "".join(r.text for r in alone)
    for field in ("logprob", *STEP_FIELDS):
        np.testing.assert_allclose([getattr(r, field) for r in got], [getattr(r, field) for r in alone], **TOL,
                                   err_msg=field)
    for field in ("probe_logits", "probe_distances"):
        np.testing.assert_allclose([getattr(r, field) for r in got], [getattr(r, field) for r in alone], **TOL,
                                   err_msg=field)
    assert [[t["token_id"] for t in r.top_logprobs] for r in got] == \
        [[t["token_id"] for t in r.top_logprobs] for r in alone]


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_jobs_joining_leaving_and_cancelled_mid_batch_match_alone(tiny_model_path, monkeypatch, arch):
    # with a prompt cache: the batched jobs reuse the prompts their runs alone left in it
    with running_engine(tiny_model_path(arch), prompt_cache_mb=64) as engine:
        lm = engine.lm
        tok = lm.tokenizer
        with_probe = (_probe(lm, 1, 0), _probe(lm, 2, 1))
        jobs = {
            "a": lambda: GenerationJob(_ids(tok, 5), 16, top_logprobs=3),
            "b": lambda: GenerationJob(_ids(tok, 20, 2), 5, probes=with_probe),
            "c": lambda: GenerationJob(_ids(tok, 12, 9), 14, temperature=1.3, top_p=0.9, seed=7),
            "d": lambda: GenerationJob(_ids(tok, 30, 4), 10, probes=with_probe[1:]),
            "e": lambda: GenerationJob(_ids(tok, 25, 1), 8, priority=1),
            "f": lambda: GenerationJob(_ids(tok, 25, 1) + _ids(tok, 4, 40), 6, priority=1),
        }
        alone = {}
        for name, make in jobs.items():  # one at a time
            alone[name] = engine.submit(make()).wait()[0]

        script = Script(monkeypatch)
        made = {name: script.name(name, make()) for name, make in jobs.items()}
        handles = {}

        def submit(*names):
            for n in names:
                handles[n] = engine.submit(made[n])

        def calibration():
            for n, h in zip("ef", engine.submit_batch([made["e"], made["f"]])):
                handles[n] = h

        script.actions[("a", 2)] = lambda: submit("b", "c")
        script.actions[("a", 4)] = lambda: (submit("d"), calibration())
        script.actions[("b", 3)] = lambda: handles["c"].cancel()
        script.actions[("d", 1)] = lambda: script.batch_sizes.append(engine.batch_size)
        handles["a"] = engine.submit(made["a"])
        handles["a"].wait()
        assert not script.actions, f"steps never reached: {list(script.actions)}"
        for name in "bdef":
            handles[name].wait()
        with pytest.raises(Cancelled):
            handles["c"].wait()

    assert script.batch_sizes and script.batch_sizes[0] >= 4  # a, c, d, e, f were decoding together
    for name in jobs:
        assert script.finished(name).cached_tokens == len(made[name].prompt_ids) - 1, name  # all but its last
        got = script.records(name)
        if name == "c":  # cancelled at b's step 3: after its own step 3, a prefix of what it gets alone
            assert script.finished("c").finish_reason == "cancelled"
            assert 1 <= len(got) < len(alone["c"])
            _same_records(got, alone["c"][:len(got)])
        else:
            assert script.finished(name).finish_reason == "length" or got[-1].token_id in lm.stop_ids
            _same_records(got, alone[name])


def test_kv_cache_bytes_follow_the_running_batch(tiny_model_path, monkeypatch):
    """What /metrics reports as the batch's KV caches: a second row like the first doubles them
    (same prompt, same step), and they are gone once the batch is empty."""
    script = Script(monkeypatch)
    seen = {}
    with running_engine(tiny_model_path("llama"), prompt_cache_mb=0) as engine:
        ids = _ids(engine.lm.tokenizer, 9)
        for rows in (1, 2):
            jobs = [script.name(f"{rows}-{i}", GenerationJob(ids, 6)) for i in range(rows)]
            script.actions[(f"{rows}-0", 3)] = lambda rows=rows: seen.setdefault(rows, engine.kv_cache_bytes)
            for h in engine.submit_batch(jobs):
                h.wait()
        assert engine.kv_cache_bytes == 0
    assert seen[1] > 0 and seen[2] == 2 * seen[1]


def test_admission_follows_the_batch_size_and_the_queue(tiny_model_path, monkeypatch):
    """max_batch_size 2, queue_depth 1: a third job waits for a free row, a fourth is refused."""
    with running_engine(tiny_model_path("llama"), max_batch_size=2, queue_depth=1) as engine:
        tok = engine.lm.tokenizer
        script = Script(monkeypatch)
        made = {n: script.name(n, GenerationJob(_ids(tok, 6, i), m)) for i, (n, m) in enumerate(
            [("a", 12), ("b", 4), ("c", 3), ("d", 3)])}
        handles, seen = {}, {}

        def at_b_step_1():
            seen["batch"], seen["waiting"] = engine.batch_size, engine.queue_depth
            handles["c"] = engine.submit(made["c"])
            with pytest.raises(EngineBusy, match="queue is full"):
                engine.submit(made["d"])
            seen["after"] = engine.queue_depth

        script.actions[("a", 0)] = lambda: handles.update(b=engine.submit(made["b"]))
        script.actions[("b", 1)] = at_b_step_1
        handles["a"] = engine.submit(made["a"])
        for name in "abc":
            handles[name].wait()
    assert seen == {"batch": 2, "waiting": 0, "after": 1}
    # c joined when b left: its first step comes right after b's last one
    b_done = next(i for i, (who, it) in enumerate(script.log) if who == "b" and isinstance(it, Finished))
    assert script.first_seq("c") > b_done
    assert next(it for who, it in script.log if who == "a" and isinstance(it, StepRecord)) is not None
    assert script.finished("c").queue_s > 0 and len(script.records("c")) == 3


def test_calibration_rows_delay_an_interactive_job_by_one_step_at_most(tiny_model_path, monkeypatch):
    """A batch full of calibration rows (max_batch_size 2) still takes an interactive job at the next step."""
    with running_engine(tiny_model_path("llama"), max_batch_size=2) as engine:
        tok = engine.lm.tokenizer
        script = Script(monkeypatch)
        calib = [script.name(n, GenerationJob(_ids(tok, 8, i), 10, priority=1)) for i, n in enumerate("xy")]
        late = script.name("late", GenerationJob(_ids(tok, 8, 5), 10, priority=1))
        urgent = script.name("urgent", GenerationJob(_ids(tok, 7, 3), 4))
        handles = {}
        script.actions[("x", 2)] = lambda: handles.update(late=engine.submit(late), urgent=engine.submit(urgent))
        for h in engine.submit_batch(calib):
            h.wait()
        handles["urgent"].wait()
        handles["late"].wait()
    steps_x = [i for i, (who, it) in enumerate(script.log) if who == "x" and isinstance(it, StepRecord)]
    # submitted while x's step 2 is reported, x's step 3 already started (steps are pipelined): the
    # urgent job is in the next step started, x's step 4, reported before it as rows report in batch
    # order; the late calibration job waits for room
    assert sum(1 for i in steps_x if i < script.first_seq("urgent")) == 5
    assert script.first_seq("late") > max(steps_x)


def test_interactive_prompts_are_prefilled_before_calibration_prompts(tiny_model_path, monkeypatch):
    """Calibration prompts still being prefilled (a few tokens per step) do not hold back the prefill
    of an interactive job that arrives after them: it decodes first."""
    with running_engine(tiny_model_path("llama"), prefill_step_size=4) as engine:
        tok = engine.lm.tokenizer
        script = Script(monkeypatch)
        clock = script.name("clock", GenerationJob(_ids(tok, 3), 12))
        calib = [script.name(n, GenerationJob(_ids(tok, 40, i), 3, priority=1)) for i, n in enumerate("xy")]
        urgent = script.name("urgent", GenerationJob(_ids(tok, 6, 3), 3))
        handles = {}
        script.actions[("clock", 0)] = lambda: handles.update(zip("xy", engine.submit_batch(calib)))
        script.actions[("clock", 2)] = lambda: handles.update(urgent=engine.submit(urgent))
        engine.submit(clock).wait()
        for name in ("x", "y", "urgent"):
            handles[name].wait()
    assert script.first_seq("urgent") < min(script.first_seq("x"), script.first_seq("y"))

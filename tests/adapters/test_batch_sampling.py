"""Per-row sampling in a batch: sampled rows are reproducible from their seed whatever else is in
the batch, and a greedy row stays the greedy generation of its prompt."""

import pytest

from adapters.decode import RowSampling, generate_batch, generate_steps
from adapters.loader import load
from app.engine import GenerationJob
from signals.step import step_signals

TEXT = "The quick brown fox jumps over the lazy dog near the river in 1999, and the capital of France is"
N = 12


def _reduce(logits, hidden, token, prev):
    return step_signals(logits, hidden, token, prev, 2.0, 5.0)


@pytest.fixture(scope="module")
def lm(tiny_model_path):
    lm = load(str(tiny_model_path("llama")), precision="native")
    lm.stop_ids = frozenset()  # every row runs N steps
    return lm


def _tokens(batch) -> list:
    return [[s.token for s in row] for row in batch]


def test_sampled_rows_follow_their_seed_and_the_greedy_row_stays_greedy(lm):
    ids = lm.tokenizer.encode(TEXT)[:24]
    other = lm.tokenizer.encode(TEXT[::-1])[:20]
    rows = [None, RowSampling(1.5, seed=1), RowSampling(1.5, seed=2), RowSampling(1.5, seed=1)]
    first = _tokens(generate_batch(lm, [ids] * 4, N, _reduce, sampling=rows))
    again = _tokens(generate_batch(lm, [ids] * 4, N, _reduce, sampling=rows))
    assert first == again  # deterministic per seed
    assert first[1] == first[3] and first[1] != first[2]  # the same seed draws the same tokens
    greedy = [s.token for s in generate_steps(lm, ids, N, _reduce)]
    assert first[0] == greedy and first[1] != greedy
    # a row's draws depend on its seed and prompt only, not on the other rows of its batch
    mixed = _tokens(generate_batch(lm, [other, ids, ids], N, _reduce,
                                   sampling=[RowSampling(0.7, seed=9), RowSampling(1.5, seed=2), None]))
    assert mixed[1] == first[2] and mixed[2] == greedy


def test_top_p_keeps_draws_inside_the_nucleus(lm):
    ids = lm.tokenizer.encode(TEXT)[:24]
    tiny_p = _tokens(generate_batch(lm, [ids] * 3, N, _reduce,
                                    sampling=[None, RowSampling(1.5, 1e-6, 1), RowSampling(1.5, 1e-6, 2)]))
    assert tiny_p[1] == tiny_p[2] == tiny_p[0]  # a nucleus of one token is the argmax


def test_engine_batch_members_sample_with_their_job_temperature(engine):
    ids = engine.lm.tokenizer.encode(TEXT)[:24]
    jobs = [GenerationJob(ids, N), GenerationJob(ids, N, temperature=1.5, seed=3),
            GenerationJob(ids, N, temperature=1.5, seed=3)]
    runs = [[r.token_id for r in h.wait()[0]] for h in engine.submit_batch(jobs)]
    greedy = [r.token_id for r in engine.submit(GenerationJob(ids, N)).wait()[0]]
    assert runs[0] == greedy[:len(runs[0])] and runs[1] == runs[2] and runs[1] != runs[0]

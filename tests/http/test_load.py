"""Concurrent clients on a live server (bench/load.py and bench/concurrency.py, smaller): every request
gets a 200 or a clean 503/504, every 200 output equals the sequential run of its prompt, the server is
healthy after; concurrent requests are decoded in one batch."""

import asyncio

from support import load_bench


fuzz = load_bench("fuzz")  # serve()
load = load_bench("load")
concurrency = load_bench("concurrency")

CLIENTS, REQUESTS, MAX_TOKENS = 8, 2, 6


def test_concurrent_streams_are_deterministic_and_cleanly_refused(tiny_model_path, tmp_path):
    # queue_depth 4 < 8 clients: some requests are refused with 503, the rest must be exact
    with fuzz.serve(tiny_model_path("llama"), tmp_path, queue_depth=4, max_streams=CLIENTS,
                    max_tokens_limit=MAX_TOKENS) as (url, _app, _engine):
        report = asyncio.run(load.run_load(url, load.PROMPTS, CLIENTS, REQUESTS, MAX_TOKENS, timeout_s=30.0,
                                           deadline_s=45.0))
    report.print()
    assert len(report.answers) == CLIENTS * REQUESTS
    assert {a.status for a in report.answers} <= {200, 503, 504}
    assert not report.problems, "\n".join(report.problems)
    assert not report.health, report.health
    oks = [a for a in report.answers if a.status == 200]
    assert oks and all(load.output(a) == report.expected[a.prompt] for a in oks)
    assert all(len(a.token_ids) >= 1 and a.done["usage"]["completion_tokens"] == len(a.token_ids) for a in oks)


def test_concurrent_chat_clients_share_the_batch_and_match_the_sequential_run(tiny_model_path, tmp_path,
                                                                              monkeypatch):
    """8 chat clients × 2 requests, max_batch_size 4, queue_depth 2: decoded together, refused only with 503."""
    import httpx

    from adapters.batching import DecodeBatch

    rows, step = [], DecodeBatch.step
    monkeypatch.setattr(DecodeBatch, "step", lambda self, *a: rows.append(len(self.rows)) or step(self, *a))
    with fuzz.serve(tiny_model_path("llama"), tmp_path, queue_depth=2, max_batch_size=4, max_streams=CLIENTS,
                    max_tokens_limit=MAX_TOKENS) as (url, _app, engine):
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        sequential = {p: asyncio.run(concurrency.run_clients_one(url, model, p, MAX_TOKENS))[0]
                      for p in range(len(concurrency.PROMPTS))}
        assert {a.status for a in sequential.values()} == {200}
        answers, _ = asyncio.run(concurrency.run_clients(url, model, CLIENTS, REQUESTS, MAX_TOKENS))
        assert httpx.get(f"{url}/health").status_code == 200
    assert len(answers) == CLIENTS * REQUESTS and {a.status for a in answers} <= {200, 503}
    oks = [a for a in answers if a.status == 200]
    assert len(oks) >= 4 and all(a.text == sequential[a.prompt].text and a.tokens == sequential[a.prompt].tokens
                                 for a in oks)
    assert max(rows) > 1  # they were decoded together
    assert max(rows) <= 4 and engine.batch_size == 0

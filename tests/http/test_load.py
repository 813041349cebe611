"""Concurrent streaming clients on a live server (bench/load.py, smaller): every request gets a 200 or a
clean 503/504, every 200 output equals the sequential run of its prompt, the server is healthy after."""

import asyncio

from support import load_bench


fuzz = load_bench("fuzz")  # serve()
load = load_bench("load")

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

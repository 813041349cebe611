"""Two server processes on one PostgreSQL log: one /monitor/summary sees both replicas' responses."""

import httpx
import pytest
from support.postgres import fresh_database
from support.server_process import server_process, wait_until


@pytest.mark.slow
def test_two_replicas_share_one_postgresql_log(tiny_model_path, tmp_path):
    model = tiny_model_path("llama")
    with fresh_database() as url, server_process(model, tmp_path / "a", log_url=url) as (_, a), \
            server_process(model, tmp_path / "b", log_url=url) as (_, b):
        ids = {base: [httpx.post(f"{base}/generate", json={"prompt": f"hello {i}", "max_tokens": 3},
                                 timeout=60).json()["response_id"] for i in range(3)] for base in (a, b)}

        def summary() -> dict:
            return httpx.get(f"{a}/monitor/summary", params={"window": "1h", "bucket": "10m"}, timeout=30).json()

        wait_until(lambda: summary()["count"] == 6, 30, "both replicas' entries in the summary")
        s = summary()
        assert len(s["replicas"]) == 2 and sorted(s["replicas"].values()) == [3, 3]
        listed = httpx.get(f"{b}/monitor/responses", timeout=30).json()["responses"]
        assert {r["response_id"] for r in listed} == set(ids[a]) | set(ids[b])

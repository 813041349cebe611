"""A server killed with SIGKILL in the middle of traffic: its SQLite log opens intact and lost at most
the entries its writer queue held (HALLUWATCH_LOG_QUEUE)."""

import signal
import sqlite3
import threading

import httpx
import pytest
from support.server_process import server_process, wait_until

from app.monitor.store import Filters, Store, database_url

QUEUE = 8


@pytest.mark.slow
def test_kill_9_mid_run_loses_at_most_the_queue(tiny_model_path, tmp_path):
    answered, stop = [], threading.Event()

    def client(url: str, k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                try:
                    r = http.post("/generate", json={"prompt": f"client {k} request {i}", "max_tokens": 3})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    answered.append(r.json()["response_id"])
                i += 1

    with server_process(tiny_model_path("llama"), tmp_path, log_queue=QUEUE) as (proc, url):
        threads = [threading.Thread(target=client, args=(url, k)) for k in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(answered) >= 60, 120, "60 answered requests")
        proc.send_signal(signal.SIGKILL)  # mid-run: four clients have requests in flight
        assert proc.wait(30) == -signal.SIGKILL
        stop.set()
        for t in threads:
            t.join(30)
    path = tmp_path / "state" / "responses.sqlite3"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    store = Store(database_url(None, tmp_path / "state"))  # opens (and migrates) as a restart would
    stored = {r["id"] for r in store.rows(Filters(), ["id"])}
    store.close()
    lost = set(answered) - stored
    assert len(answered) >= 60 and len(lost) <= QUEUE, (len(answered), len(lost))

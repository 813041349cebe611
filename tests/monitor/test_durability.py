"""A server killed with SIGKILL in the middle of traffic: its log (SQLite, PostgreSQL) is intact and
lost at most the entries its writer queue held (HALLUWATCH_LOG_QUEUE)."""

import pytest
from support.durability import kill_mid_run, store_check
from support.postgres import STORES, log_url

from app.monitor.store import Filters, Store, database_url

QUEUE = 8


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_kill_9_mid_run_loses_at_most_the_queue(tiny_model_path, tmp_path, kind):
    with log_url(kind) as url:
        env = {"log_queue": QUEUE} | ({"log_url": url} if url else {})
        # four clients have requests in flight when the kill comes
        answered = kill_mid_run(tiny_model_path("llama"), tmp_path, 60, clients=4, max_tokens=3, **env)
        assert store_check(url, tmp_path / "state") == "ok"
        store = Store(database_url(url, tmp_path / "state"))  # opens (and migrates) as a restart would
        stored = {r["id"] for r in store.rows(Filters(), ["id"])}
        store.close()
    lost = set(answered) - stored
    assert len(answered) >= 60 and len(lost) <= QUEUE, (len(answered), len(lost))

"""The log writer: never blocks, drops and counts beyond its bound, counts failed batches, prunes."""

import threading
import time

import pytest
from test_store import CONTEXT, rows

from app.monitor.entry import Exchange, exchange_for, load_salt
from app.monitor.store import Filters, Store, database_url
from app.monitor.writer import LogWriter


class GatedStore:
    """A store whose inserts wait for a gate (a database that is slow for a while) or fail."""

    def __init__(self, fail: bool = False):
        self.gate, self.fail, self.inserted = threading.Event(), fail, []

    def insert(self, batch):
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("database went away")
        self.inserted += batch

    def prune(self, older_than, max_rows):
        return 0

    def prune_to_size(self, max_bytes):
        return 0

    def close(self):
        pass


def test_submit_never_blocks_and_counts_what_it_drops():
    store = GatedStore()
    writer = LogWriter(store, bound=5, max_age_s=1e9, max_rows=10**6, max_bytes=2**40)
    start = time.perf_counter()
    accepted = [writer.submit({"id": str(i)}) for i in range(20)]
    assert time.perf_counter() - start < 0.5  # the store is stuck; submitting is not
    assert accepted == [True] * 5 + [False] * 15 and writer.dropped == 15 and writer.pending == 5
    store.gate.set()
    assert writer.flush(5)
    assert [r["id"] for r in store.inserted] == ["0", "1", "2", "3", "4"] and writer.written == 5
    writer.close()


def test_a_failed_batch_is_counted_as_dropped():
    store = GatedStore(fail=True)
    store.gate.set()
    writer = LogWriter(store, bound=10, max_age_s=1e9, max_rows=10**6, max_bytes=2**40)
    for i in range(3):
        writer.submit({"id": str(i)})
    assert writer.flush(5) and writer.dropped == 3 and writer.written == 0
    writer.close()


def test_close_writes_the_queue_and_the_writer_prunes(tmp_path):
    store = Store(database_url(None, tmp_path))
    store.insert(rows(4, time.time() - 90 * 86400, prefix="old"))
    writer = LogWriter(store, bound=100, max_age_s=30 * 86400, max_rows=10**6, max_bytes=2**40)
    for row in rows(50, time.time()):
        writer.submit(row)
    writer.close()
    check = Store(store.url)
    assert writer.written == 50 and writer.pruned == 4 and check.count() == 50
    assert not [r for r in check.rows(Filters(until=time.time() - 86400))]
    check.close()


def test_the_writer_prunes_by_size_and_counts_it(tmp_path):
    store = Store(database_url(None, tmp_path))
    store.insert(rows(2000, time.time() - 3600, prefix="old"))
    limit = store.size() // 2
    writer = LogWriter(store, bound=100, max_age_s=30 * 86400, max_rows=10**6, max_bytes=limit)
    writer.close()  # the thread pruned when it started
    check = Store(store.url)
    assert writer.pruned == 2000 - check.count() > 0 and check.size() <= limit
    check.close()


def test_a_closed_writer_starts_again():
    store = GatedStore()
    store.gate.set()
    writer = LogWriter(store, bound=10, max_age_s=1e9, max_rows=10**6, max_bytes=2**40)
    running = writer._thread
    writer.start()  # running: no second thread
    assert writer._thread is running and running.is_alive()
    writer.close()
    assert not writer.submit({"id": "while closed"}) and writer.dropped == 1
    writer.start()
    assert writer.submit({"id": "after"}) and writer.flush(5)
    assert [r["id"] for r in store.inserted] == ["after"] and writer.written == 1
    writer.close()


def test_text_is_kept_only_on_request_and_hashed_with_a_stable_salt(tmp_path):
    salt = load_salt(tmp_path)
    assert load_salt(tmp_path) == salt and len(salt) == 32 and load_salt(tmp_path / "other") != salt
    body = {"text": "Paris.", "usage": {"prompt_tokens": 4, "completion_tokens": 2}, "scores": {},
            "quadrant": None, "risk": {"probability": 0.7, "calibration": "c.json"}}
    hidden = CONTEXT.row(exchange_for("/generate", "capital?", None, True), body)
    kept = type(CONTEXT)(**{**CONTEXT.__dict__, "keep_text": True}).row(
        exchange_for("/v1/chat/completions", None, [{"role": "user", "content": "capital?"}]), body)
    assert hidden["prompt"] is None and hidden["response"] is None and hidden["prompt_format"] == "chat"
    assert hidden["prompt_hash"] == CONTEXT.digest("capital?") != type(CONTEXT)(
        **{**CONTEXT.__dict__, "salt": b"x" * 32}).digest("capital?")
    assert kept["prompt"] == '[{"role": "user", "content": "capital?"}]' and kept["response"] == "Paris."
    assert hidden["flagged"] is True and hidden["calibration"] == "c.json"  # app.monitor.flagging's rule
    score = Exchange("/score", "q", "raw", response="the scored text")
    assert CONTEXT.row(score, {**body, "usage": {"prompt_tokens": 1, "response_tokens": 5}})["response_tokens"] == 5
    assert CONTEXT.row(score, body)["response_hash"] == CONTEXT.digest("the scored text")


@pytest.mark.parametrize("text", ["", "5", "5x", "0m", "-1h", "1.5h", "99999999d"])
def test_bad_durations_are_refused(text):
    from app.monitor.summary import parse_duration

    with pytest.raises(ValueError):
        parse_duration(text)

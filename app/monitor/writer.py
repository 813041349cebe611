"""The log writer: a bounded queue and one thread that inserts its entries in batches and prunes.

`submit` never blocks: at most `bound` entries wait (queued, or in the batch being written), and an
entry beyond that is dropped and counted, so a crash loses at most `bound` entries. The thread
commits each batch in one transaction (a batch: what arrives within `LINGER_S` of its first entry,
at most `BATCH` or half the bound, so a busy server commits a few times a second, not once per
response) and prunes
by age, row count and size every `prune_every_s`.
A writer can be started again after `close` (an app whose lifespan runs twice).
"""

import logging
import queue
import threading
import time

log = logging.getLogger("halluwatch.monitor")

BATCH = 256
LINGER_S = 0.1  # a batch waits this long after its first entry for more


class LogWriter:
    """Writes rows to a `Store` off the request path; `written`, `dropped`, `pruned` count rows."""

    def __init__(self, store, bound: int, max_age_s: float, max_rows: int, max_bytes: int,
                 prune_every_s: float = 60.0):
        self.store, self.bound = store, bound
        self.max_age_s, self.max_rows, self.max_bytes = max_age_s, max_rows, max_bytes
        self.prune_every_s = prune_every_s
        self.written = self.dropped = self.pruned = 0
        self.pending = 0  # rows accepted but not yet committed
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._last_prune = 0.0
        self._thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        """Start the writing thread unless it runs (it prunes at once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._last_prune = 0.0
        self._thread = threading.Thread(target=self._run, name="halluwatch-log-writer", daemon=True)
        self._thread.start()

    def submit(self, row: dict) -> bool:
        """Queue `row`; False (and counted in `dropped`) when `bound` rows are already waiting."""
        with self._lock:
            if self.pending >= self.bound or self._stop.is_set():
                self.dropped += 1
                return False
            self.pending += 1
        self._queue.put(row)
        return True

    def _take(self) -> list:
        try:
            rows = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + (0 if self._stop.is_set() else LINGER_S)
        while len(rows) < min(BATCH, max(1, self.bound // 2)):  # never wait with the queue half full
            try:
                rows.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return rows

    def _write(self, rows: list) -> None:
        try:
            self.store.insert(rows)
            written, lost = len(rows), 0
        except Exception:  # the database is away or refuses: these entries are lost, and counted
            log.exception("writing %d response log entries failed; they are dropped", len(rows))
            written, lost = 0, len(rows)
        with self._lock:
            self.pending -= len(rows)
            self.written += written
            self.dropped += lost

    def prune(self) -> int:
        """Delete entries beyond the retention limits now; the number deleted (also counted)."""
        self._last_prune = time.monotonic()
        try:
            n = self.store.prune(time.time() - self.max_age_s, self.max_rows)
            n += self.store.prune_to_size(self.max_bytes)
        except Exception:
            log.exception("pruning the response log failed")
            return 0
        with self._lock:
            self.pruned += n
        return n

    def _run(self) -> None:
        while True:
            rows = self._take()
            if rows:
                self._write(rows)
            if time.monotonic() - self._last_prune >= self.prune_every_s:
                self.prune()
            if not rows and self._stop.is_set():
                return

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every accepted row is committed (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.pending

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to `timeout`), stop the thread and close the store's connections
        (`start` opens new ones)."""
        self._stop.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.store.close()

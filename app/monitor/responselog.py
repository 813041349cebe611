"""The response log of one server: its store, its writer and what every entry shares, opened from
the settings; and the Prometheus series that say how the writing goes."""

import os
import socket

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from .entry import Context, Exchange, load_salt
from .store import Store, database_url
from .writer import LogWriter

_NOTHING = {"written": 0, "dropped": 0, "pruned": 0, "queued": 0}


class LogUnavailable(RuntimeError):
    """The log's database cannot be reached or migrated."""


class ResponseLog:
    def __init__(self, store: Store, writer: LogWriter, context: Context):
        self.store, self.writer, self.context = store, writer, context

    def record(self, exchange: Exchange, body: dict) -> bool:
        """Queue the entry of a finished response (never blocks); False when it was dropped."""
        return self.writer.submit(self.context.row(exchange, body))

    def counts(self) -> dict:
        w = self.writer
        return {"written": w.written, "dropped": w.dropped, "pruned": w.pruned, "queued": w.pending}

    def start(self) -> None:
        """Write again after `close` (no-op while the writer runs)."""
        self.writer.start()

    def close(self) -> None:
        self.writer.close()


def open_store(url: str) -> Store:
    """The store at `url`, migrated; LogUnavailable (password hidden) when it cannot be opened."""
    try:
        return Store(url)
    except SQLAlchemyError as e:
        shown = make_url(url).render_as_string(hide_password=True)
        raise LogUnavailable(f"cannot open the response log at {shown}: {e.__class__.__name__}: "
                             f"{str(e).splitlines()[0]}") from e


def open_log(settings, lm) -> ResponseLog | None:
    """The log the settings ask for (None with `log` off), its schema migrated and its writer started."""
    if not settings.log:
        return None
    store = open_store(database_url(settings.log_url, settings.state_dir))
    context = Context(replica=f"{socket.gethostname()}:{os.getpid()}", model=lm.model_id,
                      model_fingerprint=lm.fingerprint.id, flag_risk=settings.flag_risk,
                      keep_text=settings.log_text, salt=load_salt(settings.state_dir))
    writer = LogWriter(store, settings.log_queue, settings.log_max_age_days * 86400, settings.log_max_rows,
                       int(settings.log_max_mb * 2**20))
    return ResponseLog(store, writer, context)


class LogCollector:
    """halluwatch_log_{written,dropped,pruned}_total and halluwatch_log_queue_size, read at scrape
    time (all 0 while the log is off, so alert rules always find them)."""

    def __init__(self, get_log):
        self.get_log = get_log

    def describe(self):
        return self._families(_NOTHING)

    def collect(self):
        log = self.get_log()
        return self._families(log.counts() if log else _NOTHING)

    @staticmethod
    def _families(c: dict) -> list:
        return [
            CounterMetricFamily("halluwatch_log_written", "Response log entries committed", value=c["written"]),
            CounterMetricFamily("halluwatch_log_dropped", "Response log entries dropped (queue full or the "
                                                          "store failed)", value=c["dropped"]),
            CounterMetricFamily("halluwatch_log_pruned", "Response log entries deleted by retention",
                                value=c["pruned"]),
            GaugeMetricFamily("halluwatch_log_queue_size", "Response log entries waiting to be written",
                              value=c["queued"]),
        ]

"""A server killed with SIGKILL in the middle of traffic, and what its response log kept: shared by
tests/monitor/test_durability.py and bench/log_durability.py."""

import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from .server_process import server_process, wait_until


def kill_mid_run(model, home: Path, answered_before_kill: int, clients: int, max_tokens: int, **env) -> list:
    """Serve `model` (HALLUWATCH_<KEY> for each of `env`), let `clients` clients send /generate requests
    until `answered_before_kill` are answered, SIGKILL the server with requests in flight; the ids
    of every answered request (a few may come after the count)."""
    answered, stop = [], threading.Event()

    def client(url: str, k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            i = 0
            while not stop.is_set():
                try:
                    r = http.post("/generate", json={"prompt": f"client {k}, request {i}", "max_tokens": max_tokens})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    answered.append(r.json()["response_id"])
                i += 1

    with server_process(model, home, **env) as (proc, url):
        threads = [threading.Thread(target=client, args=(url, k)) for k in range(clients)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(answered) >= answered_before_kill, 600, f"{answered_before_kill} answered requests")
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
        finally:
            stop.set()
            for t in threads:
                t.join(120)
    return answered


def store_check(log_url: str | None, state_dir: Path) -> str:
    """'ok' when the log of a killed server is intact, else what is wrong. SQLite: `PRAGMA
    integrity_check`. PostgreSQL (crash-safe itself; the server was only its client): within 30 s
    no session of the killed server is left on the database (none holds a transaction or a lock)."""
    if log_url is None:
        with sqlite3.connect(Path(state_dir) / "responses.sqlite3") as db:
            return "; ".join(row[0] for row in db.execute("PRAGMA integrity_check"))
    import sqlalchemy as sa

    from app.monitor.store import database_url

    engine = sa.create_engine(database_url(log_url, None))
    activity = sa.table("pg_stat_activity", sa.column("datname"), sa.column("pid"))
    query = sa.select(sa.func.count()).select_from(activity).where(
        activity.c.datname == sa.func.current_database(), activity.c.pid != sa.func.pg_backend_pid())
    try:
        deadline = time.monotonic() + 30
        while True:
            with engine.connect() as conn:
                left = conn.execute(query).scalar_one()
            if left == 0 or time.monotonic() > deadline:
                return "ok" if left == 0 else f"{left} sessions of the killed server still open"
            time.sleep(0.2)
    finally:
        engine.dispose()

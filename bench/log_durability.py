"""Durability of the response log: kill -9 of a server in the middle of traffic, then a restart.

Serves a model (default: a tiny random llama) with `halluwatch serve` in a subprocess, its log in
SQLite and, given `--postgres-url` (default $HALLUWATCH_TEST_POSTGRES_URL), once more in a fresh
database on that PostgreSQL server, with a writer queue of `--queue` entries; `--clients` clients
send /generate requests, and when `--requests` ÷ 2 are answered the server gets SIGKILL. The store
is then checked (SQLite: `PRAGMA integrity_check`; PostgreSQL: no session of the killed server is
left holding a transaction), the server restarted on the same log, and every answered response id
looked up in the log: entries lost must be at most the queue bound. Exit status 1 if a store is not
intact, more entries were lost, or a restarted server is not healthy.

    python bench/log_durability.py [--requests 200] [--clients 4] [--queue 64] [--postgres-url URL] [--json PATH]
"""

import argparse
import os
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (REPO_ROOT / "bench", REPO_ROOT, REPO_ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (first: preloads OpenBLAS before mlx)
import httpx  # noqa: E402
from benchlib import add_json_option, exit_now, write_json  # noqa: E402


def one_store(model: Path, home: Path, log_url: str | None, args) -> dict:
    """Kill a server logging to `log_url` (None: SQLite under `home`) mid-run, restart it, count."""
    from support.durability import kill_mid_run, store_check
    from support.server_process import server_process

    from app.monitor.store import Filters, Store, database_url

    env = {"log_queue": args.queue} | ({"log_url": log_url} if log_url else {})
    answered = kill_mid_run(model, home, args.requests // 2, args.clients, args.max_tokens, **env)
    integrity = store_check(log_url, home / "state")
    with server_process(model, home, **({"log_url": log_url} if log_url else {})) as (_, url):
        healthy = httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"
        listed = httpx.get(f"{url}/monitor/responses", timeout=30).status_code == 200
    store = Store(database_url(log_url, home / "state"))
    stored = {r["id"] for r in store.rows(Filters(), ["id"])}
    store.close()
    lost = len(set(answered) - stored)
    ok = integrity == "ok" and lost <= args.queue and healthy and listed
    print(f"answered before and around the kill: {len(answered)}; in the log after restart: {len(stored)}")
    print(f"entries lost: {lost} (bound: the writer queue, {args.queue}): {'PASS' if lost <= args.queue else 'FAIL'}")
    print(f"store integrity: {integrity}; restarted server healthy: {healthy}, lists the log: {listed}")
    return {"requests_answered": len(answered), "entries_stored": len(stored), "entries_lost": lost,
            "integrity": integrity, "healthy_after_restart": healthy, "listed_after_restart": listed, "ok": ok}


def main(argv=None) -> int:
    from fuzz import build_tiny_model
    from support.postgres import fresh_database

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="the kill comes when half of these are answered")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--queue", type=int, default=64, help="the server's log_queue (the bound on entries lost)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--model", type=Path, help="a model folder (default: a tiny random llama built now)")
    ap.add_argument("--postgres-url", default=os.environ.get("HALLUWATCH_TEST_POSTGRES_URL"),
                    help="a PostgreSQL server whose role may create a database (default: "
                         "$HALLUWATCH_TEST_POSTGRES_URL)")
    add_json_option(ap)
    args = ap.parse_args(argv)

    stores = {"sqlite": nullcontext(None)}
    if args.postgres_url:
        stores["postgresql"] = fresh_database(args.postgres_url)
    results = {}
    with tempfile.TemporaryDirectory(prefix="halluwatch-log-durability-") as tmp:
        model = args.model or build_tiny_model(Path(tmp) / "model")
        for name, database in stores.items():
            print(f"log in {name}:")
            with database as log_url:
                results[name] = one_store(model, Path(tmp) / name, log_url, args)
    if not args.postgres_url:
        print("PostgreSQL left out: no --postgres-url or HALLUWATCH_TEST_POSTGRES_URL")
    ok = all(r["ok"] for r in results.values())
    write_json(args.json, "log_durability", {
        "queue_bound": args.queue, "clients": args.clients, "model": str(args.model or "tiny random llama"),
        "stores": results, "ok": ok}, argv)
    return 0 if ok else 1


if __name__ == "__main__":
    exit_now(main())

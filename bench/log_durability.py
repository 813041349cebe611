"""Durability of the response log: kill -9 of a server in the middle of traffic, then a restart.

Serves a model (default: a tiny random llama) with `halluwatch serve` in a subprocess, the log in
SQLite with a writer queue of `--queue` entries; `--clients` clients send /generate requests until
`--requests` are answered, and when half of them are, the server gets SIGKILL. The store is then
checked (`PRAGMA integrity_check`), the server restarted on the same folder, and every answered
response id looked up in the log: entries lost must be at most the queue bound. Exit status 1 if
the store is not intact, more entries were lost, or the restarted server is not healthy.

    python bench/log_durability.py [--requests 200] [--clients 4] [--queue 64] [--json PATH]
"""

import argparse
import signal
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (REPO_ROOT / "bench", REPO_ROOT, REPO_ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (first: preloads OpenBLAS before mlx)
import httpx  # noqa: E402
from benchlib import add_json_option, exit_now, write_json  # noqa: E402


def main(argv=None) -> int:
    from fuzz import build_tiny_model
    from support.server_process import server_process, wait_until

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="answered requests to aim for; the kill comes at half")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--queue", type=int, default=64, help="the server's log_queue (the bound on entries lost)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--model", type=Path, help="a model folder (default: a tiny random llama built now)")
    add_json_option(ap)
    args = ap.parse_args(argv)

    answered, stop = [], threading.Event()

    def client(url: str, k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for i in range(args.requests):
                if stop.is_set():
                    return
                try:
                    r = http.post("/generate", json={"prompt": f"client {k}, request {i}",
                                                     "max_tokens": args.max_tokens})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    answered.append(r.json()["response_id"])

    with tempfile.TemporaryDirectory(prefix="halluwatch-log-durability-") as tmp:
        home = Path(tmp) / "home"
        model = args.model or build_tiny_model(Path(tmp) / "model")
        with server_process(model, home, log_queue=args.queue) as (proc, url):
            threads = [threading.Thread(target=client, args=(url, k)) for k in range(args.clients)]
            for t in threads:
                t.start()
            wait_until(lambda: len(answered) >= args.requests // 2, 600, "half of the requests answered")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            stop.set()
            for t in threads:
                t.join(120)
        with sqlite3.connect(home / "state" / "responses.sqlite3") as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        with server_process(model, home) as (_, url):
            healthy = httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"
            listed = httpx.get(f"{url}/monitor/responses", timeout=30).status_code == 200
            with sqlite3.connect(home / "state" / "responses.sqlite3") as db:
                stored = {row[0] for row in db.execute("SELECT id FROM responses")}
    lost = len(set(answered) - stored)
    ok = integrity == "ok" and lost <= args.queue and healthy and listed
    print(f"answered before and around the kill: {len(answered)}; in the log after restart: {len(stored)}")
    print(f"entries lost: {lost} (bound: the writer queue, {args.queue}): {'PASS' if lost <= args.queue else 'FAIL'}")
    print(f"store integrity: {integrity}; restarted server healthy: {healthy}, lists the log: {listed}")
    write_json(args.json, "log_durability", {
        "requests_answered": len(answered), "entries_stored": len(stored), "entries_lost": lost,
        "queue_bound": args.queue, "integrity": integrity, "healthy_after_restart": healthy,
        "listed_after_restart": listed, "clients": args.clients,
        "model": str(args.model or "tiny random llama"), "ok": ok}, argv)
    return 0 if ok else 1


if __name__ == "__main__":
    exit_now(main())

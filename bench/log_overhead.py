"""Cost of the response log under load: decode tok/s and p95 latency with the log on (SQLite;
PostgreSQL) against the log off, 8 concurrent clients.

One engine serves three apps on real uvicorn servers (127.0.0.1): log off, log in SQLite, log in
PostgreSQL (`--postgres-url`, default $HALLUWATCH_TEST_POSTGRES_URL; without one that store is
left out and the result says so). Each round runs `--clients` clients × `--requests` /generate
requests (non-streamed, `--max-tokens`) against every app in turn, the order reversed every other
round (ABBA), after one warm-up round. Per round: tok/s = completion tokens ÷ wall seconds, and
the p95 of request latency; the figures are the medians of the per-round ratios on ÷ off (tok/s:
goal ≥ 0.98; p95: goal ≤ 1.02, i.e. at most 2% slower).

    python bench/log_overhead.py [--rounds 6] [--clients 8] [--requests 6] [--max-tokens 16] [--json PATH]
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (REPO_ROOT / "bench", REPO_ROOT, REPO_ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (first: preloads OpenBLAS before mlx)
import httpx  # noqa: E402
from benchlib import add_json_option, describe, exit_now, judge, spread, write_json  # noqa: E402

PROMPTS = ("hello", "The capital of France is", "Once upon a time, there was", "1 2 3 4 5",
           "What is the meaning of life?")


async def one_round(url: str, clients: int, requests: int, max_tokens: int) -> tuple:
    """(tok/s, p95 latency s) of `clients` concurrent clients × `requests` requests each."""
    latencies, tokens = [], 0

    async def client(k: int) -> None:
        nonlocal tokens
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            for j in range(requests):
                start = time.perf_counter()
                r = await http.post("/generate", json={"prompt": PROMPTS[(k + j) % len(PROMPTS)],
                                                       "max_tokens": max_tokens})
                r.raise_for_status()
                latencies.append(time.perf_counter() - start)
                tokens += r.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - start
    return tokens / wall, statistics.quantiles(latencies, n=20, method="inclusive")[18]


def main(argv=None) -> int:
    from fuzz import build_tiny_model
    from support.live_server import live_server
    from support.params import write_params

    from app.engine import Engine
    from app.http.app import create_app
    from app.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=6, help="requests per client per round")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--model", type=Path, help="a model folder (default: a tiny random llama built now)")
    ap.add_argument("--postgres-url", default=os.environ.get("HALLUWATCH_TEST_POSTGRES_URL"),
                    help="a PostgreSQL database for the log (default: $HALLUWATCH_TEST_POSTGRES_URL)")
    add_json_option(ap)
    args = ap.parse_args(argv)

    stores = {"off": {"log": False}, "sqlite": {}}
    if args.postgres_url:
        stores["postgresql"] = {"log_url": args.postgres_url}
    with tempfile.TemporaryDirectory(prefix="halluwatch-log-overhead-") as tmp, ExitStack() as stack:
        model = args.model or build_tiny_model(Path(tmp) / "model")
        engine = Engine(str(model), precision="native", queue_depth=4 * args.clients)
        engine.start()
        stack.callback(engine.stop)
        write_params(Path(tmp) / "p.json", engine.lm)
        urls = {name: stack.enter_context(live_server(create_app(Settings(
            home=Path(tmp) / name, params=Path(tmp) / "p.json", queue_depth=4 * args.clients, **extra), engine)))
            for name, extra in stores.items()}
        names = list(stores)
        measured = {name: [] for name in names}
        for r in range(args.rounds + 1):  # round 0 warms up
            for name in names if r % 2 else names[::-1]:
                result = asyncio.run(one_round(urls[name], args.clients, args.requests, args.max_tokens))
                if r:
                    measured[name].append(result)
                    print(f"round {r} {name:>10}: {result[0]:7.1f} tok/s, p95 {result[1]:.3f} s")
    figures = {}
    for name in names[1:]:
        pairs = list(zip(measured[name], measured["off"]))
        figures[name] = {
            "tok_s": judge(spread([on[0] / off[0] for on, off in pairs], "median of per-round ratios"),
                           f"tok/s, log in {name} ÷ off", ("≥", 0.98)),
            "p95": judge(spread([on[1] / off[1] for on, off in pairs], "median of per-round ratios"),
                         f"p95 latency, log in {name} ÷ off", ("≤", 1.02)),
        }
        for figure in figures[name].values():
            print(describe(figure))
    if not args.postgres_url:
        print("PostgreSQL left out: no --postgres-url or HALLUWATCH_TEST_POSTGRES_URL")
    write_json(args.json, "log_overhead", {
        "clients": args.clients, "requests_per_client": args.requests, "max_tokens": args.max_tokens,
        "rounds": args.rounds, "model": str(args.model or "tiny random llama"),
        "tok_s": {name: statistics.median(x[0] for x in rows) for name, rows in measured.items()},
        "p95_s": {name: statistics.median(x[1] for x in rows) for name, rows in measured.items()},
        "ratios": figures}, argv)
    return 0


if __name__ == "__main__":
    exit_now(main())

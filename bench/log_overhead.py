"""Cost of the response log under load: decode tok/s and p95 latency with the log on (SQLite;
PostgreSQL) against the log off, 8 concurrent clients.

One engine serves three apps on real uvicorn servers (127.0.0.1): log off, log in SQLite, log in
PostgreSQL (`--postgres-url`, default $HALLUWATCH_TEST_POSTGRES_URL; without one that store is
left out and the result says so). A block is `--clients` clients × `--requests` /generate requests
(non-streamed, `--max-tokens`) against one app. A round runs the blocks in a mirrored order, off
on-SQLite on-PostgreSQL on-PostgreSQL on-SQLite off (the next round: the "on" blocks at the ends,
the "off" ones in the middle), so a load that drifts linearly during a round weighs on every
condition alike; after a "log on" block the bench waits (untimed) for its writer to commit, so the
log's work does not spill into the next block. Round 0 warms up. Per round and store, from its two
blocks against the round's two "off" blocks: tok/s = completion tokens ÷ wall seconds, the p95 of
request latency, and the process CPU seconds per completion token (server, engine, writer and
clients share this process; PostgreSQL's own processes are not counted). The figures are the
medians of the per-round ratios on ÷ off with their spread (tok/s: goal ≥ 0.98; p95: goal ≤ 1.02,
i.e. at most 2% slower; CPU per token: no goal, it shows the log's work with less of the noise
that other processes on the machine add to wall-clock figures).

    python bench/log_overhead.py [--rounds 20] [--clients 8] [--requests 2] [--max-tokens 16] [--json PATH]
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (REPO_ROOT / "bench", REPO_ROOT, REPO_ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (first: preloads OpenBLAS before mlx)
import httpx  # noqa: E402
from benchlib import add_json_option, describe, exit_now, judge, spread, write_json  # noqa: E402
from load import PROMPTS  # noqa: E402  (the load bench's prompts)


@dataclass
class Block:
    """What one block of requests took: completion tokens, wall and process CPU seconds, latencies."""

    tokens: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    latencies: list = field(default_factory=list)

    def add(self, other: "Block") -> None:
        self.tokens += other.tokens
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s
        self.latencies += other.latencies

    def figures(self) -> tuple:
        """(tok/s, p95 latency s, CPU s per token)."""
        p95 = statistics.quantiles(self.latencies, n=20, method="inclusive")[18]
        return self.tokens / self.wall_s, p95, self.cpu_s / self.tokens


async def requests_block(url: str, clients: int, requests: int, max_tokens: int) -> Block:
    """`clients` concurrent clients × `requests` requests each (CPU time is added by the caller)."""
    block = Block()

    async def client(k: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            for j in range(requests):
                start = time.perf_counter()
                r = await http.post("/generate", json={"prompt": PROMPTS[(k + j) % len(PROMPTS)],
                                                       "max_tokens": max_tokens})
                r.raise_for_status()
                block.latencies.append(time.perf_counter() - start)
                block.tokens += r.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    block.wall_s = time.perf_counter() - start
    return block


def mirrored(names: list, r: int) -> list:
    """The blocks of round `r`: "off" at both ends of even rounds, in the middle of odd ones."""
    on = names[1:]
    half = [names[0], *on] if r % 2 == 0 else [*on, names[0]]
    return half + half[::-1]


def run_round(apps: dict, urls: dict, r: int, args) -> dict:
    """One round: {name: Block summed over its two blocks}."""
    took = {name: Block() for name in urls}
    for name in mirrored(list(urls), r):
        cpu = time.process_time()
        block = asyncio.run(requests_block(urls[name], args.clients, args.requests, args.max_tokens))
        log = apps[name].state.response_log
        if log is not None:
            assert log.writer.flush(60), "the log writer did not catch up"
        block.cpu_s = time.process_time() - cpu  # the writer's work (till committed) included
        took[name].add(block)
    return took


def ratio_figures(rounds: list, name: str) -> dict:
    """Medians and spread of the per-round ratios of `name` on ÷ off."""
    per_round = [(on.figures(), off.figures()) for on, off in ((t[name], t["off"]) for t in rounds)]

    def ratios(i: int) -> dict:
        return spread([on[i] / off[i] for on, off in per_round], "median of per-round ratios")

    return {"tok_s": judge(ratios(0), f"tok/s, log in {name} ÷ off", ("≥", 0.98)),
            "p95": judge(ratios(1), f"p95 latency, log in {name} ÷ off", ("≤", 1.02)),
            "cpu_per_token": judge(ratios(2), f"process CPU s per token, log in {name} ÷ off")}


def main(argv=None) -> int:
    from fuzz import build_tiny_model
    from support.live_server import live_server
    from support.params import write_params

    from app.engine import Engine
    from app.http.app import create_app
    from app.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2, help="requests per client per block")
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
        apps = {name: create_app(Settings(home=Path(tmp) / name, params=Path(tmp) / "p.json",
                                          queue_depth=4 * args.clients, **extra), engine)
                for name, extra in stores.items()}
        urls = {name: stack.enter_context(live_server(app)) for name, app in apps.items()}
        rounds = []
        for r in range(args.rounds + 1):  # round 0 warms up
            took = run_round(apps, urls, r, args)
            if r:
                rounds.append(took)
                print(f"round {r}: " + "; ".join(
                    f"{name} {b.figures()[0]:.1f} tok/s, p95 {b.figures()[1]:.3f} s" for name, b in took.items()))
    figures = {name: ratio_figures(rounds, name) for name in list(stores)[1:]}
    for store in figures.values():
        for figure in store.values():
            print(describe(figure))
    if not args.postgres_url:
        print("PostgreSQL left out: no --postgres-url or HALLUWATCH_TEST_POSTGRES_URL")
    medians = [{name: statistics.median(t[name].figures()[i] for t in rounds) for name in stores} for i in range(3)]
    write_json(args.json, "log_overhead", {
        "clients": args.clients, "requests_per_client": args.requests, "max_tokens": args.max_tokens,
        "rounds": args.rounds, "blocks_per_round": len(mirrored(list(stores), 0)),
        "model": str(args.model or "tiny random llama"),
        "tok_s": medians[0], "p95_s": medians[1], "cpu_s_per_token": medians[2], "ratios": figures}, argv)
    return 0


if __name__ == "__main__":
    exit_now(main())

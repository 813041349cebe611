"""Many chat clients at once: halluwatch (continuous batching, all signals) against `mlx_lm.server`.

Both servers run as subprocesses on free loopback ports, with the same BLAS (mlx_lm.server gets
halluwatch's OpenBLAS preload on Linux), on the same weights: the bench models,
built once under $HALLUWATCH_HOME/bench-models/ (never in the code tree):
- `embedded`: the embedded SmolLM2-135M-Instruct GGUF, dequantized to float32 and saved as an
  mlx-lm folder with mlx-lm's own save utilities (`save_model`, `save_config`, the tokenizer's
  `save_pretrained`);
- `bench8`: the 8-layer float32 bench model, a random-weight llama (hidden 512, the tiny test
  tokenizer) sized to decode ~50 tok/s on a 2-core machine.

For each model: first every prompt once, alone (the sequential run, also the warm-up); then for
each `--clients` count (default 1, 8, 32) that many concurrent clients, each sending `--requests`
non-streamed greedy POST /v1/chat/completions one after the other (client i, request j asks
prompt (i + j) mod the number of prompts), in `--rounds` rounds whose order alternates
(halluwatch then mlx_lm.server, then the other way round, …), so that a drift of the machine's
speed favours neither. Each round gives a ratio halluwatch ÷ mlx_lm.server of the aggregate
completion tok/s (completion tokens of the 200 answers ÷ the wall time of the round) and one of the
p95 latencies; a count is judged by the median of its rounds' ratios. Printed side by side per
count: each server's tok/s over all its rounds, p50/p95 latency of its 200s, the answers by
status, and the answers equal to the server's sequential run of their prompt; then the rounds'
ratios and PASS/FAIL per goal (at 8 clients and more: median tok/s ratio ≥ `--goal`, median p95
ratio ≤ 1, no answer but 200, 429 or 503, every 200 equal to the sequential run) and each server's
peak RSS during the last count (the highest of its rounds; and its RSS before the first) next to
the weights plus the KV caches of a full batch. The exit status is 0 unless `--strict` (then 1 on
any FAIL). The machine may be shared: the numbers are what this run saw.

    python bench/concurrency.py [--models embedded,bench8] [--clients 1,8,32] [--requests 2] [--rounds 3]
                                [--max-tokens 32] [--max-batch-size 32] [--json PATH]
"""

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO / "bench", REPO, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (first: preloads OpenBLAS before mlx)
import httpx  # noqa: E402
from benchlib import add_json_option, exit_now, write_json  # noqa: E402
from tables import memory_line  # noqa: E402

PROMPTS = ("Write a long story about a dragon who learns to cook.",
           "Explain in detail how a steam engine works.",
           "List as many fruits as you can, with a sentence about each.",
           "Describe a walk through Paris in spring, street by street.",
           "Tell me everything you know about the history of the bicycle.",
           "Write a poem about the sea, at least ten lines long.",
           "Give step by step instructions for baking bread at home.",
           "What happens inside a star during its life? Explain at length.")
BENCH8 = {"hidden_size": 512, "intermediate_size": 1536, "num_attention_heads": 8, "num_key_value_heads": 4,
          "head_dim": 64, "num_hidden_layers": 8}
SERVERS = ("halluwatch", "mlx_lm.server")
WATCH_S = 0.5  # how often halluwatch's /metrics is read during a round, for its KV caches' bytes
GAUGES = {"halluwatch_kv_cache_bytes": "kv_peak_mb", "halluwatch_prompt_cache_bytes": "prompt_cache_peak_mb"}
MLX_LM_SERVER = "import adapters, runpy; runpy.run_module('mlx_lm.server', run_name='__main__')"


# ---------------------------------------------------------------------------------------------
# the bench models


def _save_embedded(out: Path) -> None:
    from mlx_lm.utils import save_config, save_model

    from adapters.gguf import embedded_model_path, load_gguf

    model, tokenizer, config = load_gguf(embedded_model_path(), dequantize=True)
    save_model(out, model)
    save_config({**config, "torch_dtype": "float32"}, config_path=out / "config.json")
    tokenizer.save_pretrained(str(out))


def _save_bench8(out: Path) -> None:
    from support.tiny_models import make_tiny_model

    make_tiny_model("llama", out, seed=0, sizes=BENCH8)


BUILDERS = {"embedded": _save_embedded, "bench8": _save_bench8}


def bench_model(name: str, home: Path) -> Path:
    """The model folder, built on first use into a temporary folder renamed into place."""
    out = home / "bench-models" / name
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
        BUILDERS[name](tmp)
        tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------------
# the servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server: str, model: Path, work: Path, args) -> tuple:
    """(process, base URL) of `server` serving `model`, once it answers (its log and data in `work`)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HALLUWATCH_HOME": str(work / "halluwatch-home"),
           "HALLUWATCH_MAX_BATCH_SIZE": str(args.max_batch_size), "HALLUWATCH_QUEUE_DEPTH": str(args.queue_depth),
           "HALLUWATCH_MAX_STREAMS": str(max(args.clients)),
           "HALLUWATCH_REQUEST_TIMEOUT_S": "3600"}  # mlx_lm.server has no time limit
    if server == "halluwatch":
        cmd = [sys.executable, "-m", "app.cli", "serve", "--model", str(model), "--port", str(port)]
    else:  # with the OpenBLAS preload halluwatch has (`import adapters`): the same matmuls
        cmd = [sys.executable, "-c", MLX_LM_SERVER, "--model", str(model), "--port", str(port),
               "--host", "127.0.0.1", "--decode-concurrency", str(args.max_batch_size)]
    with open(work / f"{server}.log", "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{server} did not start (see {work / (server + '.log')})")


def rss_mb(pid, field: str = "VmHWM") -> float | None:
    """The peak (VmHWM) or current (VmRSS) resident set of process `pid` ("self": this one), MB (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss(proc) -> None:
    """Start the process's VmHWM again from its current resident set (Linux; root or its owner)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")


# ---------------------------------------------------------------------------------------------
# the clients


@dataclass
class Answer:
    prompt: int
    status: int | None  # None: no answer (timeout, connection error)
    seconds: float
    tokens: int = 0
    prompt_tokens: int = 0
    text: str | None = None


async def ask(client: httpx.AsyncClient, model_id: str, prompt: int, max_tokens: int) -> Answer:
    t0 = time.perf_counter()
    body = {"model": model_id, "messages": [{"role": "user", "content": PROMPTS[prompt]}],
            "max_tokens": max_tokens, "temperature": 0}
    try:
        r = await client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return Answer(prompt, None, time.perf_counter() - t0)
    answer = Answer(prompt, r.status_code, time.perf_counter() - t0)
    if r.status_code == 200:
        data = r.json()
        answer.tokens, answer.prompt_tokens = data["usage"]["completion_tokens"], data["usage"]["prompt_tokens"]
        answer.text = data["choices"][0]["message"]["content"]
    return answer


async def run_clients(url: str, model_id: str, clients: int, requests: int, max_tokens: int,
                      watch: dict | None = None) -> tuple:
    """(answers, wall seconds) of `clients` concurrent clients; with `watch` (halluwatch), the highest
    value each of its gauges reached meanwhile (`watch_gauges`)."""
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        async def one(i: int) -> list:
            return [await ask(client, model_id, (i + j) % len(PROMPTS), max_tokens) for j in range(requests)]

        t0 = time.perf_counter()
        watcher = asyncio.create_task(watch_gauges(client, watch)) if watch is not None else None
        per_client = await asyncio.gather(*(one(i) for i in range(clients)))
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        return [a for answers in per_client for a in answers], time.perf_counter() - t0


async def watch_gauges(client: httpx.AsyncClient, peaks: dict) -> None:
    """Scrape /metrics every WATCH_S seconds until cancelled, keeping in `peaks` the highest value
    of each gauge named in it."""
    while True:
        text = (await client.get("/metrics")).text
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in peaks:
                peaks[name] = max(peaks[name], float(value))
        await asyncio.sleep(WATCH_S)


def percentile(values: list, q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def summary(answers: list, seconds: float, sequential: dict) -> dict:
    oks = [a for a in answers if a.status == 200]
    latencies = [a.seconds for a in oks]
    return {"answers": len(answers), "seconds": seconds, "tokens": sum(a.tokens for a in oks),
            "tok_s": sum(a.tokens for a in oks) / seconds,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
            "by_status": dict(sorted(collections.Counter(str(a.status) for a in answers).items())),
            "equal_to_sequential": sum(1 for a in oks if a.text == sequential[a.prompt]), "ok_answers": len(oks)}


# ---------------------------------------------------------------------------------------------
# one model


def kv_cache_mb(model: Path, batch: int, tokens: int) -> float:
    """KV caches (float32) of `batch` sequences of `tokens` tokens."""
    c = json.loads((model / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * kv_heads * head_dim * 4 * tokens * batch / 2**20


def bench(name: str, home: Path, work: Path, args) -> dict:
    model = bench_model(name, home)
    weights_mb = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 2**20
    procs, urls = {}, {}
    try:
        for server in SERVERS:
            procs[server], urls[server] = start(server, model, work, args)
        ids = {"halluwatch": httpx.get(f"{urls['halluwatch']}/v1/models").json()["data"][0]["id"],
               "mlx_lm.server": "default_model"}  # its name for the model it was started with
        sequential = {}
        for s in SERVERS:
            answers = []
            for p in range(len(PROMPTS)):
                answers += asyncio.run(run_clients_one(urls[s], ids[s], p, args.max_tokens))
            if any(a.status != 200 for a in answers):
                raise RuntimeError(f"{s}: the sequential run failed: {[a.status for a in answers]}")
            sequential[s] = {a.prompt: a.text for a in answers}
            prompt_tokens = max(a.prompt_tokens for a in answers)
        same_text = sum(sequential[SERVERS[0]][p] == sequential[SERVERS[1]][p] for p in range(len(PROMPTS)))
        print(f"\n== {name}: {model} ({weights_mb:.0f} MB of weights); sequential outputs equal across the two "
              f"servers for {same_text}/{len(PROMPTS)} prompts")
        levels = []
        for clients in args.clients:
            levels.append(judge_level(run_level(procs, urls, ids, sequential, clients, args), args))
            print_level(levels[-1])
        kv = kv_cache_mb(model, args.max_batch_size, prompt_tokens + args.max_tokens)
        top = levels[-1]
        rss = {s: top[s]["rss_peak_mb"] for s in SERVERS}
        memory = {"model": name, "weights_mb": weights_mb, "kv_batch_mb": kv, "peak_rss_mb": rss,
                  "rss_before_mb": {s: top[s]["rss_before_mb"] for s in SERVERS}, "peak_rss_clients": top["clients"],
                  "kv_peak_mb": top["halluwatch"]["kv_peak_mb"],
                  "prompt_cache_peak_mb": top["halluwatch"]["prompt_cache_peak_mb"], "watch_s": WATCH_S}
        print(memory_line(memory))
        return memory | {"sequential_equal_across_servers": same_text, "prompts": len(PROMPTS), "levels": levels}
    finally:
        for proc in procs.values():
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_level(procs: dict, urls: dict, ids: dict, sequential: dict, clients: int, args) -> dict:
    """`args.rounds` rounds of `clients` clients against each server, the order alternating: each
    server's summary over all its rounds (peak RSS: the highest of a round), and each round's."""
    runs = {s: [] for s in SERVERS}
    rounds = []
    for k in range(args.rounds):
        order = SERVERS if k % 2 == 0 else SERVERS[::-1]
        for s in order:
            reset_peak_rss(procs[s])
            before = rss_mb(procs[s].pid, "VmRSS")
            watch = dict.fromkeys(GAUGES, 0.0) if s == "halluwatch" else None
            answers, seconds = asyncio.run(run_clients(urls[s], ids[s], clients, args.requests, args.max_tokens,
                                                       watch))
            runs[s].append((answers, seconds, before, rss_mb(procs[s].pid), watch))
        rounds.append({"first": order[0], **{s: summary(*runs[s][-1][:2], sequential[s]) for s in SERVERS}})
    row = {"clients": clients, "rounds": rounds}
    for s, done in runs.items():
        row[s] = summary([a for answers, *_ in done for a in answers], sum(r[1] for r in done), sequential[s]) | {
            "rss_before_mb": done[0][2], "rss_peak_mb": max((r[3] for r in done if r[3] is not None), default=None)}
    row["halluwatch"] |= {key: max(r[4][gauge] for r in runs["halluwatch"]) / 2**20 for gauge, key in GAUGES.items()}
    return row


async def run_clients_one(url: str, model_id: str, prompt: int, max_tokens: int) -> list:
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        return [await ask(client, model_id, prompt, max_tokens)]


def ratios(one: dict) -> tuple:
    """(tok/s ratio, p95 ratio) halluwatch ÷ mlx_lm.server of one round; None where undefined."""
    hw, ml = one["halluwatch"], one["mlx_lm.server"]
    return (hw["tok_s"] / ml["tok_s"] if ml["tok_s"] else None,
            hw["p95_s"] / ml["p95_s"] if hw["p95_s"] and ml["p95_s"] else None)


def median_or_none(values: list) -> float | None:
    return None if None in values else statistics.median(values)


def judge_level(row: dict, args) -> dict:
    hw = row["halluwatch"]
    for one in row["rounds"]:
        one["tok_s_ratio"], one["p95_ratio"] = ratios(one)
    row["tok_s_ratio"] = median_or_none([one["tok_s_ratio"] for one in row["rounds"]])
    row["p95_ratio"] = median_or_none([one["p95_ratio"] for one in row["rounds"]])
    clean = set(hw["by_status"]) <= {"200", "429", "503"}
    exact = hw["equal_to_sequential"] == hw["ok_answers"]
    if row["clients"] >= 8:
        row["goals"] = {f"median tok/s ratio ≥ {args.goal}": (row["tok_s_ratio"] or 0) >= args.goal,
                        "median p95 ratio ≤ 1": (row["p95_ratio"] or math.inf) <= 1.0,
                        "only 200/429/503": clean, "200s equal the sequential run": exact}
    else:
        row["goals"] = {"only 200/429/503": clean, "200s equal the sequential run": exact}
    return row


def print_level(row: dict) -> None:
    print(f"-- {row['clients']} client(s)")
    print(f"   {'server':<15} {'tok/s':>8} {'p50 s':>7} {'p95 s':>7}  {'status counts':<22} equal to sequential")
    for s in SERVERS:
        r = row[s]
        p50 = "-" if r["p50_s"] is None else f"{r['p50_s']:.2f}"
        p95 = "-" if r["p95_s"] is None else f"{r['p95_s']:.2f}"
        print(f"   {s:<15} {r['tok_s']:8.1f} {p50:>7} {p95:>7}  {json.dumps(r['by_status']):<22} "
              f"{r['equal_to_sequential']}/{r['ok_answers']}")
    def each(key: str) -> str:
        values = [one[key] for one in row["rounds"]]
        median = "-" if row[key] is None else f"{row[key]:.2f}"
        return f"{median} (rounds: {', '.join('-' if v is None else f'{v:.2f}' for v in values)})"

    print(f"   halluwatch ÷ mlx_lm.server, median of the rounds: tok/s {each('tok_s_ratio')}, p95 {each('p95_ratio')}; "
          + "; ".join(f"{g}: {'PASS' if ok else 'FAIL'}" for g, ok in row["goals"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="embedded,bench8", help="comma-separated: embedded, bench8")
    ap.add_argument("--clients", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after the other")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per client count, the servers' order alternating")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=32, help="of both servers")
    ap.add_argument("--queue-depth", type=int, default=32, help="halluwatch's wait queue")
    ap.add_argument("--goal", type=float, default=1.0, help="aggregate tok/s ratio halluwatch ÷ mlx_lm.server")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal fails")
    add_json_option(ap)
    args = ap.parse_args()
    from app.settings import Settings

    home = Settings().home  # the bench models are kept in $HALLUWATCH_HOME/bench-models
    with tempfile.TemporaryDirectory(prefix="halluwatch-concurrency-") as work:
        results = [bench(name, home, Path(work), args) for name in args.models.split(",")]
    ok = all(all(level["goals"].values()) for r in results for level in r["levels"])
    print(f"\nall goals: {'PASS' if ok else 'FAIL'}")
    write_json(args.json, "concurrency", {"results": results, "ok": ok, "max_batch_size": args.max_batch_size,
                                          "requests_per_client": args.requests, "rounds": args.rounds,
                                          "max_tokens": args.max_tokens})
    exit_now(1 if args.strict and not ok else 0)


if __name__ == "__main__":
    main()

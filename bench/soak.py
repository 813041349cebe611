"""Soak: many sequential requests against a live server, watching the process's resident memory.

Builds a tiny llama (tests/tiny_models.py), serves it on a real uvicorn on 127.0.0.1 in this
process, and sends `--n` requests one after the other, cycling through JSON /generate (with trace),
streaming /generate and /score over a few prompts. Every `--every` requests it samples the RSS of
this process (the server runs in it) from /proc/self/status (VmRSS), and MLX's active and cached
memory (allocator counters, for attribution).

The memory criterion is the growth per request: the least-squares slope of RSS (KiB) over the
request index, fitted to the samples taken after the first `--warmup` requests, must not exceed
`--max-slope` KiB/request (default 1: a million requests would add at most about 1 GiB). A slope,
unlike the difference between two samples, is not decided by one allocator step at either end. The
warm-up is half the run by default: bounded caches fill over the first couple of thousand requests
(lazy imports, allocator pools, MLX buffers, and the response log's SQLite page cache, up to
2 MiB per connection), and a leak, unlike them, grows as fast in the second half as in the first.

For scale it prints the KV cache of the longest request, 2 x layers x kv_heads x head_dim x tokens
x bytes per element (tokens = prompt + generated, or prompt + response for /score): a request
leaving that behind would show as a slope of that size. Every request has a client timeout; any
non-200 answer is counted and fails the run.

    python bench/soak.py [--n 4000] [--every 100] [--warmup 2000] [--max-slope 1.0] [--max-tokens 32]
                         [--model REF] [--json PATH]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (REPO_ROOT / "bench", REPO_ROOT, REPO_ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (first: preloads OpenBLAS before mlx)
import httpx  # noqa: E402
from benchlib import add_json_option, exit_now, write_json  # noqa: E402

PROMPTS = ("hello", "The capital of France is", "Once upon a time, there was a little robot who",
           "1 2 3 4 5 6 7 8 9", "Write a short poem about the sea and the wind and the rain.")
KINDS = ("generate", "stream", "score")
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def rss_bytes() -> int:
    """Resident set size of this process (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def mlx_memory() -> tuple[int, int]:
    """MLX's allocator counters: (active bytes, cached bytes). Read-only; the engine thread stays the
    only one that computes with MLX."""
    import mlx.core as mx

    return mx.get_active_memory(), mx.get_cache_memory()


def kv_bytes_per_token(config: dict, dtype: str) -> int:
    """2 (K and V) x layers x kv_heads x head_dim x bytes per element."""
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * BYTES.get(dtype, 4)


def one_request(client: httpx.Client, i: int, max_tokens: int) -> tuple[str, int, int]:
    """Request number `i`: (kind, status, tokens in its KV cache)."""
    kind, prompt = KINDS[i % len(KINDS)], PROMPTS[i % len(PROMPTS)]
    if kind == "score":
        r = client.post("/score", json={"prompt": prompt, "response": PROMPTS[(i + 1) % len(PROMPTS)]})
        if r.status_code != 200:
            return kind, r.status_code, 0
        usage = r.json()["usage"]
        return kind, 200, usage["prompt_tokens"] + usage["response_tokens"]
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": kind == "stream", "include_trace": True,
            "top_logprobs": 3}
    if kind == "generate":
        r = client.post("/generate", json=body)
        if r.status_code != 200:
            return kind, r.status_code, 0
        usage = r.json()["usage"]
    else:
        usage = None
        with client.stream("POST", "/generate", json=body) as r:
            if r.status_code != 200:
                return kind, r.status_code, 0
            event = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "done":
                    usage = json.loads(line[5:])["usage"]
        if usage is None:
            return kind, -1, 0  # a stream without a done event
    return kind, 200, usage["prompt_tokens"] + usage["completion_tokens"]


def slope_kib_per_request(samples: list, warmup: int) -> tuple[float | None, int]:
    """Least-squares slope of RSS (KiB) over the request index, fitted to the samples taken after
    the first `warmup` requests; (slope, samples fitted), slope None with fewer than two samples."""
    fit = [(i, rss / 1024) for i, rss in samples if i >= warmup]
    if len(fit) < 2:
        return None, len(fit)
    return statistics.linear_regression(*zip(*fit)).slope, len(fit)


def soak(url: str, config: dict, dtype: str, n: int = 1000, every: int = 50, max_tokens: int = 32,
         timeout_s: float = 60.0, deadline_s: float = 1800.0, warmup: int = 50, max_slope: float = 1.0,
         out=print) -> dict:
    """Send `n` sequential requests; sample RSS every `every`; return and print the figures."""
    samples, mlx_samples, failures, longest, sent = [], [], {}, 0, 0
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for i in range(n):
            if time.monotonic() - start > deadline_s:
                failures["deadline"] = n - i
                break
            sent += 1
            try:
                kind, status, tokens = one_request(client, i, max_tokens)
            except httpx.HTTPError as e:
                kind, status, tokens = "?", type(e).__name__, 0
            if status != 200:
                failures[f"{kind} {status}"] = failures.get(f"{kind} {status}", 0) + 1
            longest = max(longest, tokens)
            if (i + 1) % every == 0:
                samples.append((i + 1, rss_bytes()))
                mlx_samples.append(mlx_memory())
                out(f"  after {i + 1:5d} requests: RSS {samples[-1][1] / 2**20:8.2f} MiB; MLX active "
                    f"{mlx_samples[-1][0] / 2**10:8.1f} KiB, cache {mlx_samples[-1][1] / 2**10:8.1f} KiB "
                    f"({time.monotonic() - start:.0f} s)")
        health = client.get("/health").status_code
    slope, fitted = slope_kib_per_request(samples, warmup)
    kv_longest = kv_bytes_per_token(config, dtype) * longest
    result = {"requests": sent, "max_tokens": max_tokens, "failures": failures,
              "health_after": health, "seconds": time.monotonic() - start, "warmup": warmup, "every": every,
              "rss_first_mib": samples[0][1] / 2**20 if samples else None,
              "rss_last_mib": samples[-1][1] / 2**20 if samples else None,
              "slope_kib_per_request": slope, "samples_fitted": fitted, "max_slope_kib_per_request": max_slope,
              "slope_pass": slope is not None and slope <= max_slope, "kv_longest_kib": kv_longest / 1024,
              "longest_tokens": longest, "samples": samples}
    out(f"requests: {sent} in {result['seconds']:.0f} s; failures: {failures or 0}; GET /health after: {health}")
    if samples:
        out(f"RSS after the first {samples[0][0]} requests: {result['rss_first_mib']:.2f} MiB; after the last: "
            f"{result['rss_last_mib']:.2f} MiB")
    if slope is None:
        out(f"RSS slope: too few samples after the first {warmup} requests ({fitted}; need 2): FAIL")
    else:
        out(f"RSS slope after the first {warmup} requests (least squares over {fitted} samples): "
            f"{slope:+.3f} KiB/request; bound {max_slope} KiB/request: {'PASS' if result['slope_pass'] else 'FAIL'}")
    out(f"for scale: a request that left its KV cache behind would leave up to {kv_longest / 1024:.1f} KiB "
        f"(the longest request, {longest} tokens: 2 x {config['num_hidden_layers']} layers x "
        f"{config.get('num_key_value_heads') or config['num_attention_heads']} kv_heads x "
        f"{config.get('head_dim') or config['hidden_size'] // config['num_attention_heads']} head_dim x "
        f"{BYTES.get(dtype, 4)} bytes ({dtype}))")
    if mlx_samples:
        result["mlx_active_growth_kib"] = (mlx_samples[-1][0] - mlx_samples[0][0]) / 1024
        out(f"MLX active memory growth over the same requests: {result['mlx_active_growth_kib']:+.1f} KiB; "
            f"MLX cache at the end: {mlx_samples[-1][1] / 1024:.1f} KiB")
    return result


def main(argv=None) -> int:
    from fuzz import build_tiny_model, serve

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="requests, one after the other")
    ap.add_argument("--every", type=int, default=100, help="sample RSS every this many requests")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=60.0, help="client time limit per request (s)")
    ap.add_argument("--deadline", type=float, default=1800.0, help="time limit of the whole soak (s)")
    ap.add_argument("--warmup", type=int, help="requests before the RSS slope is fitted (default: half of --n; "
                    "caches fill meanwhile: allocator pools, MLX buffers, the log's SQLite page cache)")
    ap.add_argument("--max-slope", type=float, default=1.0, help="bound of the RSS slope (KiB/request)")
    ap.add_argument("--model", help="a model reference, e.g. default (default: a tiny random llama built now)")
    add_json_option(ap)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="halluwatch-soak-") as tmp:
        model = args.model or build_tiny_model(Path(tmp) / "model")
        with serve(model, Path(tmp) / "server", precision="auto" if args.model else "native",
                   max_tokens_limit=args.max_tokens) as (url, _app, engine):
            config = engine.lm.config
            name = f"{engine.lm.model_id if args.model else 'tiny random llama'} ({engine.lm.dtype})"
            print(f"{args.n} sequential requests ({', '.join(KINDS)} in turn), max_tokens {args.max_tokens}, "
                  f"model {name}, RSS every {args.every}")
            warmup = args.n // 2 if args.warmup is None else args.warmup
            result = soak(url, config, engine.lm.dtype, args.n, args.every, args.max_tokens, args.timeout,
                          args.deadline, warmup, args.max_slope)
    ok = not result["failures"] and result["health_after"] == 200 and result["slope_pass"]
    print("RESULT: " + ("OK" if ok else "FAIL"))
    write_json(args.json, "soak", {"model": name, **result, "ok": ok}, argv)
    return 0 if ok else 1


if __name__ == "__main__":
    exit_now(main())

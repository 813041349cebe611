"""Soak: many sequential requests against a live server, watching the process's resident memory.

Builds a tiny llama (tests/tiny_models.py), serves it on a real uvicorn on 127.0.0.1 in this
process, and sends `--n` requests one after the other, cycling through JSON /generate (with trace),
streaming /generate and /score over a few prompts. Every `--every` requests it samples the RSS of
this process (the server runs in it) from /proc/self/status (VmRSS), and MLX's active and cached
memory (allocator counters, for attribution). Growth is measured from the
sample after the first `--every` requests (warm-up: lazy imports, allocator pools, MLX buffers)
to the last sample, and compared with the size of the KV cache of the longest request,
2 x layers x kv_heads x head_dim x tokens x bytes per element, from the model's config (tokens =
prompt + generated, or prompt + response for /score). Growth below that bound means no request
leaves anything near its KV cache behind. Every request has a client timeout; any non-200 answer is
counted and fails the run.

    python bench/soak.py [--n 1000] [--every 50] [--max-tokens 32] [--model DIR]
"""

import argparse
import json
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


def soak(url: str, config: dict, dtype: str, n: int = 1000, every: int = 50, max_tokens: int = 32,
         timeout_s: float = 60.0, deadline_s: float = 1800.0, out=print) -> dict:
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
    per_token = kv_bytes_per_token(config, dtype)
    bound = per_token * longest
    base = samples[0][1] if samples else 0
    growth = samples[-1][1] - base if samples else 0
    peak = max(s for _, s in samples) - base if samples else 0
    result = {"requests": sent, "failures": failures,
              "health_after": health, "seconds": time.monotonic() - start, "rss_first": base,
              "rss_last": samples[-1][1] if samples else 0, "growth": growth, "peak_growth": peak,
              "longest_tokens": longest, "kv_bytes_per_token": per_token, "kv_bound": bound,
              "growth_below_bound": bool(samples) and growth < bound, "samples": samples}
    out(f"requests: {result['requests']} in {result['seconds']:.0f} s; failures: {failures or 0}; "
        f"GET /health after: {health}")
    out(f"RSS after the first {every} requests: {base / 2**20:.2f} MiB; after the last: "
        f"{result['rss_last'] / 2**20:.2f} MiB")
    out(f"growth beyond the first {every} requests: {growth / 1024:+.1f} KiB (peak {peak / 1024:+.1f} KiB)")
    out(f"KV cache of the longest request: 2 x {config['num_hidden_layers']} layers x "
        f"{config.get('num_key_value_heads') or config['num_attention_heads']} kv_heads x "
        f"{config.get('head_dim') or config['hidden_size'] // config['num_attention_heads']} head_dim x "
        f"{longest} tokens x {BYTES.get(dtype, 4)} bytes ({dtype}) = {bound / 1024:.1f} KiB")
    out(f"growth < KV bound: {result['growth_below_bound']} ({growth / 1024:+.1f} KiB vs {bound / 1024:.1f} KiB); "
        f"peak growth < KV bound: {peak < bound}")
    if mlx_samples:
        mlx_growth = mlx_samples[-1][0] - mlx_samples[0][0]
        result["mlx_active_growth"] = mlx_growth
        out(f"MLX active memory growth over the same requests: {mlx_growth / 1024:+.1f} KiB "
            f"(< KV bound: {mlx_growth < bound}); MLX cache at the end: {mlx_samples[-1][1] / 1024:.1f} KiB")
    return result


def main(argv=None) -> int:
    from fuzz import build_tiny_model, serve

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="requests, one after the other")
    ap.add_argument("--every", type=int, default=50, help="sample RSS every this many requests")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=60.0, help="client time limit per request (s)")
    ap.add_argument("--deadline", type=float, default=1800.0, help="time limit of the whole soak (s)")
    ap.add_argument("--model", help="a model reference, e.g. default (default: a tiny random llama built now)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="halluwatch-soak-") as tmp:
        model = args.model or build_tiny_model(Path(tmp) / "model")
        with serve(model, Path(tmp) / "server", precision="auto" if args.model else "native",
                   max_tokens_limit=args.max_tokens) as (url, _app, engine):
            config = engine.lm.config
            print(f"{args.n} sequential requests ({', '.join(KINDS)} in turn), max_tokens {args.max_tokens}, "
                  f"model {engine.lm.model_id} ({engine.lm.dtype}), RSS every {args.every}")
            result = soak(url, config, engine.lm.dtype, args.n, args.every, args.max_tokens, args.timeout,
                          args.deadline)
    ok = not result["failures"] and result["health_after"] == 200 and result["growth_below_bound"]
    print("RESULT: " + ("OK" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    from fuzz import exit_now

    exit_now(main())

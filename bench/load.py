"""Concurrent streaming load on loopback: greedy determinism and clean backpressure.

Builds a tiny llama (tests/tiny_models.py), serves it on a real uvicorn on 127.0.0.1, then:
1. sequential baseline: each prompt once, alone, with `stream: true` on POST /generate;
2. load: `--clients` concurrent httpx clients each send `--requests` streaming requests, one after
   the other (client i, request j asks for prompt (i + j) mod the number of prompts);
3. after: GET /health and one more /generate must work.

Every request must be answered with 200 (token events, then one `done` event) or a clean 503
(JSON `detail` and a `Retry-After` header: the engine queue is full) or 504; a 503 is retried after
Retry-After at most `--retries` times (default 0: counted, not retried). Every 200 must have the
text and token ids (from its token events) of the sequential run of its prompt (greedy decoding is
deterministic whatever the load), and its `done` text must be the concatenation of its token texts.
Printed: counts by status, p50/p95 of total latency and time to first token (client side, 200s
only), every problem. Exit status 1 on any problem. All requests have client timeouts; the whole
load phase has a deadline (`--deadline`).

    python bench/load.py [--clients 32] [--requests 4] [--max-tokens 16] [--queue-depth 16] [--json PATH]
"""

import argparse
import asyncio
import collections
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (REPO_ROOT / "bench", REPO_ROOT, REPO_ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (first: preloads OpenBLAS before mlx)
import httpx  # noqa: E402
from benchlib import add_json_option, exit_now, write_json  # noqa: E402

PROMPTS = ("hello", "The capital of France is", "Once upon a time, there was", "1 2 3 4 5",
           "What is the meaning of life?")


@dataclass
class Answer:
    prompt: str
    status: int | None = None  # None: no response (timeout, connection error)
    text: str = ""  # concatenated token texts
    token_ids: list = field(default_factory=list)
    done: dict | None = None
    error_event: str | None = None
    headers: dict = field(default_factory=dict)
    body: str = ""  # non-200 body
    ttft_s: float | None = None
    total_s: float | None = None
    exception: str | None = None
    attempts: int = 1


async def stream_once(client: httpx.AsyncClient, prompt: str, max_tokens: int, timeout_s: float) -> Answer:
    """One streaming /generate, read to the end, with an overall time limit."""
    answer = Answer(prompt)
    t0 = time.perf_counter()

    async def go():
        body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True}
        async with client.stream("POST", "/generate", json=body) as r:
            answer.status, answer.headers = r.status_code, dict(r.headers)
            if r.status_code != 200:
                answer.body = (await r.aread()).decode(errors="replace")
                return
            event, data = None, []
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                elif line == "" and event is not None:
                    payload = json.loads("\n".join(data))
                    if event == "token":
                        answer.ttft_s = answer.ttft_s or time.perf_counter() - t0
                        answer.text += payload["text"]
                        answer.token_ids.append(payload["token_id"])
                    elif event == "done":
                        answer.done = payload
                    elif event == "error":
                        answer.error_event = payload.get("error", str(payload))
                    event, data = None, []

    try:
        await asyncio.wait_for(go(), timeout_s)
    except (TimeoutError, httpx.HTTPError, json.JSONDecodeError) as e:
        answer.exception = f"{type(e).__name__}: {e}"
    answer.total_s = time.perf_counter() - t0
    return answer


def output(answer: Answer) -> dict:
    """What must not change with the load: the token texts, the token ids and the done text."""
    return {"text": answer.text, "token_ids": answer.token_ids,
            "done_text": answer.done.get("text") if answer.done else None}


def problems_of(answer: Answer, expected: dict | None) -> list:
    """Why `answer` is not acceptable (empty if it is)."""
    where = f"prompt {answer.prompt!r}"
    if answer.exception:
        return [f"{where}: no complete answer: {answer.exception}"]
    if answer.status == 200:
        out = []
        if answer.error_event is not None:
            out.append(f"{where}: 200 stream ended with an error event: {answer.error_event}")
        if answer.done is None:
            out.append(f"{where}: 200 stream without a done event")
        else:
            # the done text is the token texts plus, at most, an incomplete UTF-8 character held back
            if not str(answer.done.get("text")).startswith(answer.text):
                out.append(f"{where}: done text {answer.done.get('text')!r} does not start with the token "
                           f"texts {answer.text!r}")
            if answer.done.get("finish_reason") not in ("eos", "length"):
                out.append(f"{where}: finish_reason {answer.done.get('finish_reason')!r}")
        if expected is not None and output(answer) != expected:
            out.append(f"{where}: output differs from the sequential run: {output(answer)} != {expected}")
        return out
    if answer.status == 503:
        try:
            detail = json.loads(answer.body).get("detail")
        except ValueError:
            detail = None
        retry_after = answer.headers.get("retry-after", "")
        if not detail or not retry_after.isdigit():
            return [f"{where}: unclean 503 (Retry-After {retry_after!r}): {answer.body[:300]!r}"]
        return []
    if answer.status == 504:
        try:
            ok = bool(json.loads(answer.body).get("detail"))
        except ValueError:
            ok = False
        return [] if ok else [f"{where}: unclean 504: {answer.body[:300]!r}"]
    return [f"{where}: status {answer.status}: {answer.body[:300]!r}"]


def _client(url: str, timeout_s: float, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s, connect=10.0),
                             limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


async def sequential(url: str, prompts, max_tokens: int, timeout_s: float) -> dict:
    """prompt -> `output` of a streaming run with nothing else going on."""
    out = {}
    async with _client(url, timeout_s, 1) as client:
        for prompt in prompts:
            a = await stream_once(client, prompt, max_tokens, timeout_s)
            bad = problems_of(a, None)
            if a.status != 200 or bad:
                raise RuntimeError(f"sequential run of {prompt!r} failed: status {a.status}, {bad}")
            out[prompt] = output(a)
    return out


@dataclass
class LoadReport:
    answers: list = field(default_factory=list)  # every attempt
    problems: list = field(default_factory=list)
    wall_s: float = 0.0
    health: list = field(default_factory=list)  # problems after the load
    expected: dict = field(default_factory=dict)

    def ok(self) -> bool:
        return not self.problems and not self.health and any(a.status == 200 for a in self.answers)

    def summary(self) -> dict:
        """The figures `print` shows (and the docs table): counts, latencies (s), identical outputs."""
        by_status = collections.Counter(str(a.status) if a.exception is None else "no answer" for a in self.answers)
        oks = [a for a in self.answers if a.status == 200 and a.done is not None]
        latency = {name: {"p50": percentile(v, 50), "p95": percentile(v, 95), "max": max(v)}
                   for name, v in (("total", [a.total_s for a in oks]), ("ttft", [a.ttft_s for a in oks if a.ttft_s]),
                                   ("rejected", [a.total_s for a in self.answers if a.status in (503, 504)]))
                   if v}
        return {"attempts": len(self.answers), "seconds": self.wall_s, "by_status": dict(sorted(by_status.items())),
                "ok_answers": len(oks), "tokens": sum(len(a.token_ids) for a in oks), "latency_s": latency,
                "identical": sum(1 for a in oks if output(a) == self.expected.get(a.prompt)),
                "healthy_after": not self.health, "problems": list(self.problems), "ok": self.ok()}

    def print(self, out=print) -> None:
        s = self.summary()
        out(f"requests (attempts): {s['attempts']} in {s['seconds']:.1f} s; by status: "
            + ", ".join(f"{k}: {v}" for k, v in s["by_status"].items()))
        out(f"200 answers: {s['ok_answers']}, {s['tokens']} tokens, "
            f"{s['tokens'] / max(s['seconds'], 1e-9):.1f} tokens/s overall")
        for name in ("total", "ttft"):
            if name in s["latency_s"]:
                lat = s["latency_s"][name]
                out(f"latency {name:<5} (200s): p50 {lat['p50']:.3f} s, p95 {lat['p95']:.3f} s, max {lat['max']:.3f} s")
        if "rejected" in s["latency_s"]:
            lat = s["latency_s"]["rejected"]
            out(f"latency of 503/504 answers: p50 {lat['p50']:.3f} s, max {lat['max']:.3f} s")
        out(f"200 outputs identical to the sequential run: {s['identical']}/{s['ok_answers']}")
        out(f"health after the load: {'OK' if not self.health else '; '.join(self.health)}")
        out(f"problems: {len(self.problems)}")
        for p in self.problems:
            out(f"  {p}")
        out("RESULT: " + ("OK" if s["ok"] else "FAIL"))


def percentile(values: list, q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, min(len(s), math.ceil(q / 100 * len(s))) - 1)]


async def run_load(url: str, prompts=PROMPTS, clients: int = 32, requests: int = 4, max_tokens: int = 16,
                   timeout_s: float = 120.0, retries: int = 0, deadline_s: float = 600.0) -> LoadReport:
    """The sequential baseline, then `clients` x `requests` concurrent streaming requests, then the
    health checks."""
    report = LoadReport()
    report.expected = await sequential(url, prompts, max_tokens, timeout_s)
    start = time.perf_counter()
    end = start + deadline_s

    async def client_task(i: int, client: httpx.AsyncClient):
        for j in range(requests):
            prompt = prompts[(i + j) % len(prompts)]
            for attempt in range(retries + 1):
                left = end - time.perf_counter()
                if left <= 0:
                    report.problems.append(f"client {i}: deadline of {deadline_s} s reached before request {j}")
                    return
                a = await stream_once(client, prompt, max_tokens, min(timeout_s, left))
                a.attempts = attempt + 1
                report.answers.append(a)
                report.problems.extend(f"client {i} request {j}: {p}" for p in problems_of(a, report.expected[prompt]))
                if a.status != 503 or attempt == retries:
                    break
                await asyncio.sleep(float(a.headers.get("retry-after", "1")))

    async with _client(url, timeout_s, clients) as client:
        await asyncio.gather(*(client_task(i, client) for i in range(clients)))
    report.wall_s = time.perf_counter() - start
    report.health = await health_after(url, prompts[0], max_tokens, report.expected[prompts[0]], timeout_s)
    return report


async def health_after(url: str, prompt: str, max_tokens: int, expected: dict, timeout_s: float) -> list:
    """Problems with GET /health and one more streaming and one JSON /generate after the load."""
    out = []
    async with _client(url, timeout_s, 1) as client:
        try:
            r = await client.get("/health")
            if r.status_code != 200 or r.json().get("status") != "ok":
                out.append(f"GET /health: {r.status_code} {r.text[:200]}")
            a = await stream_once(client, prompt, max_tokens, timeout_s)
            if a.status != 200 or problems_of(a, expected):
                out.append(f"streaming /generate after the load: {a.status} {problems_of(a, expected)}")
            r = await client.post("/generate", json={"prompt": prompt, "max_tokens": max_tokens})
            if r.status_code != 200 or r.json().get("text") != expected["done_text"]:
                out.append(f"JSON /generate after the load: {r.status_code} {r.text[:200]}")
        except httpx.HTTPError as e:
            out.append(f"after the load: {type(e).__name__}: {e}")
    return out


def main(argv=None) -> int:
    from fuzz import build_tiny_model, serve

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after the other")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--queue-depth", type=int, default=16, help="server setting queue_depth (503 beyond)")
    ap.add_argument("--max-streams", type=int, default=None, help="server setting max_streams (default: --clients)")
    ap.add_argument("--retries", type=int, default=0, help="retries of a 503 after its Retry-After")
    ap.add_argument("--timeout", type=float, default=120.0, help="client time limit per request (s)")
    ap.add_argument("--deadline", type=float, default=600.0, help="time limit of the load phase (s)")
    ap.add_argument("--model", type=Path, help="a model folder (default: a tiny random llama built now)")
    add_json_option(ap)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="halluwatch-load-") as tmp:
        model = args.model or build_tiny_model(Path(tmp) / "model")
        with serve(model, Path(tmp) / "server", queue_depth=args.queue_depth,
                   max_streams=args.max_streams or args.clients,
                   max_tokens_limit=args.max_tokens, default_max_tokens=args.max_tokens) as (url, _app, _engine):
            print(f"{args.clients} clients x {args.requests} streaming requests, max_tokens {args.max_tokens}, "
                  f"queue_depth {args.queue_depth}, {len(PROMPTS)} prompts, retries {args.retries}")
            report = asyncio.run(run_load(url, PROMPTS, args.clients, args.requests, args.max_tokens,
                                          args.timeout, args.retries, args.deadline))
    report.print()
    write_json(args.json, "load", {"clients": args.clients, "requests_per_client": args.requests,
                                   "max_tokens": args.max_tokens, "queue_depth": args.queue_depth,
                                   "retries": args.retries, **report.summary()}, argv)
    return 0 if report.ok() else 1


if __name__ == "__main__":
    exit_now(main())

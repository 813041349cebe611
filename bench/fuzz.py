"""Fuzz every route of a live server with schemathesis, on a tiny random model.

Builds a tiny llama (tests/tiny_models.py), serves it on a real uvicorn on 127.0.0.1 and feeds
schemathesis cases generated from the server's own /openapi.json to it: for each operation, up to
`--max-examples` positive cases (valid by the schema), as many negative ones (invalid by the schema)
and, for the generation routes (/generate, /score, /v1/completions, /v1/chat/completions), as many
"repaired" positive cases (also valid for the server, so that they run the model: see `_repair`);
each is sent with `case.call()` and checked with `case.validate_response()` (all of schemathesis's
default checks). Without --max-examples, it is chosen so that about `--total` (1100) requests are
sent over all operations (an operation without parameters gets one request).

Printed: requests sent, by status code and by operation; responses >= 500 (must be 0); schema
violations (must be 0): a response body, content type or header the schema does not allow (with
--strict-status also a status code it does not list; these are otherwise printed on their own);
other schemathesis findings (e.g. valid-by-schema data refused by a server-side limit) for
information. Every failing case is printed in full (the failure, the response, a curl command and
the exact bytes sent) so it can be replayed. Exit status 1 if there is any 5xx or schema
violation, or fewer requests than `--min-total`.

Keeping the work bounded:
- the server runs with `max_tokens_limit` 8 (`--max-tokens-limit`), so a generation asks for at
  most 8 tokens and anything larger is a cheap 422/400; every request has a client timeout, and the
  run stops generating new cases past `--time-budget` seconds;
- the data folder is empty, so /calibrate accepts only the packaged HaluEval copy. A case that
  does start a job (POST /calibrate or /calibrate/{id}/resume answered 202) is cancelled at once
  (DELETE /calibrate/{id}) and the fuzzer waits, at most `--job-wait` seconds, until the job is
  no longer queued or running before it sends the next case: a started job scores at most one
  batch of samples. These housekeeping requests are counted separately; a job that does not stop
  in time is reported as a failure.

    python bench/fuzz.py [--total 1100 | --max-examples N] [--min-total 1000] [--strict-status] [--seed 0]
                         [--json PATH]
"""

import argparse
import collections
import contextlib
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
from benchlib import add_json_option, exit_now, write_json  # noqa: E402

# The checks whose failure means the response does not conform to the schema: its body, content type
# or headers. A status code the schema does not list (status_code_conformance) is reported on its own
# ("undocumented status codes") and counts as a violation only with --strict-status.
SCHEMA_CHECKS = {"response_schema_conformance", "content_type_conformance", "response_headers_conformance"}
STATUS_CHECKS = {"status_code_conformance"}
SERVER_ERROR_CHECKS = {"not_a_server_error"}
JOB_STARTERS = {("POST", "/calibrate"), ("POST", "/calibrate/{job_id}/resume")}
REPAIRABLE = {("POST", "/generate"), ("POST", "/score"), ("POST", "/v1/completions"),
              ("POST", "/v1/chat/completions")}  # see `_repair`
# OpenAI fields this server accepts only at their no-op value (app/openai_schemas.py): dropped by `_repair`.
OPENAI_NOOP_ONLY = ("n", "frequency_penalty", "presence_penalty", "logit_bias", "tools", "functions", "tool_choice",
                    "function_call", "response_format", "modalities", "audio", "prediction", "web_search_options",
                    "best_of", "echo", "suffix")
MODES = ("positive", "negative", "repaired")


def build_tiny_model(out_dir: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny random model folder (tests/tiny_models.py)."""
    from support.tiny_models import make_tiny_model

    return make_tiny_model(arch, out_dir, seed=seed)


@contextlib.contextmanager
def serve(model_dir: Path, work_dir: Path, queue_depth: int = 16, precision: str = "native", **settings):
    """Yield (base_url, app, engine): the model served on a real uvicorn on 127.0.0.1.

    State, reports, params and data folders are fresh folders under `work_dir` (the data folder
    empty); `settings` override Settings fields (e.g. max_tokens_limit=8)."""
    from support.live_server import live_server

    from app.engine import Engine
    from app.http.app import create_app
    from app.settings import Settings

    work_dir = Path(work_dir)
    (work_dir / "data").mkdir(parents=True, exist_ok=True)
    settings = Settings(params_dir=work_dir / "params", reports_dir=work_dir / "reports", state_dir=work_dir / "state",
                        data_dir=work_dir / "data", queue_depth=queue_depth, **settings)
    engine = Engine(str(model_dir), precision=precision, queue_depth=queue_depth,
                    max_batch_size=settings.max_batch_size)
    engine.start()
    try:
        app = create_app(settings, engine)
        with live_server(app) as url:
            yield url, app, engine
    finally:
        engine.stop()


@dataclass
class Finding:
    kind: str  # "server error" | "schema violation" | "undocumented status" | "other" | "job"
    operation: str
    mode: str
    status: int | None
    checks: list
    report: str  # the whole failure: titles, messages, curl, response


@dataclass
class FuzzReport:
    requests: int = 0
    by_status: collections.Counter = field(default_factory=collections.Counter)
    by_operation: collections.Counter = field(default_factory=collections.Counter)  # (operation, status)
    server_errors: int = 0  # responses with status >= 500
    transport_errors: int = 0  # no response at all (timeout, connection reset)
    findings: list = field(default_factory=list)
    jobs_started: int = 0
    housekeeping_requests: int = 0
    stopped_early: bool = False
    elapsed_s: float = 0.0

    def of_kind(self, kind: str) -> list:
        return [f for f in self.findings if f.kind == kind]

    @property
    def schema_violations(self) -> list:
        return self.of_kind("schema violation")

    def ok(self, min_total: int = 0) -> bool:
        return (self.server_errors == 0 and not self.of_kind("server error") and not self.schema_violations
                and not self.of_kind("job") and self.transport_errors == 0 and self.requests >= min_total)

    @staticmethod
    def _grouped(out, findings: list, key) -> None:
        """One line per group with its count, then the first case of the group in full."""
        groups: dict = {}
        for f in findings:
            groups.setdefault(key(f), []).append(f)
        for k, fs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            out(f"  {' | '.join(map(str, k))}: {len(fs)}")
        for k, fs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            out(f"\n  --- first case of {' | '.join(map(str, k))} ({fs[0].mode}):\n" + _indent(fs[0].report, "    "))

    def summary(self, min_total: int = 0) -> dict:
        """The figures of the docs table."""
        return {"requests": self.requests, "seconds": self.elapsed_s, "stopped_early": self.stopped_early,
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "server_errors": self.server_errors, "transport_errors": self.transport_errors,
                "schema_violations": len(self.schema_violations),
                "undocumented_status": len(self.of_kind("undocumented status")),
                "jobs_started": self.jobs_started, "jobs_not_bounded": len(self.of_kind("job")),
                "ok": self.ok(min_total)}

    def print(self, out=print, min_total: int = 0) -> None:
        out(f"requests: {self.requests} in {self.elapsed_s:.1f} s"
            f"{' (stopped early: time budget)' if self.stopped_early else ''}"
            f"; housekeeping (job cancel/poll): {self.housekeeping_requests}; jobs started: {self.jobs_started}")
        out("by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.by_status.items())))
        out("by operation:")
        for op in sorted({op for op, _ in self.by_operation}):
            counts = {st: n for (o, st), n in self.by_operation.items() if o == op}
            out(f"  {op:<34} {sum(counts.values()):5d}  ("
                + ", ".join(f"{st}: {n}" for st, n in sorted(counts.items())) + ")")
        out(f"responses >= 500: {self.server_errors}")
        out(f"transport errors (no response): {self.transport_errors}")
        out(f"schema violations: {len(self.schema_violations)}")
        undocumented = self.of_kind("undocumented status")
        out(f"responses with a status code the schema does not list (not counted as violations unless "
            f"--strict-status): {len(undocumented)}")
        self._grouped(out, undocumented, lambda f: (f.operation, f.status))
        other = self.of_kind("other")
        out(f"other schemathesis findings (informational): {len(other)}")
        self._grouped(out, other, lambda f: (f.operation, ", ".join(f.checks), f.status))
        for f in self.of_kind("job"):
            out(f"calibration job not bounded: {f.report}")
        failing = [f for f in self.findings if f.kind in ("server error", "schema violation", "job")]
        for i, f in enumerate(failing, 1):
            out(f"\n--- failing case {i}/{len(failing)}: {f.kind}, {f.operation} ({f.mode}), status {f.status}, "
                f"checks {', '.join(f.checks)}\n{f.report}")
        if min_total and self.requests < min_total:
            out(f"too few requests: {self.requests} < {min_total}")
        out("RESULT: " + ("OK" if self.ok(min_total) else "FAIL"))


def _repair(case, max_tokens_limit: int):
    """Make a schema-valid body of a generation route acceptable to the server as well, with the rules
    the schema cannot say: on /generate and /score exactly one of prompt and messages (chat_template
    only with prompt); on /v1 one non-empty prompt, no-op values of the unsupported OpenAI fields, at
    most 4 non-empty stop strings; everywhere max_tokens within the server's limit."""
    body = case.body
    if not isinstance(body, dict):
        return case
    if case.operation.path.startswith("/v1/"):
        for key in OPENAI_NOOP_ONLY:
            body.pop(key, None)
        if isinstance(body.get("prompt"), list):
            body["prompt"] = body["prompt"][:1] or ["hello"]
        if body.get("prompt") in ("", [""]):
            body["prompt"] = "hello"
        if isinstance(body.get("stop"), list):
            body["stop"] = [x for x in body["stop"] if x][:4]
        elif body.get("stop") == "":
            body["stop"] = None
        if body.get("top_logprobs") is not None:
            body["logprobs"] = True
    else:
        if body.get("prompt") is not None and body.get("messages") is not None:
            del body["messages" if len(body["prompt"]) % 2 else "prompt"]
        if body.get("prompt") is None and body.get("messages") is None:
            body.pop("messages", None)
            body["prompt"] = "hello"
        if body.get("messages") is not None:
            body.pop("prompt", None)
            if body.get("chat_template"):
                body["chat_template"] = False
        else:
            body.pop("messages", None)
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), (int, float)) and body[key] > max_tokens_limit:
            body[key] = 1 + int(body[key]) % max_tokens_limit
    return case


def _as_sent(response) -> str:
    """The request exactly as sent (the curl command schemathesis prints decodes the body lossily)."""
    req = getattr(response, "request", None)
    if req is None:
        return ""
    body = req.body if isinstance(req.body, bytes) else (req.body or "").encode()
    return (f"Sent: {req.method} {req.url}\nContent-Type: {req.headers.get('Content-Type')}\n"
            f"Body bytes (Python repr, {len(body)} bytes): {body[:4000]!r}")


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.strip("\n").splitlines())


class _OutOfTime(Exception):
    pass


def _failure_checks(failure) -> list:
    return list(getattr(failure, "checks", ()) or ()) or [type(failure).__name__]


def _classify(checks: list, strict_status: bool) -> str:
    if SERVER_ERROR_CHECKS & set(checks):
        return "server error"
    if SCHEMA_CHECKS & set(checks) or (strict_status and STATUS_CHECKS & set(checks)):
        return "schema violation"
    if STATUS_CHECKS & set(checks):
        return "undocumented status"
    return "other"


def _bound_job(session, base_url: str, job_id: str, wait_s: float, timeout_s: float,
               report: FuzzReport) -> str | None:
    """Cancel a job the fuzzer started and wait until it is no longer queued or running; None if it
    stopped in time, else why not."""
    report.jobs_started += 1
    report.housekeeping_requests += 1
    session.delete(f"{base_url}/calibrate/{job_id}", timeout=timeout_s)  # 409 if it already ended: fine
    deadline = time.monotonic() + wait_s
    status = None
    while time.monotonic() < deadline:
        report.housekeeping_requests += 1
        status = session.get(f"{base_url}/calibrate/{job_id}", timeout=timeout_s).json().get("status")
        if status not in ("queued", "running"):
            return None
        time.sleep(0.05)
    return f"job {job_id} still {status} {wait_s} s after it was cancelled"


def _slots(op, modes) -> int:
    """How many (mode) runs of `op` can generate more than one case: none for an operation without
    parameters (one request whatever the mode); no negative run with path parameters only (a string
    path parameter has no invalid form)."""
    if not (len(op.body) or len(op.query) or len(op.path_parameters) or len(op.headers)):
        return 0
    key = (op.method.upper(), op.path)
    return sum(1 for m in modes if (m != "repaired" or key in REPAIRABLE)
               and (m != "negative" or len(op.body) or len(op.query)))


def examples_for_total(operations, modes, total: int) -> int:
    """`max_examples` per operation and mode that makes about `total` requests in all."""
    fixed = sum(1 for op in operations if _slots(op, modes) == 0)
    slots = sum(_slots(op, modes) for op in operations)
    return max(1, math.ceil((total - fixed) / max(slots, 1)))


def run_fuzz(base_url: str, max_examples: int | None = 100, *, total: int | None = None, modes=MODES,
             seed: int = 0, request_timeout_s: float = 60.0, time_budget_s: float | None = None,
             job_wait_s: float = 120.0, strict_status: bool = False, max_tokens_limit: int = 8,
             include: str | None = None, log=print) -> FuzzReport:
    """Fuzz every operation of the server at `base_url` (schema from its /openapi.json), with
    `max_examples` per operation and mode, or as many as make about `total` requests.

    `modes`: "positive" (valid by the schema), "negative" (invalid by the schema) and "repaired":
    positive cases of the generation routes made valid for the server too (see `_repair`; e.g.
    max_tokens within `max_tokens_limit`, the server's setting), so that most of them run the
    model and their 200 bodies and event streams get checked against the schema."""
    import hypothesis
    import hypothesis.errors
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given
    from schemathesis import GenerationMode
    from schemathesis.core.failures import FailureGroup

    # No output sanitization: it would print `"max_tokens": "[Filtered]"` (a "token" key) in the curl
    # reproductions.
    config = schemathesis.Config.from_dict({"output": {"sanitization": {"enabled": False}}})
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config, timeout=request_timeout_s)
    report = FuzzReport()
    start = time.monotonic()
    deadline = None if time_budget_s is None else start + time_budget_s
    session = requests.Session()
    operations = []
    if include:
        schema = schema.include(path_regex=include)
    for result in schema.get_all_operations():
        operations.append(result.ok())  # an operation the schema cannot describe raises here
    if total is not None:
        max_examples = examples_for_total(operations, modes, total)
    log(f"fuzzing {len(operations)} operations of {base_url}: {', '.join(op.label for op in operations)}")
    log(f"up to {max_examples} examples per operation and mode ({', '.join(modes)}), seed {seed}")

    for op in operations:
        key = (op.method.upper(), op.path)
        for mode_name in modes:
            if mode_name == "repaired":
                if key not in REPAIRABLE:
                    continue
                strategy = op.as_strategy(generation_mode=GenerationMode.POSITIVE).map(
                    lambda case: _repair(case, max_tokens_limit))
            else:
                strategy = op.as_strategy(generation_mode=GenerationMode(mode_name))
            sent_before = report.requests

            @hypothesis.settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                                 phases=[Phase.explicit, Phase.generate], print_blob=False,
                                 suppress_health_check=list(HealthCheck))
            @hypothesis.seed(seed)
            @given(case=strategy)
            def one(case):
                if deadline is not None and time.monotonic() > deadline:
                    raise _OutOfTime
                try:
                    response = case.call(session=session, timeout=request_timeout_s)
                except requests.RequestException as e:
                    report.transport_errors += 1
                    report.findings.append(Finding("server error", op.label, mode_name, None, ["transport"],
                                                   f"{type(e).__name__}: {e}\n{case.as_curl_command()}"))
                    return
                report.requests += 1
                sent = _as_sent(response)
                report.by_status[response.status_code] += 1
                report.by_operation[op.label, response.status_code] += 1
                if response.status_code >= 500:
                    report.server_errors += 1
                try:
                    case.validate_response(response)
                except FailureGroup as group:
                    by_kind = collections.defaultdict(list)
                    for failure in group.exceptions:
                        by_kind[_classify(_failure_checks(failure), strict_status)].append(failure)
                    if response.status_code >= 500:
                        by_kind.setdefault("server error", [])
                    for kind, failures in by_kind.items():
                        checks = sorted({c for f in failures for c in _failure_checks(f)}) or ["status >= 500"]
                        report.findings.append(Finding(kind, op.label, mode_name, response.status_code, checks,
                                                       f"{group}\n{sent}"))
                else:
                    if response.status_code >= 500:
                        report.findings.append(Finding("server error", op.label, mode_name, response.status_code,
                                                       ["status >= 500"],
                                                       f"{sent}\n{response.text[:2000]}"))
                if key in JOB_STARTERS and response.status_code == 202:
                    try:
                        why = _bound_job(session, base_url, response.json()["job_id"], job_wait_s,
                                         request_timeout_s, report)
                    except (requests.RequestException, ValueError, KeyError) as e:
                        why = f"could not cancel the job: {type(e).__name__}: {e}"
                    if why:
                        report.findings.append(Finding("job", op.label, mode_name, 202, ["job bound"],
                                                       f"{why}\n{case.as_curl_command()}"))

            try:
                one()
            except _OutOfTime:
                report.stopped_early = True
            except hypothesis.errors.Unsatisfiable:
                pass  # e.g. no invalid request exists for an operation without parameters
            log(f"  {op.label:<40} {mode_name:<8} {report.requests - sent_before:4d} requests "
                f"(total {report.requests}, {time.monotonic() - start:.0f} s)")
            if report.stopped_early:
                break
        if report.stopped_early:
            break
    report.elapsed_s = time.monotonic() - start
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-examples", type=int, default=None,
                    help="examples per operation and generation mode (at most; an operation without "
                         "parameters has just one); default: chosen from --total")
    ap.add_argument("--total", type=int, default=1100, help="requests to aim at when --max-examples is not given")
    ap.add_argument("--min-total", type=int, default=1000, help="fail if fewer requests were sent")
    ap.add_argument("--modes", default=",".join(MODES), help="generation modes, comma-separated (see run_fuzz)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, help="a model folder (default: a tiny random llama built now)")
    ap.add_argument("--max-tokens-limit", type=int, default=8, help="server setting max_tokens_limit")
    ap.add_argument("--request-timeout", type=float, default=60.0, help="client timeout per request (s)")
    ap.add_argument("--time-budget", type=float, default=1800.0, help="stop sending new cases after this (s)")
    ap.add_argument("--include", help="only the operations whose path matches this regular expression")
    ap.add_argument("--strict-status", action="store_true",
                    help="count a status code the schema does not list as a schema violation")
    ap.add_argument("--job-wait", type=float, default=120.0,
                    help="how long a cancelled calibration job may take to stop (s)")
    add_json_option(ap)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="halluwatch-fuzz-") as tmp:
        model = args.model or build_tiny_model(Path(tmp) / "model")
        with serve(model, Path(tmp) / "server", max_tokens_limit=args.max_tokens_limit,
                   default_max_tokens=min(args.max_tokens_limit, 256)) as (url, _app, _engine):
            report = run_fuzz(url, args.max_examples, total=None if args.max_examples else args.total,
                              modes=tuple(args.modes.split(",")), seed=args.seed,
                              request_timeout_s=args.request_timeout, time_budget_s=args.time_budget,
                              job_wait_s=args.job_wait, strict_status=args.strict_status,
                              max_tokens_limit=args.max_tokens_limit, include=args.include)
    report.print(min_total=args.min_total)
    write_json(args.json, "fuzz", {"total": args.total, "max_examples": args.max_examples, "seed": args.seed,
                                   **report.summary(args.min_total)}, argv)
    return 0 if report.ok(args.min_total) else 1


if __name__ == "__main__":
    exit_now(main())

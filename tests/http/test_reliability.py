"""Backpressure, timeouts, disconnects, auth on every route, path escapes, durable writes, SIGTERM."""

import concurrent.futures
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from support import REPO_ROOT
from support.engines import running_engine
from support.live_server import free_port, live_server

from app.engine import Engine, GenerationJob
from app.http.app import create_app
from app.settings import Settings
from support.spy import EngineSpy, check_cancelled_by_the_disconnect, hang_up_mid_json_request

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    with running_engine(tiny_model_path("llama"), queue_depth=2) as e:
        yield e


def _settings(tmp_path, **kw):
    return Settings(params_dir=tmp_path / "params", reports_dir=tmp_path / "reports", state_dir=tmp_path / "state",
                    data_dir=tmp_path / "data", **kw)


def _wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_every_route_requires_the_key(engine, tmp_path):
    app = create_app(_settings(tmp_path, api_key=KEY), engine)
    public = {"/health"}  # the only public route in the schema; the others are checked below
    with TestClient(app) as c:
        routes = [(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops]
        assert len(routes) >= 8
        for method, path in routes:
            url = path.replace("{job_id}", "nope")
            if path in public:
                assert c.request(method, url).status_code != 401
                continue
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                r = c.request(method, url, headers=headers, json={"no_such_field": 1})
                assert r.status_code == 401, (method, path, headers)
                assert "API key" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
            # accepted: past auth, the (deliberately invalid) body is what gets rejected; nothing starts
            r = c.request(method, url, headers={"Authorization": f"Bearer {KEY}"}, json={"no_such_field": 1})
            assert r.status_code in (200, 400, 404, 422), (method, path, r.status_code)
        assert c.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.get("/openapi.json").status_code == 401


def _get_with_keys(c, path: str) -> dict:
    """Status of GET `path` without a key, with a wrong one and with the right one."""
    return {name: c.get(path, headers=headers).status_code for name, headers in (
        ("none", {}), ("wrong", {"Authorization": "Bearer wrong"}), ("right", {"Authorization": f"Bearer {KEY}"}))}


@pytest.mark.parametrize("metrics_public", [False, True])
def test_key_on_the_routes_outside_the_schema(engine, tmp_path, metrics_public):
    """/metrics needs the key unless metrics_public; the page (/) and its static files are public
    by design (the page asks for the key, see app/http/security.py); the docs need the key."""
    from app.http.routes.ui import STATIC_DIR

    app = create_app(_settings(tmp_path, api_key=KEY, metrics_public=metrics_public), engine)
    with TestClient(app) as c:
        metrics = _get_with_keys(c, "/metrics")
        if metrics_public:
            assert metrics == {"none": 200, "wrong": 200, "right": 200}
        else:
            assert metrics == {"none": 401, "wrong": 401, "right": 200}
        r = c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert "halluwatch" in r.text and r.headers["content-type"].startswith("text/plain")
        # metrics_public opens /metrics only
        assert _get_with_keys(c, "/model") == {"none": 401, "wrong": 401, "right": 200}
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert _get_with_keys(c, path) == {"none": 401, "wrong": 401, "right": 200}, path
        # public: the page and every static file, with or without a key
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        files = sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file())
        assert {"index.html", "app.js", "style.css"} <= set(files)
        for name in files:
            assert _get_with_keys(c, f"/static/{name}") == {"none": 200, "wrong": 200, "right": 200}, name
            assert c.get(f"/static/{name}").content == (STATIC_DIR / name).read_bytes()
        # public means the static folder's files, nothing more
        assert c.get("/static/nope.js").status_code == 404
        assert c.get("/static/../settings.py").status_code in (401, 404)
        assert _get_with_keys(c, "/metricsx")["none"] == 401 and _get_with_keys(c, "/health/x")["none"] == 401


@pytest.mark.parametrize("host,key,warned", [
    ("0.0.0.0", None, True), ("::", None, True), ("192.168.1.5", None, True), ("my-host.example", None, True),
    ("0.0.0.0", KEY, False), ("192.168.1.5", KEY, False),
    ("127.0.0.1", None, False), ("127.0.0.2", None, False), ("::1", None, False), ("localhost", None, False),
])
def test_warning_when_bound_beyond_loopback_without_a_key(caplog, host, key, warned):
    from app.http.security import warn_if_exposed

    with caplog.at_level(logging.WARNING, logger="halluwatch.security"):
        warn_if_exposed(host, key)
    warnings = [r for r in caplog.records if r.name == "halluwatch.security" and r.levelno == logging.WARNING]
    if warned:
        (w,) = warnings
        assert host in w.getMessage() and "HALLUWATCH_API_KEY" in w.getMessage()
    else:
        assert warnings == []


def test_queue_full_is_503_at_once(engine, tmp_path, monkeypatch):
    """With the engine held inside a job and its queue (depth 2) full, /generate is answered 503
    while the engine is still held: it does not wait for room, and its job never reaches the engine."""
    spy = EngineSpy().install(monkeypatch)
    blockers = [GenerationJob([5, 6, 7], 2) for _ in range(3)]
    entered, release = spy.hold(blockers[0])
    with TestClient(create_app(_settings(tmp_path), engine)) as c:
        engine.submit(blockers[0])
        assert entered.wait(60), "the first blocker never started"
        engine.submit(blockers[1])
        engine.submit(blockers[2])  # the queue (depth 2) is now full
        answer = {}
        request = threading.Thread(target=lambda: answer.update(r=c.post("/generate", json={"prompt": "hi",
                                                                                        "max_tokens": 2})))
        request.start()
        request.join(60)  # generous: a request waiting for room would wait as long as the engine is held
        answered_while_held = not request.is_alive()
        release.set()
        request.join(120)
        assert answered_while_held, "the request waited for room in the queue"
        r = answer["r"]
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "full" in r.json()["detail"]
        for job in blockers:
            assert spy.of_job(job).wait_done().finish_reason == "length"
        (refused,) = [t for t in spy.tracked if t.job not in blockers]
        assert refused.started is None and refused.finished is None


def test_timeout_is_504_and_an_error_event(engine, tmp_path):
    with TestClient(create_app(_settings(tmp_path, request_timeout_s=0.05), engine)) as c:
        r = c.post("/generate", json={"prompt": "hi", "max_tokens": 400})
        assert r.status_code == 504 and "request_timeout_s" in r.json()["detail"]
        r = c.post("/generate", json={"prompt": "hi", "max_tokens": 400, "stream": True})
        assert "event: error" in r.text and "request_timeout_s" in r.text
    _wait(lambda: not engine.busy)


def test_too_many_streams_is_429(engine, tmp_path):
    app = create_app(_settings(tmp_path, max_streams=1), engine)
    with TestClient(app) as c:
        app.state.streams = 1
        r = c.post("/generate", json={"prompt": "hi", "max_tokens": 2, "stream": True})
        assert r.status_code == 429 and "max_streams" in r.json()["detail"]


def _hang_up_mid_stream(url: str, body: dict, spy: EngineSpy) -> None:
    with httpx.Client(base_url=url, timeout=60) as c, c.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # held: dropping a half-read iterator already closes the connection
        while not next(lines).startswith("event: token"):
            pass
        spy.mark("closing")  # leaving the block closes the connection mid-stream


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_disconnect_cancels_the_generation(engine, tmp_path, monkeypatch, stream):
    spy = EngineSpy().install(monkeypatch)
    body = {"prompt": "hello", "max_tokens": 400, "stream": stream}
    with live_server(create_app(_settings(tmp_path), engine)) as url:
        if stream:
            _hang_up_mid_stream(url, body, spy)
        else:
            hang_up_mid_json_request(url, "/generate", body, spy)
        check_cancelled_by_the_disconnect(spy.only(), spy, 400)
        # the engine is free again: a new request is answered
        assert httpx.post(f"{url}/generate", json={"prompt": "hello", "max_tokens": 3}, timeout=60).status_code == 200


def test_symlink_escape_of_the_data_folder_is_rejected(engine, tmp_path):
    settings = _settings(tmp_path)
    settings.data_dir.mkdir()
    outside = tmp_path / "secret.jsonl"
    outside.write_text("{}\n")
    (settings.data_dir / "link.jsonl").symlink_to(outside)
    with TestClient(create_app(settings, engine)) as c:
        r = c.post("/calibrate", json={"n": 10, "dataset": "link.jsonl"})
        assert r.status_code == 400 and "data folder" in r.json()["detail"]


WRITER = """
import sys, itertools
sys.path.insert(0, {root!r})
from app.storage import write_json_atomic
for i in itertools.count():
    write_json_atomic({path!r}, {{"model": "m", "tau_hbar": 1.0, "tau_pri": float(i), "pad": "x" * 200000}})
    print(i, flush=True)  # write i is complete
"""


@pytest.mark.parametrize("after", [1, 2, 5, 8])
def test_sigkill_during_params_writes_leaves_a_loadable_file(tmp_path, after):
    """Killed while rewriting a params file over and over, once `after` writes were reported
    complete: the file is whole and is the last complete write (or the one whose rename had
    happened but was not reported yet), never a torn one or the old one."""
    from app.calibration.params import load_params
    from app.storage import write_json_atomic

    path = tmp_path / "p.json"
    write_json_atomic(path, {"model": "m", "tau_hbar": 1.0, "tau_pri": -1.0})
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(REPO_ROOT), path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    reported = []
    try:
        while len(reported) < after:
            line = proc.stdout.readline()
            assert line, f"the writer stopped (exit status {proc.poll()})"
            reported.append(line)
    finally:
        proc.kill()  # SIGKILL, somewhere inside one of the next writes
        reported.append(proc.stdout.read())
        proc.wait()
    completed = [int(n) for n in "".join(reported).split()]
    assert completed[:after] == list(range(after))
    p = load_params(path)  # never half-written
    assert p.data["model"] == "m" and p.data["pad"] == "x" * 200000
    assert p.data["tau_pri"] in (completed[-1], completed[-1] + 1), (p.data["tau_pri"], completed[-1])
    assert not [f for f in tmp_path.iterdir() if f.name != "p.json" and not f.name.startswith(".p.json.")]


def test_sigterm_marks_a_running_job_interrupted(tiny_model_path, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "qa.jsonl").write_text("\n".join(json.dumps({
        "knowledge": f"Fact {i}.", "question": f"Q {i}?", "right_answer": f"A {i}", "hallucinated_answer": f"B {i}",
    }) for i in range(200)))
    port = free_port()
    env = {**os.environ, "HALLUWATCH_STATE_DIR": str(tmp_path / "state"), "HALLUWATCH_DATA_DIR": str(data),
           "HALLUWATCH_REPORTS_DIR": str(tmp_path / "reports"), "HALLUWATCH_PARAMS_DIR": str(tmp_path / "params"),
           "HALLUWATCH_SHUTDOWN_GRACE_S": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--model", str(tiny_model_path("llama")),
                             "--precision", "native", "--port", str(port)], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _up(url), timeout=60)
        job = {"n": 200, "max_tokens": 16, "dataset": "qa.jsonl"}
        job_id = httpx.post(f"{url}/calibrate", json=job).json()["job_id"]
        _wait(lambda: httpx.get(f"{url}/calibrate/{job_id}").json()["status"] == "running")
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells the signal
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        proc.kill()
    from app.calibration.background import JobStore

    job = JobStore(tmp_path / "state" / "jobs.sqlite3").get(job_id)
    assert job["status"] == "interrupted" and job["progress"]["done"] < 200


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_chunked_body_over_the_limit_is_413(engine, tmp_path):
    with TestClient(create_app(_settings(tmp_path, max_body_bytes=2048), engine)) as c:
        def chunks():
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"a" * 512
            yield b'"}'
        r = c.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]


def test_score_during_shutdown_is_a_clear_503(tiny_model_path, tmp_path):
    """A request still queued when the engine stops is cancelled: 503 naming it, not a 500."""
    engine = Engine(str(tiny_model_path("llama")), precision="native", max_batch_size=1)
    engine.start()
    blocker = engine.submit(GenerationJob([5, 6, 7], 400))
    with live_server(create_app(_settings(tmp_path), engine)) as url:
        _wait(lambda: engine.busy)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            scored = pool.submit(httpx.post, f"{url}/score", json={"prompt": "hi", "response": "there"}, timeout=60)
            _wait(lambda: engine.queue_depth == 1)  # /score waits behind the blocker
            stopping = pool.submit(engine.stop)  # the server is shutting down
            _wait(lambda: engine.queue_depth == 2)  # stop's marker is queued ahead of /score
            blocker.cancel()
            stopping.result(timeout=30)
            r = scored.result(timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "cancelled" in r.json()["detail"]

"""The response log through HTTP, on SQLite and PostgreSQL: every scored route appends an entry under
the id it answers with; /monitor/summary, /monitor/responses and /feedback read and label them."""

import json
import time

import pytest
from fastapi.testclient import TestClient
from support.params import write_params
from support.postgres import STORES, log_url
from support.server_process import wait_until

from app.http.app import create_app
from app.monitor.entry import Context, Exchange
from app.monitor.store import Filters, Store, database_url
from app.settings import Settings

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def monitored(engine, tmp_path, url, **settings) -> TestClient:
    write_params(tmp_path / "p.json", engine.lm)
    return TestClient(create_app(Settings(home=tmp_path / "home", params=tmp_path / "p.json", log_url=url,
                                          max_tokens_limit=64, **settings), engine))


def flushed(client: TestClient) -> None:
    assert client.app.state.response_log.writer.flush(10)


def sse_done(text: str) -> dict:
    events = [e for e in text.split("\n\n") if e.startswith("event: done")]
    return json.loads(events[0].split("data: ", 1)[1])


@pytest.fixture(scope="module", params=STORES)
def client(request, engine, tmp_path_factory):
    with log_url(request.param) as url, monitored(engine, tmp_path_factory.mktemp("log"), url) as c:
        yield c


def test_every_scored_route_is_logged_under_the_id_it_answers_with(client):
    ids = {}
    r = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 4})
    assert r.headers["x-response-id"] == r.json()["response_id"]
    ids["/generate"] = r.json()["response_id"]
    r = client.post("/generate", json={"messages": CHAT, "max_tokens": 4, "stream": True})
    assert r.headers["x-response-id"] == sse_done(r.text)["response_id"]
    ids["/generate stream"] = r.headers["x-response-id"]
    r = client.post("/score", json={"prompt": PROMPT, "response": " Paris"})
    assert r.headers["x-response-id"] == r.json()["response_id"]
    ids["/score"] = r.json()["response_id"]
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT, "max_tokens": 3})
    assert r.headers["x-response-id"] == r.json()["id"]
    ids["/v1/chat/completions"] = r.json()["id"]
    r = client.post("/v1/completions", json={"model": "m", "prompt": PROMPT, "max_tokens": 3, "stream": True})
    first = json.loads(r.text.split("\n\n")[0].removeprefix("data: "))
    assert r.headers["x-response-id"] == first["id"]
    ids["/v1/completions"] = first["id"]
    flushed(client)
    log = client.app.state.response_log
    for route, rid in ids.items():
        row = log.store.get(rid)
        assert row is not None, route
        assert row["route"] == route.split()[0] and row["latency_s"] > 0
        assert row["model"] == client.app.state.engine.lm.model_id
        assert row["quadrant"] in ("Q1", "Q2", "Q3", "Q4") and row["calibration"] == "p.json"
        assert row["prompt"] is None and len(row["prompt_hash"]) == 64  # text only with HALLUWATCH_LOG_TEXT
    assert log.store.get(ids["/generate stream"])["prompt_format"] == "messages"
    assert log.store.get(ids["/score"])["response_tokens"] >= 2
    assert log.store.get(ids["/v1/completions"])["response_tokens"] == 3
    health = client.get("/health").json()["log"]
    assert health["written"] >= 5 and health["dropped"] == 0
    assert 'halluwatch_log_written_total' in client.get("/metrics").text


def test_summary_and_paged_responses(client):
    for i in range(6):
        client.post("/generate", json={"prompt": f"{PROMPT} {i}", "max_tokens": 2})
    flushed(client)
    total = client.app.state.response_log.store.count()
    s = client.get("/monitor/summary", params={"window": "1h", "bucket": "15m"}).json()
    assert s["count"] == total and len(s["buckets"]) == 4 and sum(b["count"] for b in s["buckets"]) == total
    assert sum(q["count"] for q in s["quadrants"].values()) == total
    drift = s["drift"]["p.json"]  # the calibration in effect: its window's values, too few to measure yet
    assert drift["risk"]["n_live"] == sum(r["risk"] is not None for r in client.app.state.response_log.store.rows(
        Filters(), ["risk"])) and "reason" in drift["risk"]
    seen, cursor = [], None
    while True:
        page = client.get("/monitor/responses", params={"limit": 4, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["responses"]) <= 4
        seen += page["responses"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert len({r["response_id"] for r in seen}) == total
    only = client.get("/monitor/responses", params={"route": "/score"}).json()["responses"]
    assert only and all(r["route"] == "/score" for r in only)


@pytest.mark.parametrize("path,params,field", [
    ("/monitor/summary", {"window": "1 hour"}, "window"),
    ("/monitor/summary", {"window": "400d"}, "window"),
    ("/monitor/summary", {"window": "1h", "bucket": "2h"}, "bucket"),
    ("/monitor/summary", {"window": "7d", "bucket": "1s"}, "bucket"),
    ("/monitor/responses", {"quadrant": "Q5"}, "quadrant"),
    ("/monitor/responses", {"risk_above": "high"}, "risk_above"),
    ("/monitor/responses", {"risk_above": "2"}, "risk_above"),
    ("/monitor/responses", {"flagged": "maybe"}, "flagged"),
    ("/monitor/responses", {"since": "yesterday"}, "since"),
    ("/monitor/responses", {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
    ("/monitor/responses", {"limit": "100000"}, "limit"),
    ("/monitor/responses", {"cursor": "garbage"}, "cursor"),
    ("/monitor/responses", {"colour": "red"}, "colour"),
])
def test_bad_windows_and_filters_are_422_naming_the_field(client, path, params, field):
    r = client.get(path, params=params)
    assert r.status_code == 422, r.text
    assert field in [d["loc"][-1] for d in r.json()["detail"]]


def test_feedback_labels_relabels_and_refuses(client):
    rid = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 2}).json()["response_id"]
    r = client.post("/feedback", json={"response_id": rid, "label": "hallucinated"})  # right away: may be queued
    assert r.status_code == 200 and r.json()["relabelled"] is False
    r = client.post("/feedback", json={"response_id": rid, "label": "correct", "note": "checked"}).json()
    assert r["relabelled"] is True and r["previous"] == {"label": "hallucinated", "note": None}
    labelled = client.get("/monitor/responses", params={"labelled": "true"}).json()["responses"]
    assert [(x["response_id"], x["label"], x["note"]) for x in labelled] == [(rid, "correct", "checked")]
    assert client.post("/feedback", json={"response_id": "resp-nope", "label": "correct"}).status_code == 404
    for bad, field in (({"response_id": rid, "label": "wrong"}, "label"), ({"label": "correct"}, "response_id"),
                       ({"response_id": rid, "label": "correct", "note": "x" * 3000}, "note")):
        r = client.post("/feedback", json=bad)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field]


def test_text_kept_with_log_text_and_nothing_logged_when_off(engine, tmp_path):
    with monitored(engine, tmp_path / "a", None, log_text=True) as c:
        rid = c.post("/generate", json={"prompt": PROMPT, "max_tokens": 3}).json()["response_id"]
        flushed(c)
        row = c.app.state.response_log.store.get(rid)
        assert row["prompt"] == PROMPT and row["response"] and row["prompt_format"] == "raw"
    with monitored(engine, tmp_path / "b", None, log=False) as c:
        r = c.post("/generate", json={"prompt": PROMPT, "max_tokens": 3})
        assert r.status_code == 200 and r.headers["x-response-id"] == r.json()["response_id"]
        assert c.get("/health").json()["log"] is None
        assert c.get("/monitor/summary").status_code == 404
        assert c.post("/feedback", json={"response_id": r.json()["response_id"], "label": "correct"}).status_code == 404
        assert "halluwatch_log_dropped_total 0.0" in c.get("/metrics").text
        assert not (tmp_path / "b" / "home" / "state" / "responses.sqlite3").exists()


def test_a_second_lifespan_logs_again(engine, tmp_path):
    app = monitored(engine, tmp_path, None).app
    ids = []
    for _ in range(2):  # the first lifespan's shutdown closed the log; the second starts it again
        with TestClient(app) as c:
            ids.append(c.post("/generate", json={"prompt": PROMPT, "max_tokens": 2}).json()["response_id"])
            flushed(c)
    assert all(app.state.response_log.store.get(rid) for rid in ids)
    assert app.state.response_log.counts()["written"] == 2


@pytest.mark.parametrize("kind", STORES)
def test_size_retention_prunes_the_oldest_and_says_so(engine, tmp_path, kind):
    context = Context(replica="old", model="m", model_fingerprint="f" * 16, flag_risk=0.5, keep_text=False,
                      salt=b"s" * 32)
    body = {"text": "old", "usage": {"prompt_tokens": 3, "completion_tokens": 1}, "scores": {}, "quadrant": None,
            "risk": None}
    with log_url(kind) as url:
        old = Store(database_url(url, tmp_path / "home" / "state"))
        old.insert([context.row(Exchange("/generate", f"p{i}", "raw", response_id=f"old-{i:05d}"), body,
                                now=time.time() - 3600 + i) for i in range(2000)])
        limit_mb = old.size() / 2 / 2**20
        old.close()
        with monitored(engine, tmp_path, url, log_max_mb=limit_mb) as c:
            log = c.app.state.response_log
            wait_until(lambda: log.writer.pruned > 0, 30, "the first prune")
            assert c.get("/health").json()["log"]["pruned"] == log.writer.pruned > 0
            assert f"halluwatch_log_pruned_total {float(log.writer.pruned)}" in c.get("/metrics").text
            assert log.store.size() <= limit_mb * 2**20 and log.store.get("old-01999") is not None
            assert log.store.get("old-00000") is None


def test_monitor_and_feedback_need_the_api_key(engine, tmp_path):
    with monitored(engine, tmp_path, None, api_key="k3y") as c:
        for method, path in (("get", "/monitor/summary"), ("get", "/monitor/responses"), ("post", "/feedback")):
            assert getattr(c, method)(path).status_code == 401
        auth = {"Authorization": "Bearer k3y"}
        assert c.get("/monitor/summary", headers=auth).status_code == 200
        assert c.get("/monitor/responses", headers=auth).status_code == 200


def test_an_unreachable_postgresql_log_stops_the_app_with_a_clear_error(engine, tmp_path):
    from app.monitor.responselog import LogUnavailable

    with pytest.raises(LogUnavailable, match="cannot open the response log") as e:
        create_app(Settings(home=tmp_path, log_url="postgresql://u:pw@127.0.0.1:1/db"), engine)
    assert "pw@" not in str(e.value)

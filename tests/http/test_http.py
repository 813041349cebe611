"""POST /generate (JSON and SSE), GET /health and /model, and every bad input of the issue."""

import json

import pytest
from fastapi.testclient import TestClient

from app.http.app import create_app
from app.settings import Settings
from signals.response import top_k_mean
from support.halting import halt_cases
from support.params import other_model, params_for
from support.token_text import text_of_tokens

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def params_dir(tmp_path_factory, engine):
    d = tmp_path_factory.mktemp("params")
    base = params_for(engine.lm)
    (d / "old.json").write_text(json.dumps({**base, "created_utc": "2026-01-01T00:00:00Z", "tau_pri": 99.0}))
    (d / "new.json").write_text(json.dumps({**base, "created_utc": "2026-06-01T00:00:00Z"}))
    (d / "other.json").write_text(json.dumps({**base, "model_fingerprint": other_model(engine.lm),
                                              "created_utc": "2027-01-01"}))
    (d / "broken.json").write_text("{not json")
    return d


@pytest.fixture(scope="module")
def client(engine, params_dir):
    settings = Settings(params_dir=params_dir, max_tokens_limit=64, default_max_tokens=16)
    with TestClient(create_app(settings, engine)) as c:
        yield c


def _sse(text: str) -> list:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_json_response(client):
    r = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 12, "include_trace": True, "top_logprobs": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    trace = body["trace"]
    assert body["finish_reason"] in ("eos", "length")
    assert body["usage"]["completion_tokens"] == len(trace) <= 12
    assert body["usage"]["prompt_tokens"] > 0
    assert body["text"] == "".join(t["text"] for t in trace)
    assert body["scores"]["hbar_s"] == pytest.approx(top_k_mean([t["hbar_s"] for t in trace]))
    assert body["scores"]["pri"] == pytest.approx(top_k_mean([t["pri"] for t in trace]))
    for t in trace:
        tops = t["top_logprobs"]
        assert len(tops) == 3
        assert [x["logprob"] for x in tops] == sorted((x["logprob"] for x in tops), reverse=True)
        assert tops[0]["token_id"] == t["token_id"] and tops[0]["logprob"] == t["logprob"]
    q = body["quadrant"]
    assert q["params"] == "new.json" and (q["tau_hbar"], q["tau_pri"]) == (1.0, 4.0)
    hbar_flag = body["scores"]["hbar_s"] <= 1.0
    pri_flag = body["scores"]["pri"] >= 4.0
    assert q["name"] == {(False, False): "Q1", (True, True): "Q2", (False, True): "Q3", (True, False): "Q4"}[
        (hbar_flag, pri_flag)]
    assert body["quadrant_reason"] is None
    assert body["timing"]["ttft_s"] > 0


def test_sse_stream_matches_json(client):
    req = {"prompt": PROMPT, "max_tokens": 10}
    plain = client.post("/generate", json={**req, "include_trace": True}).json()
    r = client.post("/generate", json={**req, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    tokens = [d for e, d in events if e == "token"]
    assert [e for e, _ in events] == ["token"] * len(tokens) + ["done"]
    assert tokens == [{k: v for k, v in t.items()} for t in plain["trace"]]
    done = events[-1][1]
    assert "trace" not in done
    for key in ("text", "finish_reason", "usage", "scores", "quadrant"):
        assert done[key] == plain[key]


def test_chat_messages_and_template(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    a = client.post("/generate", json={"messages": msgs[1:], "max_tokens": 4}).json()
    b = client.post("/generate", json={"prompt": "Hi", "chat_template": True, "max_tokens": 4}).json()
    c = client.post("/generate", json={"prompt": "Hi", "max_tokens": 4}).json()
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"] and a["text"] == b["text"]
    assert b["usage"]["cached_tokens"] == b["usage"]["prompt_tokens"] - 1  # the same prompt: from the cache
    assert c["usage"]["prompt_tokens"] < a["usage"]["prompt_tokens"]  # raw prompt, no template
    r = client.post("/generate", json={"messages": msgs, "max_tokens": 4})
    assert r.status_code == 200


def test_halt_on_pfail(client):
    r = client.post("/generate", json={"prompt": PROMPT, "halt_on_pfail": True, "pfail_cutoff": 1e-9,
                                       "include_trace": True})
    body = r.json()
    assert body["finish_reason"] == "pfail"
    assert body["usage"]["completion_tokens"] == 0 and body["text"] == ""
    assert len(body["trace"]) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_halt_on_pfail_at_the_first_step_over_the_cutoff(client, stream):
    """Cutoffs from a first run's per-step P_fail: one between two steps halts exactly at the later
    step (scored, its token not appended); one equal to a step's P_fail does not halt there (>)."""
    req = {"prompt": PROMPT, "max_tokens": 24}
    full = client.post("/generate", json={**req, "include_trace": True}).json()
    steps = full["trace"]
    for cutoff, at in halt_cases([t["pfail"] for t in steps]):
        halted = {**req, "halt_on_pfail": True, "pfail_cutoff": cutoff}
        if stream:
            events = _sse(client.post("/generate", json={**halted, "stream": True}).text)
            trace, body = [d for e, d in events if e == "token"], events[-1][1]
            assert events[-1][0] == "done"
        else:
            body = client.post("/generate", json={**halted, "include_trace": True}).json()
            trace = body["trace"]
        if at is None:  # no step above the cutoff: the run is the full one
            assert body["finish_reason"] == full["finish_reason"] and body["text"] == full["text"]
            assert [t["token_id"] for t in trace] == [t["token_id"] for t in steps]
            continue
        assert body["finish_reason"] == "pfail", (cutoff, at, body)
        assert [(t["token_id"], t["pfail"]) for t in trace] == [(t["token_id"], t["pfail"]) for t in steps[:at + 1]]
        assert trace[-1]["text"] == "" and body["usage"]["completion_tokens"] == at
        assert body["text"] == "".join(t["text"] for t in steps[:at])


def test_health_and_model(client, engine):
    health = client.get("/health").json()
    assert set(health.pop("log")) == {"written", "dropped", "pruned", "queued"}
    assert health == {"status": "ok", "model_loaded": True, "params_loaded": True}
    m = client.get("/model").json()
    assert m["id"] == engine.lm.model_id and m["layers"] == 4 and m["family"] == "llama"
    assert m["params"]["path"].endswith("new.json") and m["dtype"] == "float32"


def test_no_params_gives_null_quadrant_with_reason(engine, tmp_path):
    with TestClient(create_app(Settings(params_dir=tmp_path), engine)) as c:
        body = c.post("/generate", json={"prompt": PROMPT, "max_tokens": 2}).json()
        assert body["quadrant"] is None and "no calibrated params" in body["quadrant_reason"]
        assert c.get("/health").json()["params_loaded"] is False


def _assert_names(r, field, status=422):
    assert r.status_code == status, r.text
    assert field in json.dumps(r.json()["detail"]), r.text


@pytest.mark.parametrize("body,field", [
    ({"prompt": ""}, "prompt"),
    ({}, "messages"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "messages"),
    ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "a", "max_tokens": 65}, "max_tokens"),
    ({"prompt": "a", "top_logprobs": 21}, "top_logprobs"),
    ({"prompt": "a", "halt_on_pfail": True, "pfail_cutoff": 1.5}, "pfail_cutoff"),
    ({"prompt": "a", "temperature": 0.7}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ({"prompt": "word " * 600, "max_tokens": 8}, "prompt"),
])
def test_bad_input_is_422_naming_the_field(client, body, field):
    _assert_names(client.post("/generate", json=body), field)


def test_prompt_plus_max_tokens_beyond_context(client, engine):
    """A prompt that fits the context alone but not with max_tokens is refused (422 naming the
    prompt); one that fills it exactly together with max_tokens is generated."""
    lm = engine.lm
    ctx, max_tokens = lm.context_length, 4
    assert ctx == 512  # the tiny model's max_position_embeddings

    def count(text):
        return len(lm.tokenizer.encode(text))

    over = text_of_tokens(count, ctx - max_tokens + 1)
    r = client.post("/generate", json={"prompt": over, "max_tokens": max_tokens})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "prompt"]
    assert f"{ctx - max_tokens + 1} tokens" in error["msg"] and f"max_tokens={max_tokens}" in error["msg"]
    assert f"context of {ctx} tokens" in error["msg"]
    at = text_of_tokens(count, ctx - max_tokens)
    r = client.post("/generate", json={"prompt": at, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == ctx - max_tokens
    assert 1 <= r.json()["usage"]["completion_tokens"] <= max_tokens


def test_body_too_large_is_413(client):
    r = client.post("/generate", content=b'{"prompt": "' + b"a" * 1_100_000 + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]


def test_malformed_json_is_422(client):
    r = client.post("/generate", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_trace_schema_matches_the_engine_record():
    from app.engine import StepRecord
    from app.http.schemas import TraceStep

    record = StepRecord(1, "a", -0.1, [], *([0.0] * 9))
    assert set(TraceStep.model_fields) == set(record.as_dict())

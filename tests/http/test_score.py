"""POST /score: teacher-forced scores equal /generate's on the model's own output."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from support.engines import running_engine

from adapters import decode
from app.engine import core
from app.http.app import create_app
from app.settings import Settings

FIELDS = ("logprob", "delta_mu", "delta_sigma", "hbar_s", "surprise", "delta_h", "pri", "pfail")


def _client(engine, tmp_path):
    return TestClient(create_app(Settings(params_dir=tmp_path, state_dir=tmp_path / "state"), engine))


def _assert_same(gen: dict, scored: dict):
    assert [t["token_id"] for t in scored["trace"]] == [t["token_id"] for t in gen["trace"]]
    for key in FIELDS:
        np.testing.assert_allclose([t[key] for t in scored["trace"]], [t[key] for t in gen["trace"]],
                                   rtol=1e-4, atol=1e-5, err_msg=key)
    for key in ("hbar_s", "pri", "pfail_max"):
        assert scored["scores"][key] == pytest.approx(gen["scores"][key], rel=1e-4, abs=1e-6)
    for a, b in zip(scored["trace"], gen["trace"]):
        assert [x["token_id"] for x in a["top_logprobs"]] == [x["token_id"] for x in b["top_logprobs"]]
    assert scored["text"] == gen["text"]


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    with running_engine(tiny_model_path("qwen2")) as e:
        yield e


def test_perturbed_response_scores_higher_surprise(tiny, tmp_path):
    with _client(tiny, tmp_path) as c:
        gen = c.post("/generate", json={"prompt": "The river", "max_tokens": 10}).json()
        own = c.post("/score", json={"prompt": "The river", "response": gen["text"], "include_trace": True}).json()
        words = gen["text"].split(" ")
        bent = " ".join(words[:-3] + ["zebra", "1987", "quantum"])
        other = c.post("/score", json={"prompt": "The river", "response": bent, "include_trace": True}).json()
        assert other["scores"] != own["scores"]
        assert max(t["surprise"] for t in other["trace"]) > max(t["surprise"] for t in own["trace"])
        assert other["scores"]["pri"] > own["scores"]["pri"]


@pytest.mark.parametrize("body,field", [
    ({"prompt": "a", "response": ""}, "response"),
    ({"prompt": "a"}, "response"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}], "response": "c"}, "messages"),
    ({"response": "c"}, "messages"),
    ({"prompt": "a", "response": "word " * 600}, "prompt"),
])
def test_bad_input(tiny, tmp_path, body, field):
    with _client(tiny, tmp_path) as c:
        r = c.post("/score", json=body)
        assert r.status_code == 422 and field in r.text, r.text


@pytest.fixture(scope="module")
def default_engine():
    with running_engine("default", precision="auto") as e:
        yield e


@pytest.mark.parametrize("case,host_chunk", [("eos", decode.HOST_CHUNK), ("length", decode.HOST_CHUNK), ("eos", 3),
                                             ("eos", None)],
                         ids=["eos", "length", "eos-host-chunks-of-3", "eos-softmax-on-device"])
def test_score_equals_generate_on_own_output(default_engine, tmp_path, case, host_chunk, monkeypatch):
    # The embedded model, whose outputs are real text (a random model's byte soup does not re-tokenize
    # to the same ids, and /score takes text). On a CPU both make the log-softmax on the host, /score
    # `host_chunk` positions at a time; with None, both make it on the device (as on a GPU).
    if host_chunk is None:
        monkeypatch.setattr(core, "reductions_on_host", lambda: False)
    else:
        monkeypatch.setattr(decode, "HOST_CHUNK", host_chunk)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = {"messages": msgs} if case == "eos" else {"prompt": "The three primary colours are"}
    with _client(default_engine, tmp_path) as c:
        gen = c.post("/generate", json={**prompt, "max_tokens": 24 if case == "eos" else 8,
                                        "include_trace": True, "top_logprobs": 2}).json()
        assert gen["finish_reason"] == case
        scored = c.post("/score", json={**prompt, "response": gen["text"], "end_with_eos": case == "eos",
                                        "include_trace": True, "top_logprobs": 2})
        assert scored.status_code == 200, scored.text
        _assert_same(gen, scored.json())
        assert scored.json()["usage"]["response_tokens"] == len(gen["trace"])

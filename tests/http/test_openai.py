"""The OpenAI-compatible endpoints on a real uvicorn server, driven by the official `openai` client.

Logprobs, text and `risk` are checked against /generate's own trace for the same prompt.
"""

import dataclasses

import httpx
import openai
import pytest
from support.halting import halt_cases
from support.live_server import live_server as serve
from support.params import write_params
from support.spy import EngineSpy, check_cancelled_by_the_disconnect, hang_up_mid_json_request
from support.token_text import text_of_tokens
from openai import OpenAI

from app.engine import EngineBusy, Finished, GenerationJob, StepRecord
from app.http.openai import routes as openai_routes
from app.http.app import create_app
from app.settings import Settings

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
TOP = 3


# --- a real server over the app, wired as create_app will be -------------------------------------------

def build_app(engine, tmp_path_factory, **settings):
    params_dir = tmp_path_factory.mktemp("params")
    write_params(params_dir / "p.json", engine.lm)
    app = create_app(Settings(home=tmp_path_factory.mktemp("home"), params_dir=params_dir,
                              max_tokens_limit=256, default_max_tokens=16, **settings), engine)
    return app


@pytest.fixture(scope="module")
def app(engine, tmp_path_factory):
    return build_app(engine, tmp_path_factory)


@pytest.fixture(scope="module")
def base(app):
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(base):
    with httpx.Client(base_url=base, timeout=60) as c:
        yield c


def generate(http, **body) -> dict:
    r = http.post("/generate", json={"include_trace": True, "top_logprobs": TOP, **body})
    assert r.status_code == 200, r.text
    return r.json()


def content_steps(gen: dict) -> list:
    """The trace steps that are content tokens (not the EOS step)."""
    return gen["trace"][:-1] if gen["finish_reason"] == "eos" else gen["trace"]


def risk_of(obj) -> dict:
    return obj.model_extra["risk"]


FINISH = {"eos": "stop", "length": "length", "pfail": "stop"}


# --- stop strings and held-back text, step by step (no model) -----------------------------------------

def _rec(token_id: int, text: str) -> StepRecord:
    values = {f.name: 0.0 for f in dataclasses.fields(StepRecord)}
    return StepRecord(**{**values, "token_id": token_id, "text": text, "logprob": -1.0, "top_logprobs": []})


@pytest.mark.parametrize("texts,stops,reason,want,finish", [
    # "lo" could start "o wo": held back, then cut inside it; " wor" and later tokens never go out
    (["Hel", "lo", " wor", "ld"], ["o wo"], "length", [("Hel", 1), ("l", 1)], ("stop", "stop_sequence")),
    # a held-back start that never completes goes out at the end
    (["ab", "c"], ["cd"], "length", [("ab", 1), ("c", 1)], ("length", "length")),
    # the stop string inside one token: the text before it, and the token with it
    (["xSTOPy", "z"], ["STOP", "zz"], "length", [("x", 1)], ("stop", "stop_sequence")),
    # the stop string first: nothing at all
    (["STOP", "a"], ["STOP"], "length", [], ("stop", "stop_sequence")),
    # the EOS step (id 2) is scored but not a content token
    (["a", ""], [], "eos", [("a", 1)], ("stop", "eos")),
    # an incomplete character at the end (text_tail) goes out, with no token of its own
    (["a", ""], [], "length", [("a", 1), ("", 1), ("\ufffd", 0)], ("length", "length")),
])
def test_run_releases_text_at_token_boundaries(texts, stops, reason, want, finish):
    """`finish`: (OpenAI's finish_reason, risk.finish_reason)."""
    job = GenerationJob([1], 10)
    run = openai_routes.Run(job, frozenset({2}), stops, None, "no params", False)
    pieces = []
    for i, text in enumerate(texts):
        token = 2 if reason == "eos" and i == len(texts) - 1 else 10 + i
        if (p := run.add(_rec(token, text))) is not None:
            pieces.append(p)
    tail = "\ufffd" if want and want[-1] == ("\ufffd", 0) else ""
    if (p := run.finish(Finished(reason, 1, 0.1, None, text_tail=tail))) is not None:
        pieces.append(p)
    assert [(p.text, len(p.spans)) for p in pieces] == want
    text = "".join(p.text for p in pieces)
    assert not any(s in text for s in stops)
    assert (run.finish_reason, run.risk(run.body())["finish_reason"]) == finish


# --- /v1/models ----------------------------------------------------------------------------------------

def test_models(client, engine):
    models = client.models.list().data
    assert [(m.id, m.object, m.owned_by) for m in models] == [(engine.lm.model_id, "model", "halluwatch")]
    assert client.models.retrieve(engine.lm.model_id).id == engine.lm.model_id
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found"


# --- chat ----------------------------------------------------------------------------------------------

def _check_chat_logprobs(content: list, steps: list) -> None:
    assert len(content) == len(steps)
    for entry, step in zip(content, steps):
        assert entry.logprob == step["logprob"]
        tops = entry.top_logprobs
        assert [(t.token, t.logprob) for t in tops] == [(t["token"], t["logprob"]) for t in step["top_logprobs"]]
        assert len(tops) == TOP
        assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        if step["top_logprobs"][0]["token_id"] == step["token_id"]:  # greedy: the sampled token is the top one
            assert (tops[0].token, tops[0].logprob, tops[0].bytes) == (entry.token, entry.logprob, entry.bytes)


def test_chat_matches_generate(client, http):
    gen = generate(http, messages=CHAT, max_tokens=12)
    r = client.chat.completions.create(model="anything", messages=CHAT, max_tokens=12, logprobs=True,
                                       top_logprobs=TOP, user="u", frequency_penalty=0, presence_penalty=0,
                                       extra_body={"some_future_field": 1})
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content == gen["text"]
    assert choice.finish_reason == FINISH[gen["finish_reason"]]
    steps = content_steps(gen)
    _check_chat_logprobs(choice.logprobs.content, steps)
    # the bytes of the tokens join up to the text (tokens may hold part of a UTF-8 character)
    raw = bytes(b for entry in choice.logprobs.content for b in entry.bytes)
    assert raw.decode("utf-8", errors="replace") == gen["text"]
    u = gen["usage"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        u["prompt_tokens"], u["completion_tokens"], u["prompt_tokens"] + u["completion_tokens"])
    risk = risk_of(r)
    assert risk["scores"] == gen["scores"] and risk["quadrant"] == gen["quadrant"] and risk["quadrant"] is not None
    assert risk["quadrant_reason"] is None and risk["calibrated"] is True
    assert risk["finish_reason"] == gen["finish_reason"]


def test_a_repeated_prompt_is_not_prefilled_again(client):
    chat = [{"role": "user", "content": "Say something about caches, please."}]
    first, again = (client.chat.completions.create(model="m", messages=chat, max_tokens=8) for _ in range(2))
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1  # all but the last
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens - 1
    assert again.choices[0].message.content == first.choices[0].message.content
    scores = [{k: v for k, v in risk_of(r)["scores"].items() if isinstance(v, float)} for r in (first, again)]
    assert scores[0] and scores[1] == pytest.approx(scores[0], rel=1e-4, abs=1e-5)


def test_chat_without_logprobs_has_null_logprobs(client):
    r = client.chat.completions.create(model="m", messages=CHAT, max_completion_tokens=3)
    assert r.choices[0].logprobs is None
    assert r.usage.completion_tokens <= 3


def test_chat_stream_matches_generate(client, http):
    gen = generate(http, messages=CHAT, max_tokens=12)
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, max_tokens=12, logprobs=True,
                                                 top_logprobs=TOP, stream=True,
                                                 stream_options={"include_usage": True}))
    usage_chunk, final, first = chunks[-1], chunks[-2], chunks[0]
    assert all(c.object == "chat.completion.chunk" and c.id == first.id for c in chunks)
    assert first.choices[0].delta.role == "assistant"
    # include_usage: a last chunk with usage and no choices; the others carry usage null
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == gen["usage"]["completion_tokens"]
    assert usage_chunk.usage.prompt_tokens == gen["usage"]["prompt_tokens"]
    assert all(c.usage is None for c in chunks[:-1])
    body = chunks[1:-2]
    assert all(c.choices[0].finish_reason is None for c in body)
    assert final.choices[0].finish_reason == FINISH[gen["finish_reason"]] and not final.choices[0].delta.content
    assert "".join(c.choices[0].delta.content for c in body) == gen["text"]
    # every chunk carries the logprobs and per-token risk of its own tokens
    content, hbar, pri = [], [], []
    for c in body:
        lp = c.choices[0].logprobs.content
        risk = risk_of(c)
        assert len(risk["hbar_s"]) == len(risk["pri"]) == len(lp) >= 1
        content += lp
        hbar += risk["hbar_s"]
        pri += risk["pri"]
    steps = content_steps(gen)
    _check_chat_logprobs(content, steps)
    assert hbar == [s["hbar_s"] for s in steps] and pri == [s["pri"] for s in steps]
    # the last chunks carry the response-level risk, identical to /generate's
    for c in (final, usage_chunk):
        risk = risk_of(c)
        assert risk["scores"] == gen["scores"] and risk["quadrant"] == gen["quadrant"]
        assert risk["calibrated"] is True


# --- completions (legacy) ------------------------------------------------------------------------------

def _check_legacy(lp: dict, steps: list, text: str) -> None:
    assert lp["tokens"] == [s["top_logprobs"][0]["token"] for s in steps]  # greedy: token = top one
    assert lp["token_logprobs"] == [s["logprob"] for s in steps]
    for top, s in zip(lp["top_logprobs"], steps):
        want = {}
        for t in s["top_logprobs"]:
            want.setdefault(t["token"], t["logprob"])
        assert top == want and len(top) <= TOP
    offsets = [0]
    for s in steps[:-1]:
        offsets.append(offsets[-1] + len(s["text"]))
    assert lp["text_offset"] == offsets
    assert "".join(s["text"] for s in steps) == text


def test_completions_match_generate(client, http):
    gen = generate(http, prompt=PROMPT, max_tokens=12)
    r = client.completions.create(model="m", prompt=[PROMPT], max_tokens=12, logprobs=TOP)
    choice = r.choices[0]
    assert r.object == "text_completion" and choice.text == gen["text"]
    assert choice.finish_reason == FINISH[gen["finish_reason"]]
    _check_legacy(choice.logprobs.model_dump(), content_steps(gen), gen["text"])
    assert r.usage.completion_tokens == gen["usage"]["completion_tokens"]
    risk = risk_of(r)
    assert risk["scores"] == gen["scores"] and risk["quadrant"] == gen["quadrant"]


def test_completions_stream(client, http):
    gen = generate(http, prompt=PROMPT, max_tokens=12)
    chunks = list(client.completions.create(model="m", prompt=PROMPT, max_tokens=12, logprobs=TOP, stream=True))
    final, body = chunks[-1], chunks[:-1]
    assert final.choices[0].finish_reason == FINISH[gen["finish_reason"]] and final.choices[0].text == ""
    assert "".join(c.choices[0].text for c in body) == gen["text"]
    merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for c in body:
        lp = c.choices[0].logprobs.model_dump()
        assert len(risk_of(c)["hbar_s"]) == len(lp["tokens"])
        for k in merged:
            merged[k] += lp[k]
    _check_legacy(merged, content_steps(gen), gen["text"])
    assert risk_of(final)["scores"] == gen["scores"] and risk_of(final)["quadrant"] == gen["quadrant"]


# --- stop strings --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full(http):
    gen = generate(http, prompt=PROMPT, max_tokens=16)
    assert len(gen["text"]) >= 8, gen["text"]
    return gen


def _completion(client, stream: bool, **kw):
    """(text, finish_reason, final risk) of a completion, streamed or not."""
    if not stream:
        r = client.completions.create(model="m", prompt=PROMPT, max_tokens=16, **kw)
        return r.choices[0].text, r.choices[0].finish_reason, risk_of(r)
    chunks = list(client.completions.create(model="m", prompt=PROMPT, max_tokens=16, stream=True, **kw))
    return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason, risk_of(chunks[-1])


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_ends_the_text_and_is_never_sent(client, full, stream):
    full_text = full["text"]
    k = len(full_text) // 2
    stop = full_text[k:k + 3]
    cut = full_text.find(stop)
    text, finish, risk = _completion(client, stream, stop=[stop, "\x00never"])
    # the streamed deltas add up to exactly the text before the stop string: no part of it was sent
    assert text == full_text[:cut] and stop not in text
    assert finish == "stop" and risk["finish_reason"] == "stop_sequence"


@pytest.mark.parametrize("stream", [False, True])
def test_held_back_prefix_of_a_stop_string_is_released_at_the_end(client, full, stream):
    stop = full["text"][-2:] + "\x00"  # the text ends with its start, but it never completes
    text, finish, risk = _completion(client, stream, stop=stop)
    assert text == full["text"] and finish == FINISH[full["finish_reason"]]
    assert risk["finish_reason"] == full["finish_reason"] and risk["scores"] == full["scores"]


def test_chat_stream_stop_string(client, http):
    full = generate(http, messages=CHAT, max_tokens=16)["text"]
    assert len(full) >= 6, full
    stop = full[len(full) // 2:len(full) // 2 + 2]
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, max_tokens=16, stop=stop, stream=True,
                                                 logprobs=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full[:full.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


# --- sampling, limits, P_fail --------------------------------------------------------------------------

def test_temperature_with_seed_is_deterministic_and_uncalibrated(client):
    def sample(seed):
        return client.chat.completions.create(model="m", messages=CHAT, max_tokens=10, temperature=1.5,
                                              top_p=0.95, seed=seed)
    a, b = sample(7), sample(7)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert risk_of(a)["scores"] == risk_of(b)["scores"]
    assert risk_of(a)["calibrated"] is False and "greedy" in risk_of(a)["calibrated_reason"]
    greedy = client.chat.completions.create(model="m", messages=CHAT, max_tokens=10, temperature=0)
    assert risk_of(greedy)["calibrated"] is True


def test_pfail_halt_is_stop_and_said_in_risk(client):
    r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=8,
                                       extra_body={"halt_on_pfail": True, "pfail_cutoff": 1e-9})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == ""
    assert risk_of(r)["finish_reason"] == "pfail" and r.usage.completion_tokens == 0


def test_pfail_halt_lands_at_the_first_step_over_the_cutoff(client, http):
    """Cutoffs from /generate's per-step P_fail for the same chat: the /v1 response halts at the
    first step whose P_fail is greater (risk.finish_reason "pfail"), or runs on (equal is not greater)."""
    full = generate(http, messages=CHAT, max_tokens=24)
    steps = full["trace"]
    for cutoff, at in halt_cases([t["pfail"] for t in steps]):
        r = client.chat.completions.create(model="m", messages=CHAT, max_tokens=24,
                                           extra_body={"halt_on_pfail": True, "pfail_cutoff": cutoff})
        if at is None:
            assert risk_of(r)["finish_reason"] == full["finish_reason"]
            assert r.choices[0].message.content == full["text"]
            continue
        assert r.choices[0].finish_reason == "stop" and risk_of(r)["finish_reason"] == "pfail"
        assert r.usage.completion_tokens == at
        assert r.choices[0].message.content == "".join(t["text"] for t in steps[:at])
        assert risk_of(r)["scores"]["pfail_max"] == steps[at]["pfail"]


# --- errors in OpenAI's shape --------------------------------------------------------------------------

def _error(e) -> dict:
    body = e.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("kwargs,param", [
    ({"n": 2}, "n"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"max_tokens": 257}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"temperature": 3}, "temperature"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
])
def test_bad_chat_requests_are_400_naming_the_param(client, kwargs, param):
    kwargs = {"model": "m", "messages": CHAT, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**kwargs)
    err = _error(e.value)
    assert e.value.status_code == 400 and err["type"] == "invalid_request_error" and err["param"] == param
    assert param.split("[")[0] in err["message"]


def test_bad_completion_requests(client, http):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="m", prompt=["one", "two"])
    assert _error(e.value)["param"] == "prompt"
    r = http.post("/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/v1/completions", json={"model": "m"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = http.post("/v1/completions", json={"prompt": "word " * 600, "max_tokens": 8})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    # /generate keeps FastAPI's own shape
    assert "detail" in http.post("/generate", json={"prompt": ""}).json()


def _chat_tokens(lm, content: str) -> int:
    """Tokens of one user message rendered with the chat template, as /v1/chat/completions encodes it."""
    tok = lm.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return len(tok.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_prompt_plus_max_tokens_beyond_context(http, engine, path):
    """A prompt that fits alone but not with max_tokens: 400 context_length_exceeded naming the
    prompt's param; one that fills the context exactly with max_tokens: answered."""
    lm = engine.lm
    ctx, max_tokens = lm.context_length, 4
    assert ctx == 512
    chat = path.endswith("chat/completions")
    param = "messages" if chat else "prompt"

    def body(n_tokens: int) -> dict:
        count = (lambda t: _chat_tokens(lm, t)) if chat else (lambda t: len(lm.tokenizer.encode(t)))
        text = text_of_tokens(count, n_tokens)
        prompt = {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
        return {"model": "m", "max_tokens": max_tokens, **prompt}

    r = http.post(path, json=body(ctx - max_tokens + 1))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, "context_length_exceeded")
    assert f"context of {ctx} tokens" in err["message"]
    r = http.post(path, json=body(ctx - max_tokens))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == ctx - max_tokens
    assert 1 <= r.json()["usage"]["completion_tokens"] <= max_tokens


def test_empty_messages_is_400_naming_messages(http):
    r = http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"]) == ("invalid_request_error", "messages") and "messages" in err["message"]


def test_queue_full_is_503_in_openai_shape(client, engine, monkeypatch):
    def busy(job):
        raise EngineBusy("engine queue is full (16 waiting)")
    monkeypatch.setattr(engine, "submit", busy)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="m", messages=CHAT, max_tokens=2, stream=stream)
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "1"
        assert _error(e.value)["type"] == "server_error"


def test_too_many_streams_is_429_in_openai_shape(client, app, monkeypatch):
    # as if max_streams streams were running (starlette's State cannot be monkeypatched back)
    monkeypatch.setattr(app.state.settings, "max_streams", app.state.streams)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="m", messages=CHAT, max_tokens=2, stream=True)
    assert e.value.status_code == 429 and _error(e.value)["code"] == "rate_limit_exceeded"
    assert client.chat.completions.create(model="m", messages=CHAT, max_tokens=2).usage.completion_tokens <= 2


def test_request_timeout(engine, tmp_path_factory):
    with serve(build_app(engine, tmp_path_factory, request_timeout_s=0.05)) as url:
        slow = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        kwargs = {"model": "m", "prompt": PROMPT, "max_tokens": 256, "stop": "\x00never"}
        with pytest.raises(openai.APIStatusError) as e:
            slow.completions.create(**kwargs)
        assert e.value.status_code == 504 and _error(e.value)["code"] == "timeout"
        with pytest.raises(openai.APIError) as e:  # mid-stream: a `data: {"error": …}` line
            list(slow.completions.create(**kwargs, stream=True))
        assert "request_timeout_s" in e.value.message


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": PROMPT, "stream": True}),
    ("/v1/chat/completions", {"messages": CHAT, "stream": True}),
    ("/v1/chat/completions", {"messages": CHAT}),
])
def test_client_disconnect_cancels_the_job(base, engine, monkeypatch, path, body):
    spy = EngineSpy().install(monkeypatch)
    body = {"model": "m", "max_tokens": 256, "stop": "\x00never", **body}
    if body.get("stream"):
        with httpx.Client(base_url=base, timeout=60) as c, c.stream("POST", path, json=body) as r:
            assert r.status_code == 200
            (job,) = spy.wait_for_jobs(1)
            assert job.first_step.wait(60), "the job never started"
            lines = r.iter_lines()  # held: dropping a half-read iterator already closes the connection
            next(lines)
            spy.mark("closing")  # leaving the block hangs up mid-stream
    else:
        hang_up_mid_json_request(base, path, body, spy)
    check_cancelled_by_the_disconnect(spy.only(), spy, 256)

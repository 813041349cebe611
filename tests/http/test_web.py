"""The live web view, end to end: a real uvicorn server and headless Chromium driven by Playwright.

Needs Debian's `chromium` (/usr/bin/chromium) and the `playwright` Python package; the browser
Playwright would download is never used. In CI (CI=true) a missing browser fails the run instead
of skipping this module. Screenshots go to $HALLUWATCH_TEST_OUTPUT (default: a fresh temporary
folder, printed), never into the checkout.
"""

import json
import os
import re
import tempfile
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI") == "true"
if not CHROMIUM.exists():
    if IN_CI:
        pytest.fail(f"{CHROMIUM} is missing: CI must install chromium (see .ci/run)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium)", allow_module_level=True)
if IN_CI:
    import playwright.sync_api as sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
sync_api.expect.set_options(timeout=30_000)  # a slow CI machine: be patient before failing

from support.live_server import live_server as serve  # noqa: E402
from support.params import write_params  # noqa: E402

from app.calibration.params import Served  # noqa: E402
from app.http.app import create_app, serve_params  # noqa: E402
from app.settings import Settings  # noqa: E402

SHOTS = Path(os.environ.get("HALLUWATCH_TEST_OUTPUT") or tempfile.mkdtemp(prefix="halluwatch-screens-"))
PROMPT = "The capital of France is"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
API_KEY = "s3cret-key"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, engine) -> Path:
    """Params (τ_hbar 1.0, τ_pri 4.0, so quadrants are shown) and a small HaluEval-style QA file."""
    tmp = tmp_path_factory.mktemp("web")
    (tmp / "params").mkdir()
    write_params(tmp / "params" / "p.json", engine.lm)
    (tmp / "data").mkdir()
    (tmp / "data" / "qa.jsonl").write_text("".join(json.dumps({  # enough for a job that runs a while
        "knowledge": f"Fact {i}: the capital of land {i} is city {i}.", "question": f"What is the capital of land {i}?",
        "right_answer": f"city {i}", "hallucinated_answer": f"city {i + 1}"}) + "\n" for i in range(500)))
    return tmp


def make_app(engine, tmp: Path, state: str = "state", **settings):
    """The app as `halluwatch serve` builds it, with the web view (each app its own jobs database)."""
    app = create_app(Settings(home=tmp, params_dir=tmp / "params", state_dir=tmp / state, **settings), engine)
    return app


@pytest.fixture(scope="module")
def server(engine, workdir):
    """(base URL, app) of the server most tests use: no API key."""
    app = make_app(engine, workdir)
    with serve(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page; fails the test on any JavaScript error or any request that leaves the server."""
    base, _ = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    pg = context.new_page()
    errors, outside = [], []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("request", lambda r: None if r.url.startswith(base) else outside.append(r.url))
    pg.set_default_timeout(TIMEOUT_MS)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors: {errors}"
    assert not outside, f"requests outside the server: {outside}"


def _generate_json(base: str, max_tokens: int, halt: bool = False) -> dict:
    """The same request the page sends, as one JSON body (greedy decoding is deterministic)."""
    body = {"prompt": PROMPT, "chat_template": True, "halt_on_pfail": halt, "max_tokens": max_tokens,
            "include_trace": True}
    r = httpx.post(f"{base}/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_idle(base: str, timeout: float = 120) -> None:
    """Cancel any active calibration job and wait until none is queued or running."""
    deadline = time.monotonic() + timeout
    while active := [j for j in httpx.get(f"{base}/calibrate").json() if j["status"] in ("queued", "running")]:
        for j in active:
            httpx.delete(f"{base}/calibrate/{j['id']}")
        assert time.monotonic() < deadline, f"calibration jobs still active: {active}"
        time.sleep(0.2)


def _check_done(pg, expected: dict) -> None:
    """The page shows what /generate returned: one .tok span per step, usage, quadrant and finish reason."""
    pg.wait_for_selector("body[data-state='done']")
    completion = int(pg.inner_text("#completion-tokens"))
    assert completion == expected["usage"]["completion_tokens"]
    spans = pg.locator("#tokens .tok")
    # every step is a span; the P_fail-halted step is shown but not counted in completion_tokens
    assert spans.count() == completion + (expected["finish_reason"] == "pfail") == len(expected["trace"])
    if expected["finish_reason"] == "eos":
        assert spans.last.inner_text() == "⏎EOS"
    elif expected["finish_reason"] == "pfail":
        assert spans.last.inner_text() == "⊘halt"
    if expected["quadrant"] is None:
        assert pg.inner_text("#quadrant-name") == "no calibrated params"
        assert pg.inner_text("#quadrant-label") == expected["quadrant_reason"]
    else:
        assert pg.inner_text("#quadrant-name") == expected["quadrant"]["name"]
        assert expected["quadrant"]["label"] in pg.inner_text("#quadrant-label")
    assert pg.inner_text("#finish-reason").startswith(expected["finish_reason"])
    if expected["risk"] is None:
        assert pg.inner_text("#risk") == "— (no detector selected in the params)"
    else:
        assert pg.inner_text("#risk").startswith(f"{expected['risk']['probability']:.3f} P(hallucinated)")
        assert expected["risk"]["calibration"] in pg.inner_text("#risk")  # which calibration assessed it
    title = spans.first.get_attribute("title")  # the tooltip holds the full trace entry
    assert "PRI" in title and "ℏₛ" in title and "logprob" in title


def test_generate_streams_tokens_and_results(page, server):
    base, _ = server
    page.goto(base + "/")
    page.wait_for_selector("#model-info .model-id")
    assert "τ_PRI 4.00" in page.inner_text("#model-info")
    tasks = [c["task"] for c in httpx.get(base + "/model").json()["calibrations"]]
    shown = page.inner_text("#model-info .calibrations")  # every loaded calibration, by its traffic
    traffic = {"answers": "own chat answers", None: "unnamed traffic"}
    assert shown == "calibrations: " + ", ".join(traffic.get(t, f"HaluEval {t} judgment") for t in tasks)
    assert "τ = 4.00" in page.inner_text("#legend")  # the colour scale comes with numbers
    page.fill("#prompt", PROMPT)
    page.fill("#max-tokens", "12")
    page.click("#generate")
    _check_done(page, _generate_json(base, 12))
    assert page.inner_text("#status").startswith("Done")
    page.select_option("#color-by", "hbar_s")  # recolour by ℏₛ: the legend follows
    assert "τ = 1.00" in page.inner_text("#legend")
    page.focus("#tokens .tok >> nth=1")  # the detail panel shows the focused token's trace entry
    assert page.inner_text("#token-detail").startswith("step 2:")
    page.screenshot(path=str(SHOTS / "web_view.png"), full_page=True)

    page.click("#tab-calibrate")
    page.wait_for_selector("#jobs tbody td:has-text('No calibration jobs yet.')")
    assert page.is_hidden("#panel-generate")
    page.screenshot(path=str(SHOTS / "web_calibration.png"), full_page=True)


def test_keyboard_ctrl_enter_generates(page, server):
    base, _ = server
    page.goto(base + "/")
    page.wait_for_selector("#model-info .model-id")
    page.focus("#prompt")
    page.keyboard.type(PROMPT)
    page.fill("#max-tokens", "8")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    _check_done(page, _generate_json(base, 8))
    page.focus("#tokens .tok >> nth=0")  # tokens: one tab stop, arrow keys move, detail follows focus
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.step") == "1"
    assert page.inner_text("#token-detail").startswith("step 2:")


def test_halt_on_pfail_marks_the_halted_step(page, server):
    base, app = server
    settings = app.state.settings
    cutoff, settings.pfail_cutoff = settings.pfail_cutoff, 1e-9  # every step's P_fail is above it
    try:
        page.goto(base + "/")
        page.wait_for_selector("#model-info .model-id")
        page.fill("#prompt", PROMPT)
        page.fill("#max-tokens", "6")
        page.check("#halt-pfail")
        page.click("#generate")
        expected = _generate_json(base, 6, halt=True)
        assert expected["finish_reason"] == "pfail"
        _check_done(page, expected)
    finally:
        settings.pfail_cutoff = cutoff


def test_uncalibrated_scale_and_no_quadrant(page, server):
    base, app = server
    saved = app.state.served
    serve_params(app, Served(None, "no calibrated params (test)", None))
    try:
        page.goto(base + "/")
        page.wait_for_selector("#model-info .model-id")
        assert "uncalibrated" in page.inner_text("#model-info")
        assert "uncalibrated" in page.inner_text("#legend") and "≥ 3.00" in page.inner_text("#legend")
        page.fill("#prompt", PROMPT)
        page.fill("#max-tokens", "12")
        page.click("#generate")
        _check_done(page, _generate_json(base, 12))
        assert page.locator("#tokens .tok.flag").count() == 0  # no thresholds, nothing flagged
        page.screenshot(path=str(SHOTS / "web_view_uncalibrated.png"), full_page=True)
    finally:
        serve_params(app, saved)


def test_errors_are_readable(page, server):
    base, _ = server
    page.goto(base + "/")
    page.wait_for_selector("#model-info .model-id")
    page.fill("#prompt", PROMPT)
    page.fill("#max-tokens", "100000")  # over the server limit: a 422 naming the field
    page.click("#generate")
    page.wait_for_selector("body[data-state='error']")
    assert "422 max_tokens:" in page.inner_text("#status")


def test_api_key_is_asked_once_and_kept_in_session_storage(browser, engine, workdir):
    app = make_app(engine, workdir, state="state_key", api_key=API_KEY)  # the server's own key check
    with serve(app) as base:
        assert httpx.get(f"{base}/model").status_code == 401
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(base + "/")  # the page itself is public; its first API call answers 401
            page.wait_for_selector("#key-dialog[open]")
            assert page.get_attribute("#api-key", "type") == "password"
            page.fill("#api-key", API_KEY)
            page.keyboard.press("Enter")
            page.wait_for_selector("#model-info .model-id")
            page.fill("#prompt", PROMPT)
            page.fill("#max-tokens", "4")
            page.click("#generate")
            page.wait_for_selector("body[data-state='done']")
            page.click("#tab-calibrate")
            page.wait_for_selector("#jobs tbody td:has-text('No calibration jobs yet.')")
            assert page.evaluate("sessionStorage.getItem('halluwatch.apiKey')") == API_KEY
            assert page.evaluate("localStorage.length") == 0
            assert not page.is_visible("#key-dialog")  # asked once: every later call sent the key
            assert not errors, errors
        finally:
            context.close()


@pytest.fixture
def restore_state(server):
    """Afterwards: no calibration job left running, and the params in effect as they were."""
    base, app = server
    saved = app.state.served
    yield
    _wait_idle(base)
    serve_params(app, saved)


@pytest.mark.slow
def test_calibration_jobs_start_conflict_cancel_activate(page, server, restore_state):
    base, _ = server
    expect = sync_api.expect
    page.goto(base + "/")
    page.click("#tab-calibrate")
    page.wait_for_selector("#jobs tbody td")
    status = page.locator("#status")
    page.fill("#cal-dataset", "missing.jsonl")
    page.click("#cal-start")
    expect(status).to_contain_text("Could not start calibration: 400 dataset: 'missing.jsonl' is not a file")
    page.fill("#cal-dataset", "qa.jsonl")
    page.fill("#cal-n", "2000")  # more samples than the data holds
    page.click("#cal-start")
    expect(status).to_contain_text("422 n: n=2000 is too large")
    page.fill("#cal-n", "400")
    page.fill("#cal-max-tokens", "32")
    page.click("#cal-start")
    expect(status).to_contain_text(re.compile(r"Calibration job \w+ started"))
    page.click("#cal-start")
    expect(status).to_contain_text("409 a calibration job is already queued or running")
    row = page.locator("#jobs tbody tr").first
    expect(row.locator(".status-running, .status-queued")).to_be_visible()
    page.wait_for_function("document.querySelector('#jobs progress')?.value > 0")  # progress refreshes by itself
    page.screenshot(path=str(SHOTS / "web_calibration_running.png"), full_page=True)
    row.get_by_role("button", name=re.compile("Cancel job")).click()
    expect(row.locator(".status-cancelled")).to_be_visible()
    expect(status).to_contain_text("cancelled")
    expect(row.get_by_role("button")).to_have_count(0)

    # a short job that succeeds and activates its thresholds: the table and the model line follow
    page.fill("#cal-n", "12")
    page.fill("#cal-max-tokens", "3")
    page.check("#cal-activate")
    page.click("#cal-start")
    # `row` is the newest job: this one; fitting and the report take a few seconds after the last sample
    expect(row.locator(".status-succeeded")).to_be_visible(timeout=TIMEOUT_MS)
    expect(row).to_contain_text("AUROC")
    expect(status).to_contain_text("succeeded")
    tau = httpx.get(f"{base}/model").json()["params"]["tau_pri"]
    expect(page.locator("#model-info")).to_contain_text(f"τ_PRI {tau:.2f}")


def test_monitor_tab_shows_the_log_and_labels_a_flagged_response(page, server):
    from app.monitor.entry import Exchange

    base, app = server
    log = app.state.response_log
    httpx.post(f"{base}/generate", json={"prompt": PROMPT, "max_tokens": 4}, timeout=120)
    risky = {"text": "Lyon.", "finish_reason": "eos", "usage": {"prompt_tokens": 5, "completion_tokens": 2},
             "scores": {"hbar_s": 2.5, "pri": 5.0}, "quadrant": {"name": "Q2", "params": "p.json"},
             "risk": {"probability": 0.93, "detector": "probe_prompt_end", "in_distribution": True,
                      "calibration": "p.json"}}
    log.record(Exchange("/generate", PROMPT, "raw", response_id="resp-flagged-web"), risky)
    assert log.writer.flush(10)
    page.goto(base + "/")
    page.click("#tab-monitor")
    row = page.locator("#mon-flagged tbody tr[data-response-id='resp-flagged-web']")
    sync_api.expect(row).to_contain_text("0.930")
    assert page.is_hidden("#panel-generate") and page.is_visible("#mon-chart")
    total = log.store.count()
    assert page.inner_text("#mon-totals").startswith(f"{total} responses")
    assert "Q2" in page.inner_text("#mon-quadrant-list")
    drift = page.inner_text("#mon-drift")  # per calibration in effect (these test params hold no reference)
    assert drift.startswith("p.json · risk: ") and "no drift reference" in drift
    page.screenshot(path=str(SHOTS / "web_monitor.png"), full_page=True)
    page.click("button[aria-label='Label resp-flagged-web hallucinated']")
    sync_api.expect(row.locator(".mon-label")).to_have_text("hallucinated")
    assert log.store.get("resp-flagged-web")["label"] == "hallucinated"
    page.click("button[aria-label='Label resp-flagged-web correct']")
    sync_api.expect(page.locator("#status")).to_contain_text("(was hallucinated)")
    assert log.store.get("resp-flagged-web")["label"] == "correct"

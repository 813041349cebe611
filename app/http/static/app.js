"use strict";
// halluwatch live view: streams POST /generate (SSE read over fetch), colours every step by its risk,
// charts PRI and ℏₛ against the calibrated thresholds, and manages calibration jobs.

const $ = (id) => document.getElementById(id);
const KEY_STORE = "halluwatch.apiKey";  // sessionStorage only: gone when the tab closes
const FALLBACK_MAX = 3;                 // uncalibrated colour scale: PRI 0..3 and ℏₛ 0..3, no flags
const ACTIVE = new Set(["queued", "running"]);
const SERIES = { pri: { name: "PRI", color: "#7c3aed" }, hbar_s: { name: "ℏₛ", color: "#0e7490" } };
const DETAIL_HINT = "Hover or focus a token (Tab, then the arrow keys) to see its full trace entry.\n"
  + "Markers: ⏎EOS end of text · ⊘halt stopped by P_fail · … a step whose text completes in a later one.";
const TRACE_SHOWN = new Set(["token_id", "logprob", "pri", "hbar_s", "pfail", "surprise", "delta_h", "delta_mu",
                             "delta_sigma"]);
const SCORES_SHOWN = new Set(["hbar_s", "pri", "pfail_max"]);
const FINISH = { eos: "the model ended its answer", length: "reached max tokens",
                 pfail: "halted: P_fail above the cutoff" };

let params = null;         // {tau_hbar, tau_pri, path, ...} from GET /model, or null (uncalibrated)
let stopIds = new Set();   // the model's EOS / end-of-turn token ids
let steps = [];            // trace entries of the response on screen
let controller = null;     // AbortController of the running generation
let pollTimer = null;      // calibration jobs refresh
let chartQueued = false;
const activeJobs = new Set();

// ---------- helpers ----------

// A number for display: 3 decimals, or the raw value if it is not finite.
function fmt(v, digits = 3) {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : String(v ?? "—");
}

// document.createElement with a class and text content.
function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text != null) e.textContent = text;
  return e;
}

// The aria-live status line; tone is "", "error" or "ok".
function setStatus(text, tone = "") {
  Object.assign($("status"), { textContent: text, className: `status ${tone}` });
}

// Generation state on <body data-state>: idle | running | done | error (tests wait on it).
function setState(state) {
  document.body.dataset.state = state;
  $("generate").disabled = state === "running";
  $("stop").disabled = state !== "running";
}

// ---------- API access ----------

let keyPrompt = null;  // one pending key dialog, shared by concurrent 401 answers

// Show the key dialog; resolves with the key typed, or "" if it was dismissed.
function askKey(message) {
  if (!keyPrompt) {
    keyPrompt = new Promise((resolve) => {
      const dlg = $("key-dialog");
      $("key-message").textContent = message;
      $("api-key").value = "";
      dlg.returnValue = "";
      dlg.addEventListener("close", () => {
        keyPrompt = null;
        resolve(dlg.returnValue === "ok" ? $("api-key").value.trim() : "");
      }, { once: true });
      dlg.showModal();
    });
  }
  return keyPrompt;
}

// fetch() that sends the API key if we have one; on 401 it asks for the key and retries once.
async function api(path, options = {}) {
  const send = (key) => {
    const headers = { ...(options.headers || {}) };
    if (key) headers.Authorization = `Bearer ${key}`;
    return fetch(path, { ...options, headers });
  };
  const used = sessionStorage.getItem(KEY_STORE);
  let res = await send(used);
  if (res.status !== 401) return res;
  let key = sessionStorage.getItem(KEY_STORE);
  if (key === used) {  // nobody has entered a new key since we sent this request
    key = await askKey(used ? "The server rejected that key. Enter the API key again."
                            : "The server requires an API key. It is kept in this tab's session storage only.");
  }
  if (!key) return res;
  sessionStorage.setItem(KEY_STORE, key);
  res = await send(key);
  if (res.status === 401) sessionStorage.removeItem(KEY_STORE);
  return res;
}

// A readable message from a non-2xx answer: {"detail": "..."} or a 422 list of {loc, msg}.
async function errorText(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  const d = body && body.detail;
  let msg = res.statusText || "request failed";
  if (Array.isArray(d)) {
    msg = d.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${e.msg}`).join("; ");
  } else if (d != null) {
    msg = typeof d === "string" ? d : JSON.stringify(d);
  }
  return `${res.status} ${msg}`;
}

// ---------- model and colour scale ----------

// GET /model: the model id, its stop tokens and the thresholds that fix the colour scale.
async function loadModel() {
  const box = $("model-info");
  const res = await api("model");
  if (!res.ok) { box.textContent = `model: ${await errorText(res)}`; return; }
  const m = await res.json();
  params = m.params;
  stopIds = new Set(m.stop_token_ids || []);
  box.replaceChildren(el("span", "model-id", m.id), el("span", "muted", ` · ${m.dtype} · ${m.layers} layers · `));
  if (params) {
    const names = (m.calibrations || []).map((c) => trafficOf(c.task));
    box.append(el("span", "", `τ_ℏ ${fmt(params.tau_hbar, 2)} · τ_PRI ${fmt(params.tau_pri, 2)} · `),
               el("span", "calibrations", `calibrations: ${names.join(", ")}`));
    box.title = (m.calibrations || []).map((c) => `${trafficOf(c.task)}: ${c.path}`).join("\n")
      + `\n(default: ${params.path}, ${m.params_source || "unknown source"})`;
  } else {
    box.append(el("span", "badge warn", "uncalibrated"));
    box.title = m.params_reason || "no calibrated params";
  }
  recolour();
  drawChart();
}

// What traffic a calibration was fitted on, from its task.
function trafficOf(task) {
  if (!task) return "unnamed traffic";
  return task === "answers" ? "own chat answers" : `HaluEval ${task} judgment`;
}

// The scale of a signal: 0..2τ with the threshold τ in the middle, or 0..3 without params.
function scale(signal) {
  const tau = params ? (signal === "pri" ? params.tau_pri : params.tau_hbar) : null;
  return tau > 0 ? { hi: 2 * tau, tau } : { hi: FALLBACK_MAX, tau: null };
}

// Risk in 0..1 (0.5 at the threshold). ℏₛ is inverted: LOW ℏₛ is risky.
function risk(signal, v) {
  const t = Math.min(1, Math.max(0, v / scale(signal).hi));
  return signal === "pri" ? t : 1 - t;
}

// Does this value flag? PRI ≥ τ_pri, ℏₛ ≤ τ_hbar; never without params.
function flags(signal, v) {
  const { tau } = scale(signal);
  return tau != null && (signal === "pri" ? v >= tau : v <= tau);
}

// Sequential risk colour: light blue (safe) → amber (threshold) → red (risky).
function colour(r) {
  const stops = [[224, 242, 254], [254, 240, 199], [248, 150, 150]];
  const [a, b, t] = r < 0.5 ? [stops[0], stops[1], r * 2] : [stops[1], stops[2], (r - 0.5) * 2];
  return `rgb(${a.map((x, i) => Math.round(x + (b[i] - x) * t)).join(",")})`;
}

// The legend: gradient bar with the numbers at both ends and at the threshold.
function drawLegend() {
  const signal = $("color-by").value, s = scale(signal), name = SERIES[signal].name;
  const mid = s.tau != null ? `τ = ${fmt(s.tau, 2)}` : fmt(s.hi / 2, 2);
  const ends = signal === "pri" ? ["0", `≥ ${fmt(s.hi, 2)}`] : [`≥ ${fmt(s.hi, 2)}`, "0"];
  const ticks = el("div", "ticks");
  ticks.append(el("span", "", ends[0]), el("span", "", mid), el("span", "", ends[1]));
  const rule = s.tau == null ? "uncalibrated: fixed 0–3 scale, nothing flagged"
    : `flagged (underlined, ⚑) when ${name} ${signal === "pri" ? "≥" : "≤"} ${fmt(s.tau, 2)}`;
  const bar = el("div", "bar");
  bar.style.background = `linear-gradient(to right, ${colour(0)}, ${colour(0.5)}, ${colour(1)})`;
  const scaleBox = el("div", "scale");
  scaleBox.append(bar, ticks);
  $("legend").replaceChildren(el("span", "legend-name", `${name}:`), el("span", "muted", "safe"), scaleBox,
    el("span", "muted", "risky"), el("span", s.tau == null ? "badge warn" : "legend-rule", rule));
}

// ---------- tokens ----------

// "name value · …" for the numeric fields of `obj` not in `shown` (fields the server adds later show up too).
function others(obj, shown) {
  return Object.entries(obj).filter(([k, v]) => typeof v === "number" && !shown.has(k))
    .map(([k, v]) => `${k} ${fmt(v)}`).join(" · ");
}

// Multi-line description of one trace entry (tooltip and detail panel).
function describe(step, i) {
  const flag = (signal) => (flags(signal, step[signal]) ? "  ⚑ flags" : "");
  const tops = (step.top_logprobs || []).map((t) => `${JSON.stringify(t.token)} ${fmt(t.logprob)}`).join(", ");
  return [`step ${i + 1}: ${JSON.stringify(step.text)} (token id ${step.token_id})`,
    `PRI ${fmt(step.pri)}${flag("pri")}   ℏₛ ${fmt(step.hbar_s)}${flag("hbar_s")}   P_fail ${fmt(step.pfail)}`,
    `logprob ${fmt(step.logprob)}   surprise ${fmt(step.surprise)}   Δh ${fmt(step.delta_h)}`,
    `Δμ ${fmt(step.delta_mu)}   Δσ ${fmt(step.delta_sigma)}`,
    ...(others(step, TRACE_SHOWN) ? [others(step, TRACE_SHOWN)] : []),
    ...(tops ? [`top: ${tops}`] : [])].join("\n");
}

// One span per step; a step with no text (EOS, P_fail halt, a split character) gets a visible marker.
function addToken(step, i) {
  const span = el("span", "tok");
  span.dataset.step = String(i);
  span.tabIndex = i === 0 ? 0 : -1;
  if (step.text === "") {
    span.classList.add("marker");
    span.textContent = stopIds.has(step.token_id) ? "⏎EOS" : "…";
  } else {
    span.textContent = step.text.replace(/\n/g, "↵\n");
  }
  paint(span, step, i);
  const box = $("tokens");
  if (i === 0) box.replaceChildren();
  box.append(span);
}

// Colour, flag and tooltip of a token span for the signal chosen in "Colour by".
function paint(span, step, i) {
  const signal = $("color-by").value;
  span.style.backgroundColor = colour(risk(signal, step[signal]));
  span.classList.toggle("flag", flags(signal, step[signal]));
  span.title = describe(step, i);
}

// Repaint every token (the signal or the thresholds changed).
function recolour() {
  document.querySelectorAll("#tokens .tok").forEach((s) => {
    const i = Number(s.dataset.step);
    paint(s, steps[i], i);
  });
  drawLegend();
}

// Show a token's trace entry in the detail panel (on hover or focus); the focused token keeps the tab stop.
function showDetail(ev) {
  const span = ev.target.closest(".tok");
  if (!span) return;
  $("token-detail").textContent = describe(steps[Number(span.dataset.step)], Number(span.dataset.step));
  if (ev.type !== "focusin") return;
  document.querySelectorAll("#tokens .tok").forEach((s) => { s.tabIndex = s === span ? 0 : -1; });
}

// Arrow keys, Home and End move focus between tokens (one tab stop for the whole response).
function tokenKeys(ev) {
  const spans = [...document.querySelectorAll("#tokens .tok")];
  const i = spans.indexOf(document.activeElement);
  if (i < 0) return;
  const j = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1,
              Home: 0, End: spans.length - 1 }[ev.key];
  if (j == null || j < 0 || j >= spans.length) return;
  ev.preventDefault();
  spans[j].focus();
}

// ---------- chart ----------

// Redraw the chart at most once per animation frame.
function scheduleChart() {
  if (!chartQueued) { chartQueued = true; requestAnimationFrame(() => { chartQueued = false; drawChart(); }); }
}

// Line chart of PRI and ℏₛ per step; the thresholds are dashed horizontal lines in the series' colours.
function drawChart() {
  const cv = $("chart"), dpr = window.devicePixelRatio || 1;
  const w = cv.clientWidth, h = cv.clientHeight;
  cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
  const g = cv.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 38, r: 62, t: 10, b: 26 }, pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const taus = params ? [params.tau_pri, params.tau_hbar] : [];
  const vals = steps.flatMap((s) => [s.pri, s.hbar_s]).filter(Number.isFinite);
  const max = Math.max(1, ...taus, ...vals) * 1.05, n = Math.max(steps.length, 2);
  const p10 = 10 ** Math.floor(Math.log10(max / 4)), f = max / 4 / p10;  // a round grid step: 1, 2, 2.5 or 5 × 10^k
  const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p10, top = Math.ceil(max / step) * step;
  const x = (i) => pad.l + (i / (n - 1)) * pw, y = (v) => pad.t + (1 - Math.max(0, v) / top) * ph;
  g.font = "11px system-ui, sans-serif"; g.lineWidth = 1; g.fillStyle = "#64748b";
  for (let v = 0; v <= top + step / 2; v += step) {  // horizontal grid with values
    g.strokeStyle = "#e2e8f0"; g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(pad.l + pw, y(v)); g.stroke();
    g.textAlign = "right"; g.fillText(String(Number(v.toFixed(3))), pad.l - 6, y(v) + 4);
  }
  g.textAlign = "center";
  const every = Math.max(1, Math.ceil(n / 10));
  for (let i = 0; i < n; i += every) g.fillText(String(i + 1), x(i), h - 8);
  if (!steps.length) { g.fillText("step", pad.l + pw / 2, pad.t + ph / 2); return; }
  for (const key of Object.keys(SERIES)) {
    const { name, color } = SERIES[key];
    const tau = params ? (key === "pri" ? params.tau_pri : params.tau_hbar) : null;
    g.strokeStyle = g.fillStyle = color;
    if (tau != null) {  // threshold line, labelled at the right edge
      g.setLineDash([5, 4]); g.beginPath(); g.moveTo(pad.l, y(tau)); g.lineTo(pad.l + pw, y(tau)); g.stroke();
      g.setLineDash([]); g.textAlign = "left"; g.fillText(`τ ${name} ${fmt(tau, 2)}`, pad.l + pw + 4, y(tau) + 4);
    }
    g.lineWidth = 2; g.beginPath();
    steps.forEach((s, i) => (i ? g.lineTo(x(i), y(s[key])) : g.moveTo(x(i), y(s[key]))));
    g.stroke(); g.lineWidth = 1;
    if (n <= 120) steps.forEach((s, i) => { g.beginPath(); g.arc(x(i), y(s[key]), 2.5, 0, 2 * Math.PI); g.fill(); });
  }
  const last = steps[steps.length - 1];
  cv.setAttribute("aria-label", `Line chart of PRI and ℏₛ over ${steps.length} steps; `
    + `last step PRI ${fmt(last.pri)}, ℏₛ ${fmt(last.hbar_s)}`);
}

// ---------- generation ----------

// Clear tokens, chart and results before a new generation.
function resetOutput() {
  steps = [];
  $("tokens").replaceChildren(el("span", "placeholder", "Waiting for the first token…"));
  $("token-detail").textContent = DETAIL_HINT;
  $("step-count").textContent = "";
  for (const id of ["quadrant-name", "risk", "finish-reason", "score-hbar", "score-pri", "score-pfail", "prompt-tokens",
    "completion-tokens", "ttft", "rate", "score-other"]) $(id).textContent = "—";
  $("quadrant-label").textContent = "";
  $("result").dataset.quadrant = "";
  drawChart();
}

// JSON.parse that also reads the bare NaN / Infinity that Python's json module writes for non-finite floats.
function parseJSON(text) {
  try { return JSON.parse(text); } catch {
    return JSON.parse(text.replace(/([:,[]\s*)(-?Infinity|NaN)(?=\s*[,}\]])/g, "$1null"));
  }
}

// Read a text/event-stream body and call onEvent(event, data) for each JSON event.
async function readSSE(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, parseJSON(data.join("\n")));
    }
  }
}

// Handle one SSE event of /generate: token, done or error.
function onEvent(event, data) {
  if (event === "token") {
    steps.push(data);
    addToken(data, steps.length - 1);
    $("step-count").textContent = `${steps.length} steps`;
    scheduleChart();
  } else if (event === "done") {
    showResult(data);
  } else if (event === "error") {
    setState("error");
    setStatus(`Generation failed: ${data.error}`, "error");
  }
}

// The response-level results of the `done` event.
function showResult(r) {
  const spans = document.querySelectorAll("#tokens .tok");
  if (r.finish_reason === "pfail" && spans.length) spans[spans.length - 1].textContent = "⊘halt";
  const q = r.quadrant, sc = r.scores;
  $("quadrant-name").textContent = q ? q.name : "no calibrated params";
  $("quadrant-label").textContent = q
    ? `${q.label} (τ_ℏ ${fmt(q.tau_hbar, 2)}, τ_PRI ${fmt(q.tau_pri, 2)}, ${q.params})`
    : r.quadrant_reason || "";
  $("result").dataset.quadrant = q ? q.name : "";
  $("risk").textContent = r.risk
    ? `${fmt(r.risk.probability, 3)} P(hallucinated), from ${r.risk.detector} of the calibration on `
      + `${trafficOf(r.risk.task)} (${r.risk.calibration})`
      + (r.risk.in_distribution === false ? " ⚠ outside that calibration's training range: not meaningful here" : "")
    : "— (no detector selected in the params)";
  $("finish-reason").textContent = `${r.finish_reason} (${FINISH[r.finish_reason] || "?"})`;
  $("score-hbar").textContent = fmt(sc.hbar_s) + (flags("hbar_s", sc.hbar_s) ? " ⚑ flags (≤ τ_ℏ)" : "");
  $("score-pri").textContent = fmt(sc.pri) + (flags("pri", sc.pri) ? " ⚑ flags (≥ τ_PRI)" : "");
  $("score-pfail").textContent = fmt(sc.pfail_max);
  $("score-other").textContent = others(sc, SCORES_SHOWN) || "—";
  $("prompt-tokens").textContent = String(r.usage.prompt_tokens);
  $("completion-tokens").textContent = String(r.usage.completion_tokens);
  $("ttft").textContent = r.timing.ttft_s == null ? "—" : `${fmt(r.timing.ttft_s, 2)} s`;
  $("rate").textContent = r.timing.tokens_per_s == null ? "—" : `${fmt(r.timing.tokens_per_s, 1)} tokens/s`;
  setState("done");
  setStatus(`Done: ${q ? q.name : "no quadrant"}, ${r.usage.completion_tokens} tokens, `
    + `finish reason ${r.finish_reason}.`, "ok");
}

// POST /generate with stream: true and render its events as they arrive.
async function generate(ev) {
  ev.preventDefault();
  if (controller) return;
  const prompt = $("prompt").value;
  if (!prompt.trim()) { setStatus("Enter a prompt first.", "error"); $("prompt").focus(); return; }
  const body = { prompt, chat_template: $("chat-template").checked, halt_on_pfail: $("halt-pfail").checked,
                 stream: true, top_logprobs: 5 };
  if ($("max-tokens").value !== "") body.max_tokens = Number($("max-tokens").value);
  resetOutput();
  controller = new AbortController();
  setState("running");
  setStatus("Generating…");
  try {
    const res = await api("generate", { method: "POST", body: JSON.stringify(body), signal: controller.signal,
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" } });
    if (!res.ok) throw new Error(await errorText(res));
    await readSSE(res.body, onEvent);
    if (document.body.dataset.state === "running") throw new Error("the stream ended without a result");
  } catch (e) {
    const stopped = e.name === "AbortError";
    setState(stopped ? "idle" : "error");
    if (stopped) setStatus(`Stopped after ${steps.length} steps.`);
    else setStatus(`Generation failed: ${e.message}`, "error");
  } finally {
    controller = null;
  }
}

// ---------- calibration jobs ----------

// "1m 05s" from seconds.
function duration(s) {
  if (s == null || !Number.isFinite(s)) return "—";
  const m = Math.floor(s / 60), r = Math.round(s % 60);
  return m ? `${m}m ${String(r).padStart(2, "0")}s` : `${r}s`;
}

// One row of the jobs table.
function jobRow(j) {
  const tr = el("tr"), rq = j.request || {}, p = j.progress || {};
  const cell = (...kids) => { const td = el("td"); td.append(...kids); tr.append(td); return td; };
  cell(el("code", "", j.id), el("div", "muted small", j.created_utc || ""));
  cell(el("span", `badge status-${j.status}`, j.status));
  cell(`${rq.task}, n=${rq.n}, ${rq.max_tokens} tokens, seed ${rq.seed}, ${rq.dataset}`
    + (rq.activate ? ", activate" : ""));
  const bar = el("progress");
  bar.max = p.total || 1; bar.value = p.done || 0;
  bar.setAttribute("aria-label", `job ${j.id} progress`);
  const eta = ACTIVE.has(j.status) ? ` · ETA ${duration(p.eta_s)}` : "";
  cell(bar, el("div", "small", `${p.done ?? 0} / ${p.total ?? "?"}${eta}`));
  const res = j.result;
  cell(res ? `AUROC ℏₛ ${fmt(res.auroc_hbar, 2)} · PRI ${fmt(res.auroc_pri, 2)} · joint ${fmt(res.auroc_joint, 2)}; `
    + `τ_ℏ ${fmt(res.tau_hbar, 2)}, τ_PRI ${fmt(res.tau_pri, 2)}` + (res.activated ? " (activated)" : "")
    : el("span", j.error ? "error-text" : "muted", j.error || "—"));
  const actions = cell();
  if (ACTIVE.has(j.status)) {
    const b = el("button", "secondary", "Cancel");
    b.type = "button";
    b.setAttribute("aria-label", `Cancel job ${j.id}`);
    b.addEventListener("click", () => cancelJob(j.id));
    actions.append(b);
  }
  return tr;
}

// GET /calibrate: render the jobs (newest first); poll every 2 s while one is queued or running.
async function loadJobs() {
  clearTimeout(pollTimer);
  const tbody = $("jobs").tBodies[0];
  const message = (cls, text) => {  // one full-width row instead of jobs
    const tr = el("tr"), td = el("td", cls, text);
    td.colSpan = 6; tr.append(td); tbody.replaceChildren(tr);
  };
  const res = await api("calibrate");
  if (!res.ok) { message("error-text", `Could not list jobs: ${await errorText(res)}`); return; }
  const jobs = await res.json();
  if (jobs.length) tbody.replaceChildren(...jobs.slice().reverse().map(jobRow));
  else message("muted", "No calibration jobs yet.");
  for (const j of jobs) {  // a job that just finished may have activated new thresholds
    if (activeJobs.has(j.id) && !ACTIVE.has(j.status)) {
      activeJobs.delete(j.id);
      setStatus(`Calibration job ${j.id} ${j.status}.`, j.status === "succeeded" ? "ok" : "error");
      if (j.result && j.result.activated) loadModel();
    } else if (ACTIVE.has(j.status)) activeJobs.add(j.id);
  }
  if (activeJobs.size) pollTimer = setTimeout(loadJobs, 2000);
}

// POST /calibrate from the form: 202 {job_id}, 409 when one is active, 400/422 on bad input.
async function startJob(ev) {
  ev.preventDefault();
  const body = { task: $("cal-task").value, dataset: $("cal-dataset").value, activate: $("cal-activate").checked };
  for (const [key, id] of [["n", "cal-n"], ["max_tokens", "cal-max-tokens"], ["seed", "cal-seed"]]) {
    if ($(id).value !== "") body[key] = Number($(id).value);
  }
  const res = await api("calibrate", { method: "POST", headers: { "Content-Type": "application/json" },
                                       body: JSON.stringify(body) });
  if (res.ok) setStatus(`Calibration job ${(await res.json()).job_id} started.`, "ok");
  else setStatus(`Could not start calibration: ${await errorText(res)}`, "error");
  loadJobs();
}

// DELETE /calibrate/{id}: the job stops after its current sample.
async function cancelJob(id) {
  const res = await api(`calibrate/${encodeURIComponent(id)}`, { method: "DELETE" });
  if (res.ok) setStatus(`Cancelling job ${id}…`);
  else setStatus(`Could not cancel job ${id}: ${await errorText(res)}`, "error");
  loadJobs();
}

// ---------- tabs and start-up ----------

// Show one tab panel (the tab ids are "tab-" + its name: generate, calibrate, monitor).
function showTab(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const t = tab.id.slice(4);
    tab.setAttribute("aria-selected", String(t === name));
    $(`panel-${t}`).hidden = t !== name;
  }
  if (name === "calibrate") loadJobs();
  if (name === "monitor") loadMonitor();  // monitor.js
}

function init() {
  $("gen-form").addEventListener("submit", generate);
  $("prompt").addEventListener("keydown", (ev) => {  // Ctrl+Enter / Cmd+Enter submits
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); $("gen-form").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("color-by").addEventListener("change", recolour);
  const tokens = $("tokens");
  tokens.addEventListener("focusin", showDetail);
  tokens.addEventListener("mouseover", showDetail);
  tokens.addEventListener("keydown", tokenKeys);
  $("tab-generate").addEventListener("click", () => showTab("generate"));
  $("tab-calibrate").addEventListener("click", () => showTab("calibrate"));
  $("tab-monitor").addEventListener("click", () => showTab("monitor"));
  $("cal-form").addEventListener("submit", startJob);
  $("cal-refresh").addEventListener("click", loadJobs);
  window.addEventListener("resize", scheduleChart);
  setState("idle");
  $("token-detail").textContent = DETAIL_HINT;
  drawLegend();
  drawChart();
  loadModel().then(loadJobs);  // one at a time, so a 401 asks for the key only once
}

init();

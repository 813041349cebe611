"use strict";
// Drift per calibration and signal: KS and PSI against its training split, or why it is not measured.
function driftText(drift) {
  const signal = (name, d) => d.reason ? `${name}: ${d.reason}`
    : `${name}: KS ${fmt(d.ks, 2)}, PSI ${fmt(d.psi, 2)} (${d.n_live} responses)`;
  return Object.entries(drift).map(([calibration, signals]) => `${calibration} · `
    + `${signal("risk", signals.risk)}; ${signal("distance", signals.probe_distance_ratio)}`).join("\n");
}

// The Monitor tab: GET /monitor/summary (risk over time, quadrant shares, drift) and the recent flagged
// responses from GET /monitor/responses, each with buttons that label it through POST /feedback.
// Uses app.js's helpers ($, el, fmt, api, errorText, setStatus).

const QUADRANT_COLOURS = { Q1: "#16a34a", Q2: "#dc2626", Q3: "#d97706", Q4: "#0e7490", none: "#94a3b8" };
const pct = (v) => (v == null ? "—" : `${(100 * v).toFixed(1)}%`);

// Risk per bucket (p50 solid, p90 dashed) over bars of the flagged share, all on 0..1.
function drawRiskChart(buckets) {
  const cv = $("mon-chart"), dpr = window.devicePixelRatio || 1, w = cv.clientWidth, h = cv.clientHeight;
  cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
  const g = cv.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 38, r: 10, t: 10, b: 26 }, pw = w - pad.l - pad.r, ph = h - pad.t - pad.b, n = buckets.length;
  const x = (i) => pad.l + ((i + 0.5) / n) * pw, y = (v) => pad.t + (1 - v) * ph;
  g.font = "11px system-ui, sans-serif"; g.fillStyle = "#64748b"; g.textAlign = "right";
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    g.strokeStyle = "#e2e8f0"; g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(pad.l + pw, y(v)); g.stroke();
    g.fillText(String(v), pad.l - 6, y(v) + 4);
  }
  g.textAlign = "center";
  const every = Math.max(1, Math.ceil(n / 8));
  buckets.forEach((b, i) => { if (i % every === 0) g.fillText(b.start.slice(5, 16).replace("T", " "), x(i), h - 8); });
  g.fillStyle = "rgba(220, 38, 38, 0.18)";
  buckets.forEach((b, i) => {
    if (b.flagged_share != null) g.fillRect(x(i) - pw / n / 2 + 1, y(b.flagged_share), pw / n - 2, y(0) - y(b.flagged_share));
  });
  for (const [key, dash] of [["p50", []], ["p90", [5, 4]]]) {
    g.strokeStyle = g.fillStyle = "#7c3aed"; g.setLineDash(dash); g.lineWidth = 2; g.beginPath();
    let open = false;
    buckets.forEach((b, i) => {
      const v = b.risk_quantiles && b.risk_quantiles[key];
      if (v == null) { open = false; return; }
      if (open) g.lineTo(x(i), y(v)); else g.moveTo(x(i), y(v));
      open = true;
    });
    g.stroke(); g.setLineDash([]); g.lineWidth = 1;
    buckets.forEach((b, i) => {  // a dot per bucket, so a lone bucket shows too
      const v = b.risk_quantiles && b.risk_quantiles[key];
      if (v != null) { g.beginPath(); g.arc(x(i), y(v), 2.5, 0, 2 * Math.PI); g.fill(); }
    });
  }
  const seen = buckets.filter((b) => b.count).length;
  cv.setAttribute("aria-label", `Risk over time: ${n} buckets, ${seen} with responses`);
}

// The quadrant bar and its legend.
function showQuadrants(quadrants, total) {
  const bar = $("mon-quadrants"), list = $("mon-quadrant-list");
  bar.replaceChildren(); list.replaceChildren();
  for (const [name, q] of Object.entries(quadrants)) {
    const share = total ? q.count / total : 0;
    if (share) {
      const part = el("span");
      Object.assign(part.style, { width: `${100 * share}%`, background: QUADRANT_COLOURS[name] });
      part.title = `${name}: ${pct(share)}`;
      bar.append(part);
    }
    const item = el("li", "", `${name} ${pct(total ? share : null)} (${q.count}; flagged ${pct(q.flagged_share)})`);
    const swatch = el("span", "swatch");
    swatch.style.background = QUADRANT_COLOURS[name];
    item.prepend(swatch);
    item.dataset.quadrant = name;
    list.append(item);
  }
  bar.setAttribute("aria-label", `Quadrant shares of ${total} responses`);
}

// POST /feedback for one row; the row's label cell shows the result.
async function label(row, id, value) {
  const res = await api("feedback", { method: "POST", headers: { "Content-Type": "application/json" },
                                      body: JSON.stringify({ response_id: id, label: value }) });
  if (!res.ok) { setStatus(`Could not label ${id}: ${await errorText(res)}`, "error"); return; }
  const body = await res.json();
  row.querySelector(".mon-label").textContent = body.label;
  setStatus(`Labelled ${id} ${body.label}` + (body.relabelled ? ` (was ${body.previous.label}).` : "."), "ok");
}

// One row of the flagged table.
function flaggedRow(r) {
  const tr = el("tr"), s = r.scores || {};
  const cell = (...kids) => { const td = el("td"); td.append(...kids); tr.append(td); return td; };
  tr.dataset.responseId = r.response_id;
  cell(el("div", "small", r.time.slice(0, 19).replace("T", " ")), el("code", "muted small", r.response_id));
  cell(r.route);
  cell(r.risk == null ? "—" : fmt(r.risk));
  cell(r.quadrant || "none");
  cell(`${fmt(s.hbar_s, 2)} · ${fmt(s.pri, 2)}`);
  cell(el("div", "mon-text small", r.response == null ? "(text not stored)" : r.response));
  const labelCell = cell(el("span", "mon-label", r.label || "unlabelled"));
  for (const value of ["hallucinated", "correct"]) {
    const b = el("button", "secondary", value === "hallucinated" ? "Hallucinated" : "Correct");
    b.type = "button";
    b.setAttribute("aria-label", `Label ${r.response_id} ${value}`);
    b.addEventListener("click", () => label(tr, r.response_id, value));
    labelCell.append(" ", b);
  }
  return tr;
}

// Load the summary and the recent flagged responses for the chosen window.
async function loadMonitor() {
  const [window_, bucket] = $("mon-window").value.split("|");
  const tbody = $("mon-flagged").tBodies[0];
  const message = (cls, text) => {
    const tr = el("tr"), td = el("td", cls, text);
    td.colSpan = 7; tr.append(td); tbody.replaceChildren(tr);
  };
  const res = await api(`monitor/summary?window=${window_}&bucket=${bucket}`);
  if (!res.ok) {
    const text = await errorText(res);
    $("mon-totals").textContent = `Could not read the log: ${text}`;
    message("error-text", text);
    return;
  }
  const s = await res.json(), q = s.risk_quantiles;
  $("mon-totals").textContent = `${s.count} responses · flagged ${pct(s.flagged_share)} · in distribution `
    + `${pct(s.in_distribution_share)} · risk median ${q ? fmt(q.p50) : "—"}, 90th percentile ${q ? fmt(q.p90) : "—"}`;
  drawRiskChart(s.buckets);
  showQuadrants(s.quadrants, s.count);
  $("mon-drift").textContent = s.drift == null ? "No calibration to compare with." : driftText(s.drift);
  const since = new Date(Date.now() - s.bucket_s * s.buckets.length * 1000).toISOString();
  const list = await api(`monitor/responses?flagged=true&limit=20&since=${encodeURIComponent(since)}`);
  if (!list.ok) { message("error-text", await errorText(list)); return; }
  const rows = (await list.json()).responses;
  if (rows.length) tbody.replaceChildren(...rows.map(flaggedRow));
  else message("muted", "No flagged responses in this window.");
}

$("mon-window").addEventListener("change", loadMonitor);
$("mon-refresh").addEventListener("click", loadMonitor);

// stetho's fleet dashboard: the pages fetch the service's JSON and update in place every
// data-refresh-ms milliseconds (no reload). Charts are Plotly.js, served by stetho itself.
"use strict";

const REFRESH_MS = Number(document.body.dataset.refreshMs) || 5000;
const COLORS = { normal: "#2f6fb0", anomalous: "#d0342c", threshold: "#d0342c", alert: "#e08a00", line: "#9aa7b4" };
const PLOT_CONFIG = { displayModeBar: false, responsive: true };

const $ = (selector, root = document) => root.querySelector(selector);

/** An element with attributes (class, text, data-*, ...) and children. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

/** A number as Python's f"{x:.4g}" writes it (the tests compare with that). */
function fmt(x) {
  if (x === null || x === undefined) return "–";
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return "0";
  const [mantissa, exp] = x.toExponential(3).split("e");
  const e = Number(exp);
  const strip = (s) => (s.includes(".") ? s.replace(/\.?0+$/, "") : s);
  if (e < -4 || e >= 4) return `${strip(mantissa)}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  return strip(x.toFixed(Math.max(0, 3 - e)));
}

/** An ISO 8601 UTC time as "YYYY-MM-DD HH:MM:SS" (what the pages show and Plotly's date axes read). */
function utc(iso) {
  if (!iso) return "–";
  return new Date(iso).toISOString().slice(0, 19).replace("T", " ");
}

const enc = encodeURIComponent;
const loginUrl = (why) => `/login?next=${enc(location.pathname + location.search)}` + (why ? `&why=${enc(why)}` : "");

/** GET a JSON endpoint; a 401 (reads protected, no valid login) goes to the login page. */
async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) {
    location.assign(loginUrl(""));
    throw new Error("not logged in");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new HttpError(response.status, body.detail || response.statusText);
  return body;
}

class HttpError extends Error {
  constructor(status, detail) {
    super(`HTTP ${status}: ${detail}`);
    this.status = status;
  }
}

/** Run `update` now and every REFRESH_MS; shows "updated hh:mm:ss", or a banner while it fails.
 *  Returns a function that runs it again at once (after a change made on the page). */
function poll(update) {
  const stamp = $("#updated"), banner = $("#banner");
  let timer = null, last = null;
  async function tick() {
    clearTimeout(timer);
    try {
      await update();
      last = new Date();
      stamp.textContent = `updated ${last.toTimeString().slice(0, 8)}`;
      stamp.classList.remove("stale");
      banner.hidden = true;
    } catch (err) {
      const reach = err instanceof HttpError ? err.message : "the service is unreachable";
      banner.textContent = `Cannot update: ${reach}. Retrying every ${REFRESH_MS / 1000} s` +
        (last ? `; the data shown are from ${last.toTimeString().slice(0, 8)}.` : ".");
      banner.hidden = false;
      stamp.classList.add("stale");
    }
    timer = setTimeout(tick, REFRESH_MS);
  }
  tick();
  return tick;
}

function badge(status) {
  return el("span", { class: `badge ${status}`, text: status });
}

function decisionCell(decision) {
  return el("td", {}, el("span", { class: `badge ${decision ? "ALARM" : "OK"}`, text: decision ? "anomalous" : "normal" }));
}

// ------------------------------------------------------------------------------------------------
// Fleet: one tile per asset, worst first.

function makeTile(asset) {
  const root = el("a", { class: "tile", href: `/assets/${enc(asset)}`, "data-asset": asset },
    el("div", { class: "tile-head" }, el("strong", { class: "name", text: asset }), el("span", { class: "status badge" })),
    el("div", { class: "machine-type muted" }),
    el("div", { class: "numbers" },
      el("span", {}, "last score ", el("b", { class: "last-score" })),
      el("span", {}, "threshold ", el("b", { class: "threshold" })),
      el("span", { class: "decision" })),
    el("div", { class: "spark" }),
    el("div", { class: "small muted" }, "last recording ", el("span", { class: "last-time" }), " UTC"),
    el("div", { class: "alerts small" }));
  return root;
}

function updateTile(root, a) {
  root.className = `tile ${a.status}`;
  const status = $(".status", root);
  status.textContent = a.status;
  status.className = `status badge ${a.status}`;
  $(".machine-type", root).textContent = a.machine_type + (a.default_mode ? ` · ${a.default_mode}` : "");
  $(".last-score", root).textContent = a.last ? fmt(a.last.score) : "–";
  $(".threshold", root).textContent = a.last ? fmt(a.last.threshold) : "–";
  $(".decision", root).textContent = a.last ? (a.last.decision ? "anomalous" : "normal") : "no verdict yet";
  $(".last-time", root).textContent = utc(a.last_recording_at);
  $(".alerts", root).textContent = a.open_alerts.length
    ? `${a.open_alerts.length} open alert${a.open_alerts.length > 1 ? "s" : ""}: ${a.open_alerts[0].message}` : "";
  const x = a.recent.map((p) => utc(p.recorded_at));
  Plotly.react($(".spark", root), [
    { x, y: a.recent.map((p) => p.score), type: "scatter", mode: "lines+markers", name: "score",
      line: { color: COLORS.line, width: 1 },
      marker: { size: 5, color: a.recent.map((p) => (p.decision ? COLORS.anomalous : COLORS.normal)) } },
    { x, y: a.recent.map((p) => p.threshold), type: "scatter", mode: "lines", name: "threshold",
      line: { color: COLORS.threshold, width: 1, dash: "dash", shape: "hv" } },
  ], {
    height: 56, margin: { l: 2, r: 2, t: 4, b: 4 }, showlegend: false,
    xaxis: { visible: false, fixedrange: true }, yaxis: { visible: false, fixedrange: true },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
  }, { ...PLOT_CONFIG, staticPlot: true });
}

function fleetPage() {
  const grid = $("#tiles"), tiles = new Map();
  poll(async () => {
    const fleet = await getJSON("/v1/fleet");
    $("#empty").hidden = fleet.length > 0;
    if (fleet.length) $("#rule-n").textContent = fleet[0].n;
    const seen = new Set();
    for (const a of fleet) {
      if (!tiles.has(a.asset)) tiles.set(a.asset, makeTile(a.asset));
      const root = tiles.get(a.asset);
      grid.append(root); // moves an existing tile: the grid follows the fleet's order, worst first
      updateTile(root, a);
      seen.add(a.asset);
    }
    for (const [name, root] of tiles) if (!seen.has(name)) { root.remove(); tiles.delete(name); }
  });
}

// ------------------------------------------------------------------------------------------------
// Asset: trend over a period, open alerts (acknowledge), recent recordings.

function assetPage() {
  const asset = document.body.dataset.asset;
  const period = $("#period"), modeSelect = $("#mode");
  let mode = null;

  async function acknowledge(id, button) {
    button.disabled = true;
    const response = await fetch(`/v1/alerts/${id}/ack?by=dashboard`, { method: "POST", credentials: "same-origin" });
    if (response.status === 401) {
      location.assign(loginUrl("Acknowledging an alert needs the service's API token."));
      return;
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      button.disabled = false;
      alert(`Could not acknowledge alert ${id}: ${body.detail || response.statusText}`);
      return;
    }
    refresh();
  }

  const refresh = poll(async () => {
    const since = period.value === "all" ? "" : `&since=${enc(new Date(Date.now() - Number(period.value) * 3600e3).toISOString())}`;
    const [fleet, alerts, verdicts] = await Promise.all([
      getJSON("/v1/fleet?spark=1"), getJSON(`/v1/alerts?asset=${enc(asset)}`),
      getJSON(`/v1/assets/${enc(asset)}/verdicts?limit=10000${since}`)]);
    const me = fleet.find((a) => a.asset === asset);
    if (!me) throw new HttpError(404, `no asset '${asset}' has been scored`);
    const status = $("#status");
    status.textContent = me.status;
    status.className = `badge ${me.status}`;
    $("#facts").textContent = `${me.machine_type} · default score mode ${me.default_mode} · last recording ` +
      `${utc(me.last_recording_at)} UTC`;

    const modes = [...new Set(verdicts.map((v) => v.score_mode))].sort();
    if (mode === null || !modes.includes(mode)) mode = modes.includes(me.default_mode) ? me.default_mode : modes[0] || null;
    if ([...modeSelect.options].map((o) => o.value).join() !== modes.join()) {
      modeSelect.replaceChildren(...modes.map((m) => el("option", { value: m, text: m === me.default_mode ? `${m} (default)` : m })));
    }
    modeSelect.value = mode || "";

    const rows = verdicts.filter((v) => v.score_mode === mode); // newest first
    const byRecording = new Map(rows.map((v) => [v.recording_id, v]));
    const mine = alerts.filter((a) => a.asset === asset && a.score_mode === mode);
    const marks = mine.map((a) => [a, a.recording_ids.map((id) => byRecording.get(id)).filter(Boolean)
      .sort((p, q) => (p.recorded_at < q.recorded_at ? 1 : -1))[0]]).filter(([, v]) => v);
    const oldestFirst = [...rows].reverse(), x = oldestFirst.map((v) => utc(v.recorded_at));
    Plotly.react($("#trend"), [
      { x, y: oldestFirst.map((v) => v.score), type: "scatter", mode: "lines+markers", name: "score",
        line: { color: COLORS.line, width: 1 },
        marker: { size: 7, color: oldestFirst.map((v) => (v.decision ? COLORS.anomalous : COLORS.normal)) },
        customdata: oldestFirst.map((v) => v.recording_id),
        hovertemplate: "%{x}<br>score %{y:.4g}<br>recording %{customdata}<extra></extra>" },
      { x, y: oldestFirst.map((v) => v.threshold), type: "scatter", mode: "lines", name: "threshold",
        line: { color: COLORS.threshold, width: 1.5, dash: "dash", shape: "hv" } },
      { x: marks.map(([, v]) => utc(v.recorded_at)), y: marks.map(([, v]) => v.score), type: "scatter", mode: "markers",
        name: "alert", text: marks.map(([a]) => `alert ${a.id} (${a.rule})${a.acknowledged_at ? ", acknowledged" : ""}`),
        hovertemplate: "%{text}<extra></extra>",
        marker: { symbol: "triangle-down", size: 14, color: COLORS.alert, line: { color: "#fff", width: 1 } } },
    ], {
      height: 320, margin: { l: 56, r: 12, t: 10, b: 40 }, legend: { orientation: "h", y: -0.2 },
      xaxis: { title: { text: "recorded (UTC)" } }, yaxis: { title: { text: `score (${mode})` } },
      paper_bgcolor: "rgba(0,0,0,0)",
    }, PLOT_CONFIG);

    const open = alerts.filter((a) => a.asset === asset && !a.acknowledged_at);
    $("#alerts-box").hidden = open.length === 0;
    $("#alerts tbody").replaceChildren(...open.map((a) => {
      const button = el("button", { class: "ack", "data-alert": String(a.id), text: "Acknowledge" });
      button.addEventListener("click", () => acknowledge(a.id, button));
      // the button first: on a phone the table scrolls sideways and the message may be out of view
      return el("tr", { "data-alert": String(a.id) }, el("td", {}, button), el("td", { text: a.score_mode }),
        el("td", { text: utc(a.raised_at) }), el("td", { text: a.rule }), el("td", { text: a.message }));
    }));
    $("#recordings tbody").replaceChildren(...rows.slice(0, 100).map((v) => el("tr", { "data-recording": String(v.recording_id) },
      el("td", { text: utc(v.recorded_at) }), el("td", { class: "num", text: fmt(v.score) }),
      el("td", { class: "num", text: fmt(v.threshold) }), decisionCell(v.decision),
      el("td", {}, el("a", { href: `/recordings/${v.recording_id}`, text: v.path.split(/[\\/]/).pop() })))));
  });
  period.addEventListener("change", () => refresh());
  modeSelect.addEventListener("change", () => { mode = modeSelect.value; refresh(); });
}

// ------------------------------------------------------------------------------------------------
// Recording: spectrograms (fetched once), audio, verdicts per mode (polled: alerts may change).

function heatmap(div, spec, z, diverging) {
  const limit = diverging ? Math.max(1, ...z.map((row) => Math.max(...row.map(Math.abs)))) : null;
  // Rows are mel bands, drawn evenly spaced (as the model sees them) and labelled with their centre
  // frequency: plotted at their Hz values, the low bands would be squeezed into a sliver.
  const bands = spec.mel_hz.map((_, i) => i);
  const ticks = [0, 0.2, 0.4, 0.6, 0.8, 1].map((f) => Math.round(f * (bands.length - 1)));
  const hz = (f) => (f >= 1000 ? `${(f / 1000).toFixed(1)} k` : `${Math.round(f)}`);
  Plotly.react(div, [{
    type: "heatmap", x: spec.times_s, y: bands, z, transpose: true, // z is time-major: z[t][mel]
    colorscale: diverging ? "RdBu" : "Viridis", // Plotly's RdBu: blue low, red high
    zmin: diverging ? -limit : undefined, zmax: diverging ? limit : undefined,
    colorbar: { title: { text: "dB" }, thickness: 10 },
    hovertemplate: "%{x:.2f} s, mel band %{y}: %{z:.1f} dB<extra></extra>",
  }], {
    height: 260, margin: { l: 56, r: 8, t: 8, b: 40 },
    xaxis: { title: { text: "time (s)" } },
    yaxis: { title: { text: "mel band centre (Hz)" }, tickmode: "array", tickvals: ticks,
             ticktext: ticks.map((i) => hz(spec.mel_hz[i])) },
    paper_bgcolor: "rgba(0,0,0,0)",
  }, PLOT_CONFIG);
}

async function spectrograms(id) {
  try {
    const spec = await getJSON(`/v1/recordings/${id}/spectrogram`);
    heatmap($("#spec-recording"), spec, spec.recording, false);
    heatmap($("#spec-normal"), spec, spec.normal, false);
    heatmap($("#spec-difference"), spec, spec.difference, true);
    const note = $("#spec-missing");
    note.textContent = `Normal: the average of ${spec.n_normal_clips} training clip(s)` +
      (spec.normal_sections === "all" ? " of every section (its section has none)." : " of its section.");
    note.hidden = false;
  } catch (err) {
    const note = $("#spec-missing");
    note.textContent = `No spectrogram: ${err.message}`;
    note.hidden = false;
  }
}

function recordingPage() {
  const id = document.body.dataset.recording;
  const audio = $("#audio");
  audio.addEventListener("error", () => { $("#audio-missing").hidden = false; });
  spectrograms(id);
  poll(async () => {
    const rec = await getJSON(`/v1/recordings/${id}`);
    const link = $("#asset-link");
    link.textContent = rec.asset;
    link.href = `/assets/${enc(rec.asset)}`;
    const status = $("#status");
    const verdict = rec.anomalous === null ? "no verdict" : rec.anomalous ? "anomalous" : "normal";
    status.textContent = verdict;
    status.className = `badge ${rec.anomalous ? "ALARM" : "OK"}`;
    $("#facts").textContent = `${rec.asset} · ${rec.machine_type} · section ${rec.section ?? "–"} · ` +
      `${rec.path.split(/[\\/]/).pop()} · recorded ${utc(rec.recorded_at)} UTC · ${rec.duration_s.toFixed(2)} s at ` +
      `${rec.sample_rate} Hz` + (rec.alerts.length ? ` · raised ${rec.alerts.map((a) => `alert ${a.id}`).join(", ")}` : "");
    $("#audio-missing").hidden = rec.audio_kept;
    $("#verdicts tbody").replaceChildren(...Object.entries(rec.modes).map(([m, v]) => el("tr",
      { "data-mode": m, class: m === rec.default_mode ? "default" : "" },
      el("td", { text: m === rec.default_mode ? `${m} (default)` : m }), el("td", { class: "num", text: fmt(v.score) }),
      el("td", { class: "num", text: fmt(v.threshold) }), decisionCell(v.decision))));
  });
}

// ------------------------------------------------------------------------------------------------

const PAGES = { fleet: fleetPage, asset: assetPage, recording: recordingPage };
const start = PAGES[document.body.dataset.page];
if (start) start();

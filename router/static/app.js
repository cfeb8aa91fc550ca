// Rampart dashboard: polls `status` once a second and renders it. No dependencies.
// Every section copes with missing fields: before a rollout, or before the evaluator
// has published anything, /status holds only the workers' own counters.
"use strict";
(() => {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 2500;
  const ARMS = ["champion", "challenger"];
  const SVG = "http://www.w3.org/2000/svg";
  // The rollout policy's defaults, shown until the evaluator publishes its phases.
  const DEFAULT_PHASES = [
    { phase: 1, split_bp: 300, min_s: 86400, max_s: 172800 },
    { phase: 2, split_bp: 1000, min_s: 172800, max_s: 259200 },
    { phase: 3, split_bp: 2000, min_s: 259200, max_s: 432000 },
    { phase: 4, split_bp: 4000, min_s: 259200, max_s: 432000 },
    { phase: 5, split_bp: 5000, min_s: 172800, max_s: 259200 },
  ];
  const STATE_LABEL = {
    idle: "idle", loading: "loading", running: "running", paused: "paused",
    promoted: "promoted", rolled_back: "rolled back", stopped: "stopped",
  };

  // ---- DOM helpers --------------------------------------------------------
  const byId = (id) => document.querySelector(`[data-testid="${id}"]`);

  function build(make, tag, attrs, children) {
    const el = make(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else if (k === "testid") el.setAttribute("data-testid", v);
      else el.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const h = (tag, attrs, ...children) => build((t) => document.createElement(t), tag, attrs, children);
  const s = (tag, attrs, ...children) => build((t) => document.createElementNS(SVG, t), tag, attrs, children);

  // ---- formatting ---------------------------------------------------------
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const pct = (x, digits = 2) => (isNum(x) ? `${(x * 100).toFixed(digits)}%` : "—");
  const signedPct = (x, digits = 1) => (isNum(x) ? `${x >= 0 ? "+" : ""}${(x * 100).toFixed(digits)}%` : "—");
  // A small rate with two significant digits: 0.00029%, 0.12%, 3.4%.
  const share = (x) => (!isNum(x) ? "—" : x === 0 ? "0%" : `${+(x * 100).toPrecision(2)}%`);
  const count = (x) => (isNum(x) ? Math.round(x).toLocaleString("en-US") : "—");
  const ms = (x) => (isNum(x) ? (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2)) : "—");
  const pad2 = (n) => String(n).padStart(2, "0");

  function duration(sec) {
    if (!isNum(sec)) return "—";
    sec = Math.max(0, sec);
    if (sec < 60) return `${sec.toFixed(sec < 10 ? 1 : 0)} s`;
    const d = Math.floor(sec / 86400), hr = Math.floor((sec % 86400) / 3600);
    const m = Math.floor((sec % 3600) / 60), r = Math.floor(sec % 60);
    if (d) return `${d} d ${hr} h`;
    if (hr) return `${hr} h ${pad2(m)} m`;
    return `${m} m ${pad2(r)} s`;
  }
  function hours(sec) {
    if (!isNum(sec)) return "?";
    return sec >= 3600 ? `${+(sec / 3600).toFixed(1)} h` : duration(sec);
  }
  function clock(t) {
    if (!isNum(t)) return "—";
    const d = new Date(t * 1000);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }
  function value(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (!isNum(v)) return String(v);
    if (Number.isInteger(v)) return count(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 0.001 || a >= 1e6) ? v.toExponential(2) : String(+v.toPrecision(4));
  }

  // ---- status shape -------------------------------------------------------
  const phaseOf = (st) => st.phase ?? st.rollout?.phase ?? 0;
  function stateOf(st) {
    if (st.state) return st.state;
    if (st.rollout) return st.rollout.paused ? "paused" : "running";
    return (st.split_bp ?? 0) > 0 ? "running" : "idle";
  }
  function phasesOf(st) {
    if (Array.isArray(st.phases) && st.phases.length) return st.phases;
    const current = phaseOf(st), state = stateOf(st);
    return DEFAULT_PHASES.map((p) => ({
      ...p,
      result: p.phase < current ? "passed" : p.phase > current ? "pending"
        : state === "rolled_back" ? "failed" : "current",
    }));
  }

  // ---- sections -------------------------------------------------------------
  function setValue(id, raw, text, cls) {
    const el = byId(id);
    el.dataset.value = String(raw);
    el.textContent = text;
    if (cls !== undefined) el.className = `value ${cls}`;
  }

  function renderHeader(st) {
    const models = st.models || {};
    byId("models").replaceChildren(...ARMS.flatMap((arm, i) => [
      i ? " vs " : "",
      h("span", { class: `arm-${arm}`, text: models[arm]?.label ?? (models[arm]?.version ? `v${models[arm].version}` : "none") }),
      ` ${arm}`,
    ]));
    const phase = phaseOf(st), state = stateOf(st), split = st.split_bp ?? 0;
    const shadow = st.phase_name === "shadow";
    setValue("phase", shadow ? "shadow" : phase, shadow ? "shadow" : phase ? `${phase} / 5` : "none");
    setValue("state", state, STATE_LABEL[state] ?? state, `state-${state}`);
    setValue("split", split, `${(split / 100).toFixed(2)}%`);
    const eff = st.effective_split_bp;
    byId("effective-split").textContent = isNum(eff) && eff !== split
      ? `serving ${(eff / 100).toFixed(2)}% (${st.stale ? "evaluator stale" : "challenger not loaded"})`
      : `${split} bp`;
    const r = st.rollout;
    setValue("time-in-phase", r?.time_in_phase_s ?? "", r ? duration(r.time_in_phase_s) : "—");
    byId("phase-window").textContent = r
      ? `min ${hours(r.phase_min_s)} · max ${hours(r.phase_max_s)}${isNum(r.time_scale) && r.time_scale !== 1 ? ` · clock ×${r.time_scale}` : ""}`
      : "";
    const c = st.comparison;
    setValue("p-better", c?.p_better ?? "", c ? pct(c.p_better, 1) : "—");
    byId("uplift").textContent = c
      ? `uplift ${signedPct(c.uplift)} [${signedPct(c.uplift_low)}, ${signedPct(c.uplift_high)}] · P(worse) ${pct(c.p_worse, 1)}`
      : "";
    const k = st.counters || {};
    setValue("counters", `${k.rollbacks ?? 0}/${k.promotions ?? 0}`, `${k.rollbacks ?? 0} · ${k.promotions ?? 0}`);
    // Between rollouts, say how the last one ended (the evaluator keeps it as last_rollout).
    const last = !r && st.last_rollout;
    byId("last-rollout").textContent = last && last.state && last.state !== "running"
      ? `last rollout ${STATE_LABEL[last.state] ?? last.state}${last.reason ? `: ${last.reason}` : ""}`
      : "";
    byId("stale-banner").hidden = !st.stale;
  }

  function renderTimeline(st) {
    const r = st.rollout;
    byId("timeline").replaceChildren(...phasesOf(st).map((p) => {
      const result = p.result || "pending";
      const parts = [
        h("div", { class: "title" }, h("span", { text: p.name === "shadow" ? "Shadow" : `Phase ${p.phase}` }),
          h("span", { text: p.name === "shadow" ? "copies" : `${(p.split_bp ?? 0) / 100}%` })),
        h("div", { class: "meta", text: `${hours(p.min_s)} – ${hours(p.max_s)}${p.min_impressions ? ` · ≥ ${count(p.min_impressions)} impr.` : ""}` }),
      ];
      if (result === "current" && r && isNum(r.time_in_phase_s)) {
        const max = p.max_s ?? r.phase_max_s, min = p.min_s ?? r.phase_min_s;
        const bar = h("div", { class: "progress", title: "time in phase against its minimum (mark) and maximum (end)" });
        const fill = h("div", { class: "fill" });
        fill.style.width = `${Math.min(100, (100 * r.time_in_phase_s) / (max || 1))}%`;
        const mark = h("div", { class: "min" });
        mark.style.left = `${Math.min(100, (100 * (min || 0)) / (max || 1))}%`;
        bar.append(fill, mark);
        parts.push(h("div", { class: "meta", text: `${duration(r.time_in_phase_s)} in phase` }), bar);
      } else if (isNum(p.entered)) {
        parts.push(h("div", { class: "meta", text: `${clock(p.entered)}${isNum(p.exited) ? ` → ${clock(p.exited)}` : ""} · ${result}` }));
      } else {
        parts.push(h("div", { class: "meta", text: result }));
      }
      return h("li", { class: `step step-${result}`, testid: "phase-step", "data-phase": p.phase, "data-result": result }, ...parts);
    }));
    const next = st.next || (phaseOf(st) || st.rollout ? "" : "No rollout in progress: rampart rollout start VERSION starts one at 3%.");
    byId("next").textContent = next || "—";
  }

  function renderGuardrails(st) {
    const rows = Array.isArray(st.guardrails) ? st.guardrails : [];
    const tally = { pass: 0, fail: 0, waiting: 0 };
    const body = rows.map((g) => {
      const state = g.state || "waiting";
      tally[state] = (tally[state] || 0) + 1;
      return h("tr", { testid: "guardrail-row", "data-name": g.name, "data-state": state, "data-phase": g.phase ?? "", class: state === "fail" ? "row-fail" : null },
        h("td", {}, h("span", { class: `badge badge-${state}`, testid: "guardrail-state", text: state })),
        h("td", { testid: "guardrail-name", text: g.name }),
        h("td", { class: "phase-cell", text: g.phase ? `P${g.phase}` : "" }),
        h("td", { class: "num", testid: "guardrail-value", text: value(g.value) }),
        h("td", { class: "threshold-cell", testid: "guardrail-threshold", text: g.threshold ?? "" }),
        h("td", { class: "detail", text: g.detail ?? "" }));
    });
    if (!body.length) {
      body.push(h("tr", { testid: "guardrails-empty" }, h("td", { class: "empty", colspan: 6,
        text: phaseOf(st) ? "Waiting for the evaluator to publish guardrails." : "No guardrails: no rollout in progress." })));
    }
    byId("guardrails").tBodies[0].replaceChildren(...body);
    byId("guardrail-tally").textContent = rows.length ? `${tally.pass} pass · ${tally.fail} fail · ${tally.waiting} waiting` : "";
  }

  function renderTraffic(st) {
    const arms = st.arms || {}, models = st.models || {};
    const rowsOf = [
      ["model", (a, m) => m?.label ?? "—"],
      ["requests", (a) => count(a.requests)],
      ["predictions", (a) => count(a.predictions)],
      ["errors", (a) => `${count(a.errors)} (${a.requests ? share(a.errors / a.requests) : "—"})`],
      ["fallbacks", (a) => count(a.fallbacks)],
      ["impressions", (a) => count(a.impressions)],
      ["clicks", (a) => count(a.clicks)],
      ["CTR", (a) => (a.impressions ? pct(a.clicks / a.impressions, 3) : "—")],
    ];
    byId("arms").replaceChildren(
      h("thead", {}, h("tr", {}, h("th", {}), ...ARMS.map((arm) => h("th", { class: "num" }, h("span", { class: `swatch swatch-${arm}` }), arm)))),
      h("tbody", {}, ...rowsOf.map(([name, f]) => h("tr", {}, h("th", { text: name }),
        ...ARMS.map((arm) => h("td", { class: "num", testid: `arm-${arm}-${name}`, text: f(arms[arm] || {}, models[arm]) }))))),
    );
  }

  function renderLatency(st) {
    const lat = st.latency || {};
    const cols = [["p50_ms", "p50"], ["p99_ms", "p99"], ["p999_ms", "p99.9"], ["max_ms", "max"]];
    byId("latency").replaceChildren(
      h("thead", {}, h("tr", {}, h("th", { text: "ms" }), ...cols.map(([, l]) => h("th", { class: "num", text: l })), h("th", { class: "num", text: "count" }))),
      h("tbody", {}, ...ARMS.map((arm) => {
        const l = lat[arm] || {};
        return h("tr", { testid: `latency-${arm}` }, h("th", {}, h("span", { class: `swatch swatch-${arm}` }), arm),
          ...cols.map(([k]) => h("td", { class: `num${k === "p99_ms" && l[k] > 10 ? " hot" : ""}`, text: ms(l[k]) })),
          h("td", { class: "num", text: count(l.count) }));
      })),
    );
  }

  function renderSegments(st) {
    const all = Array.isArray(st.segments) ? st.segments : [];
    // Segment values that saw no click on either arm and lack a sample say nothing yet.
    const shown = all.filter((g) => g.enough || g.champion_ctr > 0 || g.challenger_ctr > 0);
    const rows = shown.map((g) => {
      const bad = g.enough && isNum(g.change) && g.change < -0.05;
      return h("tr", { testid: "segment-row", class: bad ? "row-fail" : null },
        h("td", { text: g.dimension }), h("td", { text: g.value }),
        h("td", { class: "num", text: pct(g.champion_ctr, 3) }), h("td", { class: "num", text: pct(g.challenger_ctr, 3) }),
        h("td", { class: `num${bad ? " hot" : ""}`, text: signedPct(g.change) }),
        h("td", { class: "num", text: pct(g.p_degraded, 1) }),
        h("td", { text: g.enough ? "enough" : "too few" }));
    });
    const hidden = all.length - shown.length;
    if (hidden) rows.push(h("tr", {}, h("td", { class: "empty", colspan: 7, text: `${hidden} segment values without clicks on either arm not shown.` })));
    if (!all.length) rows.push(h("tr", {}, h("td", { class: "empty", colspan: 7, text: "No segment comparison yet (phase 4 checks segments)." })));
    byId("segments").tBodies[0].replaceChildren(...rows);
  }

  function renderEvents(st) {
    const events = (Array.isArray(st.events) ? st.events : []).slice(-200).reverse();
    const items = events.map((e) => {
      const why = e.guardrail
        ? `${e.guardrail}${e.value != null ? ` = ${value(e.value)}` : ""}${e.threshold != null ? ` (threshold ${value(e.threshold)})` : ""}`
        : "";
      const detail = e.detail || (isNum(e.split_bp) ? `split ${(e.split_bp / 100).toFixed(2)}%` : "");
      return h("li", { testid: "event-row", "data-kind": e.kind, class: `kind-${e.kind}` },
        h("span", { class: "time", text: clock(e.t) }),
        h("span", {}, h("span", { class: `badge badge-${e.kind}`, text: (e.kind || "").replace("_", " ") })),
        h("span", { class: "phase-tag", text: e.phase ? `P${e.phase}` : "" }),
        h("span", { class: "text" }, detail, why ? h("span", { class: "why", testid: "event-reason", text: why }) : null));
    });
    if (!items.length) items.push(h("li", { class: "empty" }, h("span", { class: "time" }), h("span", { text: "No events yet." })));
    byId("events").replaceChildren(...items);
  }

  // ---- charts -------------------------------------------------------------
  function niceStep(span, n) {
    const raw = span / Math.max(n, 1), mag = 10 ** Math.floor(Math.log10(raw));
    const f = raw / mag;
    return (f >= 5 ? 10 : f >= 2 ? 5 : f >= 1 ? 2 : 1) * mag;
  }
  function ticks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    const step = niceStep(hi - lo, n), out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }
  const TIME_STEPS = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400];

  function placeholder(el, text, height) {
    const w = el.clientWidth || 300;
    el.replaceChildren(s("svg", { width: w, height, viewBox: `0 0 ${w} ${height}` },
      s("text", { x: w / 2, y: height / 2, "text-anchor": "middle", class: "placeholder", text })));
  }

  // A time chart: series of {cls, points: [[t, y, lo, hi]]}; bands where lo/hi are known.
  function timeChart(el, series, opt) {
    const pts = series.flatMap((x) => x.points);
    if (!pts.length) return placeholder(el, opt.empty, opt.height);
    const W = Math.max(el.clientWidth, 240), H = opt.height, m = { l: 48, r: 10, t: 8, b: 22 };
    let t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]));
    if (t1 - t0 < 10) { t0 -= 5; t1 += 5; }
    let y0 = opt.yMin ?? Math.min(...pts.map((p) => (isNum(p[2]) ? p[2] : p[1])));
    let y1 = opt.yMax ?? Math.max(...pts.map((p) => (isNum(p[3]) ? p[3] : p[1])));
    if (opt.yMin === undefined) { const padY = (y1 - y0) * 0.1 || Math.abs(y1) * 0.1 || 0.01; y0 = Math.max(0, y0 - padY); y1 += padY; }
    const X = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
    const Y = (y) => H - m.b - ((y - y0) / (y1 - y0 || 1)) * (H - m.t - m.b);
    const g = [];
    for (const v of ticks(y0, y1, 4)) {
      g.push(s("line", { class: "grid-line", x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }),
        s("text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end", text: opt.yFormat(v) }));
    }
    const step = TIME_STEPS.find((x) => (t1 - t0) / x <= Math.max(2, Math.floor((W - m.l) / 90))) || 86400;
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      g.push(s("text", { x: X(t), y: H - 6, "text-anchor": "middle", text: step >= 60 ? clock(t).slice(0, 5) : clock(t) }));
    }
    for (const r of opt.refs || []) {
      g.push(s("line", { class: "ref-line", x1: m.l, x2: W - m.r, y1: Y(r.y), y2: Y(r.y) }),
        s("text", { x: W - m.r, y: Y(r.y) - 3, "text-anchor": "end", text: r.label }));
    }
    for (const p of opt.phaseMarks || []) {
      g.push(s("line", { class: "phase-line", x1: X(p.t), x2: X(p.t), y1: m.t, y2: H - m.b }),
        s("text", { x: X(p.t) + 3, y: m.t + 10, text: `P${p.phase}` }));
    }
    for (const x of series) {
      const band = x.points.filter((p) => isNum(p[2]) && isNum(p[3]));
      if (band.length > 1) {
        const d = band.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[3]).toFixed(1)}`).join("")
          + band.slice().reverse().map((p) => `L${X(p[0]).toFixed(1)},${Y(p[2]).toFixed(1)}`).join("") + "Z";
        g.push(s("path", { class: `band-${x.cls}`, d }));
      }
      if (x.points.length) {
        const d = x.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
        g.push(s("path", { class: `line-${x.cls}`, d, "data-series": x.cls }));
      }
    }
    g.push(s("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    el.replaceChildren(s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opt.label }, ...g));
  }

  // Until the evaluator publishes `series`, plot cumulative CTR seen since this page opened.
  const local = [];
  function wilson(clicks, n) {
    if (!n) return null;
    const z = 1.96, p = clicks / n, z2 = z * z, den = 1 + z2 / n;
    const mid = (p + z2 / (2 * n)) / den, half = (z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / den;
    return { ctr: p, ctr_low: Math.max(0, mid - half), ctr_high: Math.min(1, mid + half) };
  }
  function seriesOf(st, redraw) {
    if (Array.isArray(st.series) && st.series.length) return { points: st.series, source: "from the evaluator" };
    if (redraw) return { points: local, source: "cumulative, since this page opened" };
    const a = st.arms || {}, point = { t: Date.now() / 1000, phase: phaseOf(st), p_better: null };
    for (const arm of ARMS) point[arm] = wilson(a[arm]?.clicks ?? 0, a[arm]?.impressions ?? 0);
    local.push(point);
    if (local.length > 300) local.shift();
    return { points: local, source: "cumulative, since this page opened" };
  }

  function renderCharts(st, redraw) {
    const { points, source } = seriesOf(st, redraw);
    byId("ctr-source").textContent = source;
    const marks = [];
    points.forEach((p, i) => { if (i && p.phase !== points[i - 1].phase && p.phase) marks.push({ t: p.t, phase: p.phase }); });
    const series = ARMS.map((arm) => ({
      cls: arm,
      points: points.filter((p) => isNum(p[arm]?.ctr)).map((p) => [p.t, p[arm].ctr, p[arm].ctr_low, p[arm].ctr_high]),
    }));
    timeChart(byId("ctr-chart"), series, { height: 210, yFormat: (v) => pct(v, v < 0.01 ? 2 : 1), phaseMarks: marks, label: "CTR by arm", empty: "No impressions yet" });
    const last = points[points.length - 1] || {};
    byId("ctr-legend").replaceChildren(...ARMS.map((arm) => h("span", {}, h("span", { class: `swatch swatch-${arm}` }),
      `${arm} ${pct(last[arm]?.ctr, 3)} [${pct(last[arm]?.ctr_low, 3)}, ${pct(last[arm]?.ctr_high, 3)}]`)));
    const pb = points.filter((p) => isNum(p.p_better)).map((p) => [p.t, p.p_better]);
    timeChart(byId("pbetter-chart"), [{ cls: "pbetter", points: pb }], {
      height: 110, yMin: 0, yMax: 1, yFormat: (v) => v.toFixed(1), phaseMarks: marks,
      refs: [{ y: 0.5, label: "0.5" }, { y: 0.9, label: "0.9" }], label: "P(challenger better)", empty: "No comparison yet",
    });
    const c = st.comparison;
    byId("comparison").textContent = c
      ? `${c.method ?? "Bayesian"}: P(better) ${pct(c.p_better, 1)}, P(worse) ${pct(c.p_worse, 1)}, expected uplift ${signedPct(c.uplift)} [${signedPct(c.uplift_low)}, ${signedPct(c.uplift_high)}]`
        + (c.sequential ? ` · sequential bound ${signedPct(c.sequential.lower)} … ${signedPct(c.sequential.upper)}` : "")
      : "";
    renderCalibration(st);
  }

  // `predicted` is taken as the sum of predicted CTR over the bucket's impressions
  // (ratio = predicted / clicks); a mean inside the bucket is accepted too.
  function meanPredicted(b, a) {
    if (!a.impressions) return null;
    if (isNum(a.predicted)) {
      const mean = a.predicted / a.impressions, slack = (b.hi - b.lo) * 0.5;
      if (mean >= b.lo - slack && mean <= b.hi + slack) return mean;
      if (a.predicted >= b.lo - slack && a.predicted <= b.hi + slack) return a.predicted;
    }
    return (b.lo + b.hi) / 2;
  }

  function renderCalibration(st) {
    const el = byId("calibration-chart"), cal = st.calibration || {};
    const band = Array.isArray(cal.band) && cal.band.length === 2 ? cal.band : [0.7, 1.4];
    const dots = [];
    for (const b of cal.buckets || []) {
      for (const arm of ARMS) {
        const a = b[arm];
        if (!a || !a.impressions) continue;
        const x = meanPredicted(b, a), y = a.clicks / a.impressions;
        const ratio = isNum(a.ratio) ? a.ratio : y > 0 ? x / y : null;
        dots.push({ arm, x, y, n: a.impressions, ratio, b });
      }
    }
    const H = Math.min(Math.max(el.clientWidth * 0.75, 200), 320);
    if (!dots.length) {
      byId("calibration-legend").replaceChildren();
      return placeholder(el, "No impressions with predictions yet", H);
    }
    const W = Math.max(el.clientWidth, 240), m = { l: 48, r: 12, t: 8, b: 30 };
    const D = Math.max(...dots.map((d) => Math.max(d.x, d.y))) * 1.1 || 0.01;
    const X = (v) => m.l + (v / D) * (W - m.l - m.r), Y = (v) => H - m.b - (v / D) * (H - m.t - m.b);
    const [lo, hi] = band; // ratio = predicted / actual, so actual lies in [x / hi, x / lo]
    const g = [s("path", { class: "band-ok", d: `M${X(0)},${Y(0)}L${X(lo * D)},${Y(D)}L${X(D)},${Y(D)}L${X(D)},${Y(D / hi)}Z` })];
    for (const v of ticks(0, D, 4)) {
      g.push(s("line", { class: "grid-line", x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }),
        s("text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end", text: pct(v, 1) }),
        s("text", { x: X(v), y: H - m.b + 14, "text-anchor": "middle", text: pct(v, 1) }));
    }
    g.push(s("line", { class: "ref-line", x1: X(0), y1: Y(0), x2: X(D), y2: Y(D) }),
      s("text", { x: W - m.r, y: H - 2, "text-anchor": "end", text: "predicted CTR →" }),
      s("text", { x: m.l + 4, y: m.t + 10, text: "↑ actual CTR" }));
    const maxN = Math.max(...dots.map((d) => d.n));
    for (const d of dots) {
      const out = isNum(d.ratio) && (d.ratio < lo || d.ratio > hi);
      g.push(s("circle", { class: `dot-${d.arm}${out ? " dot-out" : ""}`, cx: X(d.x), cy: Y(d.y), r: 2.5 + 5 * Math.sqrt(d.n / maxN), testid: "calibration-dot", "data-arm": d.arm },
        s("title", { text: `${d.arm} ${pct(d.b.lo, 0)}–${pct(d.b.hi, 0)}: predicted ${pct(d.x)}, actual ${pct(d.y)}, ratio ${value(d.ratio)}, ${count(d.n)} impressions` })));
    }
    el.replaceChildren(s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "calibration reliability diagram" }, ...g));
    byId("calibration-legend").replaceChildren(...ARMS.map((arm) => {
      const mine = dots.filter((d) => d.arm === arm);
      const pred = mine.reduce((acc, d) => acc + d.x * d.n, 0), clicks = mine.reduce((acc, d) => acc + d.y * d.n, 0);
      return h("span", {}, h("span", { class: `swatch swatch-${arm}` }), `${arm} overall ratio ${clicks ? value(pred / clicks) : "—"}`);
    }), h("span", { text: `band ${lo}–${hi}` }));
  }

  // Fleet mode: who leads, which hosts the store has heard from, and whether it answers.
  function renderFleet(st) {
    const f = st.fleet;
    byId("fleet-card").hidden = !f;
    const banner = byId("store-banner");
    banner.hidden = !f || f.store !== "unreachable";
    if (!f) return;
    if (f.store === "unreachable") {
      banner.textContent = `Fleet store unreachable since ${clock(f.unreachable_since)}: this host keeps serving the last decision; nothing advances until it is back.`;
    }
    const hosts = Array.isArray(f.hosts) ? f.hosts : [];
    byId("fleet-summary").textContent = `${f.name ?? ""} · ${hosts.length} host${hosts.length === 1 ? "" : "s"} · leader ${f.leader ?? "none"} · answered by ${f.host ?? "?"}`
      + (f.local_breach ? ` · this host pulled the challenger: ${f.local_breach.guardrail}` : "");
    byId("fleet-hosts").querySelector("tbody").replaceChildren(...hosts.map((x) => h("tr", { "data-host": x.id },
      h("td", { text: x.id }),
      h("td", { text: x.id === f.leader ? "leader" : "follower" }),
      h("td", { class: "num", text: isNum(x.age_s) ? `${x.age_s.toFixed(1)} s ago` : "—" }),
      h("td", { class: "num", text: isNum(x.split_bp) ? `${(x.split_bp / 100).toFixed(2)}%` : "—" }),
    )));
  }

  // ---- polling --------------------------------------------------------------
  const SECTIONS = [renderHeader, renderTimeline, renderGuardrails, renderTraffic, renderLatency, renderSegments, renderEvents, renderCharts, renderFleet];
  let polls = 0, lastOk = null, latest = null;

  function render(st) {
    for (const section of SECTIONS) {
      try { section(st); } catch (e) { console.error(`dashboard: ${section.name} failed`, e); }
    }
  }

  async function poll() {
    const ctl = new AbortController(), timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const r = await fetch("status", { cache: "no-store", signal: ctl.signal, headers: { accept: "application/json" } });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      latest = await r.json();
      lastOk = Date.now() / 1000;
      render(latest);
      byId("offline-banner").hidden = true;
    } catch (e) {
      const banner = byId("offline-banner");
      banner.hidden = false;
      banner.textContent = `Cannot reach /status (${e.name === "AbortError" ? "timed out" : e.message}); ${lastOk ? `showing data from ${clock(lastOk)}` : "no data yet"}.`;
    } finally {
      clearTimeout(timer);
      polls += 1;
      const u = byId("updated");
      u.dataset.polls = String(polls);
      u.textContent = lastOk ? `updated ${clock(lastOk)}` : "connecting…";
      setTimeout(poll, POLL_MS);
    }
  }

  // Redraw the charts at the new width when the window is resized or a phone rotates.
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => latest && renderCharts(latest, true), 150);
  });
  poll();
})();

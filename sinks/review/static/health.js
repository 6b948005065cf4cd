// flagstream model-health view: the business metric and the model's stability, by event day.
// Charts are inline SVG drawn here (no library, works offline); every server value is
// written with textContent or as an SVG attribute, never as HTML.
"use strict";

(() => {
  const REFRESH_MS = 10000;
  const SVG = "http://www.w3.org/2000/svg";
  const W = 560, H = 230, M = { left: 52, right: 16, top: 14, bottom: 40 };
  const COLORS = { fdr: "#c62f2f", recall: "#2456d3", threshold: "#344054", auto: "#6941c6",
                   overturn: "#b54708", flags: "#2456d3", reference: "#c0c6d0", current: "#2456d3",
                   met: "#1f7a4d", unmet: "#c62f2f", unknown: "#98a2b3",
                   promote: "#1f7a4d", rollback: "#b54708" };
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let last = null;

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const pct = (v, digits) => (isNum(v) ? `${(v * 100).toFixed(digits === undefined ? 1 : digits)}%` : "–");
  const fixed = (v, digits) => (isNum(v) ? v.toFixed(digits) : "–");
  const count = (v) => (isNum(v) ? Math.round(v).toLocaleString() : "–");
  const when = (ms) => (isNum(ms) && Number.isFinite(new Date(ms).getTime())
    ? new Date(ms).toISOString().slice(0, 16).replace("T", " ") + "Z" : "–");

  // the smallest "round" axis top (1, 2, 2.5, 5 × a power of ten) at or above value
  function niceMax(value) {
    if (!isNum(value) || value <= 0) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value - 1e-12) return step * power;
    return 10 * power;
  }

  // --- chart frame: axes, grid, labels -----------------------------------------------------
  function frame(box, days, yMax, yFormat, yLabel, pad) {
    box.textContent = "";
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img" });
    box.appendChild(root);
    const first = days.length ? days[0].day : 0;
    const span = days.length > 1 ? days[days.length - 1].day - first : 1;
    const plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;
    const inset = pad === undefined ? 10 : pad;  // keep the first and last points off the axes
    const x = (day) => M.left + inset + (days.length > 1 ? ((day - first) / span) * (plotW - 2 * inset) : plotW / 2 - inset);
    const y = (v) => M.top + plotH - (Math.min(Math.max(v, 0), yMax) / yMax) * plotH;
    for (let i = 0; i <= 4; i += 1) {
      const v = (yMax * i) / 4;
      root.appendChild(svg("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: "grid-line" }));
      root.appendChild(svg("text", { x: M.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, yFormat(v)));
    }
    const every = Math.max(1, Math.ceil(days.length / 7));
    days.forEach((d, i) => {
      if (i % every !== 0 && i !== days.length - 1) return;
      root.appendChild(svg("text", { x: x(d.day), y: H - M.bottom + 16, class: "tick", "text-anchor": "middle" },
                           d.date.slice(5)));
    });
    root.appendChild(svg("text", { x: M.left + plotW / 2, y: H - 6, class: "axis-label", "text-anchor": "middle" },
                         "Event day (UTC, month-day)"));
    root.appendChild(svg("text", { x: 12, y: M.top + plotH / 2, class: "axis-label", "text-anchor": "middle",
                                   transform: `rotate(-90 12 ${M.top + plotH / 2})` }, yLabel));
    return { root, x, y, plotW, plotH };
  }

  function horizontal(f, value, label, className) {
    if (!isNum(value)) return;
    f.root.appendChild(svg("line", { x1: M.left, x2: W - M.right, y1: f.y(value), y2: f.y(value), class: className }));
    f.root.appendChild(svg("text", { x: W - M.right - 2, y: f.y(value) - 5, class: `${className}-label`, "text-anchor": "end" }, label));
  }

  function seatMarkers(f, changes) {
    for (const c of changes) {
      if (!isNum(c.day)) continue;
      const x = f.x(c.day);
      const g = svg("g", { class: `seat-marker ${c.action}` });
      g.appendChild(svg("line", { x1: x, x2: x, y1: M.top, y2: H - M.bottom, stroke: COLORS[c.action] || "#667085" }));
      g.appendChild(svg("path", { d: `M${x - 5},${M.top} L${x + 5},${M.top} L${x},${M.top + 7} Z`, fill: COLORS[c.action] || "#667085" }));
      g.appendChild(svg("title", {}, `${c.action} to ${c.version}${c.from ? ` from ${c.from}` : ""} (${c.by}): ${c.reason}`));
      f.root.appendChild(g);
    }
  }

  // contiguous runs of rows where the series has a value
  function runs(days, key) {
    const out = [];
    let current = [];
    for (const d of days) {
      if (isNum(d[key])) current.push(d);
      else if (current.length) { out.push(current); current = []; }
    }
    if (current.length) out.push(current);
    return out;
  }

  function lineChart(box, days, opt) {
    const f = frame(box, days, opt.yMax, opt.yFormat, opt.yLabel);
    if (opt.target !== undefined) horizontal(f, opt.target, opt.targetLabel, "target-line");
    for (const run of runs(days, opt.key)) {
      if (opt.low && run.every((d) => isNum(d[opt.low]) && isNum(d[opt.high]))) {
        const top = run.map((d) => `${f.x(d.day)},${f.y(d[opt.high])}`);
        const bottom = run.slice().reverse().map((d) => `${f.x(d.day)},${f.y(d[opt.low])}`);
        const band = run.length > 1 ? svg("polygon", { points: top.concat(bottom).join(" "), class: "band", fill: opt.color })
          : svg("line", { x1: f.x(run[0].day), x2: f.x(run[0].day), y1: f.y(run[0][opt.high]), y2: f.y(run[0][opt.low]),
                          class: "band-bar", stroke: opt.color });
        f.root.appendChild(band);
      }
      if (run.length > 1) {
        f.root.appendChild(svg("polyline", { points: run.map((d) => `${f.x(d.day)},${f.y(d[opt.key])}`).join(" "),
                                             class: "series", stroke: opt.color }));
      }
    }
    if (opt.markers) seatMarkers(f, opt.markers);
    let points = 0;
    for (const d of days) {
      if (!isNum(d[opt.key])) continue;
      const color = opt.pointColor ? opt.pointColor(d) : opt.color;
      const hollow = opt.hollow && opt.hollow(d);
      const dot = svg("circle", { cx: f.x(d.day), cy: f.y(d[opt.key]), r: 4, class: hollow ? "pt hollow" : "pt",
                                  stroke: color, fill: hollow ? "#fff" : color,
                                  "data-day": d.date, "data-value": d[opt.key] });
      const interval = opt.low && isNum(d[opt.low]) ? ` (${opt.yFormat(d[opt.low])}–${opt.yFormat(d[opt.high])})` : "";
      dot.appendChild(svg("title", {}, `${d.date}: ${opt.format(d[opt.key])}${interval}${opt.detail ? opt.detail(d) : ""}`));
      f.root.appendChild(dot);
      points += 1;
    }
    if (!points) emptyNote(f, opt.empty || "No labelled days yet");
    box.dataset.points = String(points);
  }

  function emptyNote(f, text) {
    f.root.appendChild(svg("text", { x: M.left + f.plotW / 2, y: M.top + f.plotH / 2, class: "empty-note", "text-anchor": "middle" }, text));
  }

  function barChart(box, days, opt) {
    const values = days.map((d) => d[opt.key]).filter(isNum);
    const top = niceMax(Math.max(4, ...values, isNum(opt.line) ? opt.line : 0) * 1.05);
    const width = Math.max(3, Math.min(26, ((W - M.left - M.right) / Math.max(days.length, 1)) * 0.6));
    const f = frame(box, days, top, count, opt.yLabel, width / 2 + 6);
    let points = 0;
    for (const d of days) {
      if (!isNum(d[opt.key])) continue;
      const bar = svg("rect", { x: f.x(d.day) - width / 2, y: f.y(d[opt.key]), width, height: f.y(0) - f.y(d[opt.key]),
                                class: "pt bar", fill: opt.color, "data-day": d.date, "data-value": d[opt.key] });
      bar.appendChild(svg("title", {}, `${d.date}: ${count(d[opt.key])} ${opt.unit}`));
      f.root.appendChild(bar);
      points += 1;
    }
    if (isNum(opt.line)) horizontal(f, opt.line, opt.lineLabel, "target-line");
    if (opt.markers) seatMarkers(f, opt.markers);
    if (!points) emptyNote(f, "No decisions yet");
    box.dataset.points = String(points);
  }

  function scoreChart(box, scores) {
    box.textContent = "";
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img" });
    box.appendChild(root);
    const plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;
    if (!scores || !scores.current) {
      root.appendChild(svg("text", { x: M.left + plotW / 2, y: M.top + plotH / 2, class: "empty-note", "text-anchor": "middle" }, "No scores yet"));
      box.dataset.points = "0";
      return;
    }
    const groups = scores.current.length;
    const yMax = niceMax(Math.max(0.01, ...scores.current, ...(scores.reference || [])));
    const y = (v) => M.top + plotH - (v / yMax) * plotH;
    for (let i = 0; i <= 4; i += 1) {
      const v = (yMax * i) / 4;
      root.appendChild(svg("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: "grid-line" }));
      root.appendChild(svg("text", { x: M.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, pct(v, 0)));
    }
    const slot = plotW / groups;
    let points = 0;
    scores.current.forEach((share, i) => {
      const x0 = M.left + i * slot;
      const ref = scores.reference ? scores.reference[i] : null;
      if (isNum(ref)) {
        root.appendChild(svg("rect", { x: x0 + slot * 0.1, y: y(ref), width: slot * 0.38, height: y(0) - y(ref), fill: COLORS.reference }));
      }
      const bar = svg("rect", { x: x0 + slot * 0.5, y: y(share), width: slot * 0.38, height: y(0) - y(share), fill: COLORS.current, class: "pt" });
      bar.appendChild(svg("title", {}, `scores ${scores.edges[i]}–${scores.edges[i + 1]}: ${pct(share)} last day, ${pct(ref)} before`));
      root.appendChild(bar);
      points += 1;
      if (i % 4 === 0) root.appendChild(svg("text", { x: x0, y: H - M.bottom + 16, class: "tick", "text-anchor": "middle" }, scores.edges[i].toFixed(1)));
    });
    root.appendChild(svg("text", { x: W - M.right, y: H - M.bottom + 16, class: "tick", "text-anchor": "end" }, "1.0"));
    root.appendChild(svg("text", { x: M.left + plotW / 2, y: H - 6, class: "axis-label", "text-anchor": "middle" },
                         `Model score · grey: fortnight before (${count(scores.reference_n)}) · blue: last day (${count(scores.current_n)})`));
    root.appendChild(svg("text", { x: 12, y: M.top + plotH / 2, class: "axis-label", "text-anchor": "middle",
                                   transform: `rotate(-90 12 ${M.top + plotH / 2})` }, "Share of traffic"));
    box.dataset.points = String(points);
  }

  // --- the numbers around the charts ---------------------------------------------------------
  function renderKpis(h) {
    const est = (h.now && h.now.estimate) || {};
    const target = h.target || {};
    const met = est.target_met;
    const metBox = $("h-target-met");
    metBox.textContent = met === true ? "Yes" : met === false ? "No" : "Not yet known";
    metBox.className = met === true ? "good" : met === false ? "bad" : "unknown";
    $("h-target").textContent = isNum(target.false_discovery_rate)
      ? `target: at most ${pct(target.false_discovery_rate, 0)} false alarms`
      : `target: catch at least ${pct(target.recall, 0)} of fraud`;
    $("h-fdr").textContent = pct(est.false_discovery_rate);
    $("h-fdr-ci").textContent = isNum(est.fdr_low) ? `95%: ${pct(est.fdr_low)}–${pct(est.fdr_high)}` : "not enough labels";
    $("h-recall").textContent = pct(est.recall);
    $("h-recall-ci").textContent = isNum(est.recall_low) ? `95%: ${pct(est.recall_low)}–${pct(est.recall_high)}` : "labels maturing";
    $("h-threshold").textContent = fixed(h.now && h.now.threshold, 3);
    $("h-reason").textContent = est.reason ? `${est.move || "hold"}: ${est.reason}` : "";
    $("h-flags").textContent = isNum(est.flags_per_day) ? fixed(est.flags_per_day, 1) : "–";
    $("h-capacity").textContent = isNum(target.capacity_per_day) ? `capacity ${count(target.capacity_per_day)} / day` : "no capacity limit";
    $("h-champion").textContent = (h.now && h.now.model_version) || "–";
    const changes = h.seat_changes || [];
    const promotions = changes.filter((c) => c.action === "promote").length;
    $("h-changes").textContent = `${promotions} promotion${promotions === 1 ? "" : "s"}, ${changes.length - promotions} rollback${changes.length - promotions === 1 ? "" : "s"}`;
    const drift = h.drift || {};
    const alerting = drift.alerting || [];
    const driftBox = $("h-drift");
    const known = isNum(drift.score_psi) || drift.features;
    driftBox.textContent = !known ? "Not yet known" : alerting.length ? `Alert (${alerting.length})` : "Stable";
    driftBox.className = !known ? "unknown" : alerting.length ? "bad" : "good";
    const warming = Object.keys(drift.warming || {}).length;
    $("h-drift-note").textContent = alerting.length ? alerting.slice(0, 3).join(", ")
      : `score PSI ${fixed(drift.score_psi, 3)}` + (warming ? ` · ${warming} feature${warming === 1 ? "" : "s"} warming up` : "");
    $("h-alert").textContent = fixed(drift.alert, 2);
  }

  /** A drift row without a PSI: its status tag (class ``tag-<kind>``) and a note after it. */
  function unstatedRow(name, kind, tag, note) {
    const tr = el("tr");
    tr.className = `drift-${kind}`;
    tr.dataset.signal = name;
    tr.appendChild(el("td", name));
    tr.appendChild(el("td", "–", "num"));
    const status = el("td");
    status.appendChild(el("span", tag, `tag tag-${kind}`));
    status.appendChild(el("span", note, "muted"));
    tr.appendChild(status);
    return tr;
  }

  function renderDrift(drift) {
    const body = $("h-drift-table").querySelector("tbody");
    body.textContent = "";
    const rows = [];
    if (isNum(drift.score_psi)) rows.push(["Model score", drift.score_psi]);
    for (const [name, value] of Object.entries(drift.features || {})) rows.push([name, value]);
    rows.sort((a, b) => b[1] - a[1]);
    for (const [name, value] of rows) {
      const tr = el("tr");
      const level = value > drift.alert ? "alert" : value > drift.alert / 2 ? "watch" : "ok";
      tr.className = `drift-${level}`;
      tr.dataset.signal = name;
      tr.appendChild(el("td", name, name === "Model score" ? "strong" : ""));
      tr.appendChild(el("td", value.toFixed(3), "num"));
      const status = el("td");
      status.appendChild(el("span", level === "alert" ? "Alert" : level === "watch" ? "Watch" : "Stable", `tag tag-${level}`));
      tr.appendChild(status);
      body.appendChild(tr);
    }
    // features whose state is younger than their windows: no drift stated until the date shown
    for (const [name, from] of Object.entries(drift.warming || {})) {
      body.appendChild(unstatedRow(name, "warming", "Warming up", isNum(from) ? ` until ${when(from)}` : ""));
    }
    const stated = body.children.length;
    // features whose drift is never stated, and why (shown once anything else is)
    for (const [name, why] of Object.entries(stated ? drift.unwatched || {} : {})) {
      body.appendChild(unstatedRow(name, "unwatched", "Not watched", ` ${why}`));
    }
    $("h-drift-empty").hidden = stated > 0;
  }

  function renderChanges(changes) {
    const body = $("h-changes-table").querySelector("tbody");
    body.textContent = "";
    for (const c of changes.slice().reverse()) {
      const tr = el("tr");
      tr.appendChild(el("td", when(c.at_ms).slice(5)));
      tr.appendChild(el("td", isNum(c.day) ? new Date(c.day * 86400000).toISOString().slice(0, 10) : "–"));
      const action = el("td");
      action.appendChild(el("span", c.action === "promote" ? "Promotion" : "Rollback", `tag tag-${c.action}`));
      tr.appendChild(action);
      const version = el("td");
      version.appendChild(el("div", c.version, "mono"));
      version.appendChild(el("div", c.from ? `from ${c.from}` : "first champion", "muted mono small-from"));
      tr.appendChild(version);
      tr.appendChild(el("td", c.by));
      tr.appendChild(el("td", c.reason, "reason"));
      body.appendChild(tr);
    }
    $("h-changes-empty").hidden = changes.length > 0;
  }

  function render(h) {
    last = h;
    const days = h.days || [];
    const changes = h.seat_changes || [];
    const target = h.target || {};
    $("h-empty").hidden = days.length > 0;
    renderKpis(h);
    lineChart($("chart-fdr"), days, {
      key: "fdr", low: "fdr_low", high: "fdr_high", color: COLORS.fdr, yMax: 1, yFormat: (v) => pct(v, 0),
      yLabel: "False alarms", format: pct, target: target.false_discovery_rate,
      targetLabel: isNum(target.false_discovery_rate) ? `target ${pct(target.false_discovery_rate, 0)}` : "",
      markers: changes, detail: (d) => `, ${d.flagged_legit} legit of ${d.flagged_fraud + d.flagged_legit} reviewed`,
      empty: "No reviewed flags yet",
    });
    lineChart($("chart-recall"), days, {
      key: "recall", low: "recall_low", high: "recall_high", color: COLORS.recall, yMax: 1, yFormat: (v) => pct(v, 0),
      yLabel: "Fraud caught", format: pct, target: target.recall,
      targetLabel: isNum(target.recall) ? `target ${pct(target.recall, 0)}` : "", markers: changes,
      hollow: (d) => !d.mature, detail: (d) => `, ${d.flagged_fraud} caught, ${d.auto_fraud} missed${d.mature ? "" : " (maturing)"}`,
      empty: "No frauds known yet",
    });
    const thresholdTop = Math.min(1, niceMax(Math.max(0.05, ...days.map((d) => d.threshold).filter(isNum)) * 1.2));
    lineChart($("chart-threshold"), days, {
      key: "threshold", color: COLORS.threshold, yMax: thresholdTop, yFormat: (v) => fixed(v, thresholdTop < 0.2 ? 3 : 2),
      yLabel: "Threshold (score)",
      format: (v) => fixed(v, 3), markers: changes,
      pointColor: (d) => (d.target_met === true ? COLORS.met : d.target_met === false ? COLORS.unmet : COLORS.unknown),
      detail: (d) => (d.target_met === true ? ", target met" : d.target_met === false ? ", target not met" : ", target not yet known"),
      empty: "No decisions yet",
    });
    barChart($("chart-flags"), days, {
      key: "flagged", color: COLORS.flags, yLabel: "Flags", unit: "flags", line: target.capacity_per_day,
      lineLabel: isNum(target.capacity_per_day) ? `capacity ${count(target.capacity_per_day)}` : "", markers: changes,
    });
    lineChart($("chart-auto"), days, {
      key: "auto_share", low: "auto_low", high: "auto_high", color: COLORS.auto, yMax: 1, yFormat: (v) => pct(v, 0),
      yLabel: "Auto-decided", format: pct, detail: (d) => `, ${count(d.auto)} of ${count(d.decisions)} decisions`,
      empty: "No decisions yet",
    });
    const overturnTop = niceMax(Math.max(0.01, ...days.map((d) => d.overturn_high).filter(isNum)));
    lineChart($("chart-overturn"), days, {
      key: "overturn_rate", low: "overturn_low", high: "overturn_high", color: COLORS.overturn,
      yMax: Math.min(1, overturnTop), yFormat: (v) => pct(v, overturnTop < 0.4 ? 1 : 0), yLabel: "Overturned", format: (v) => pct(v, 2),
      detail: (d) => `, ${d.auto_fraud} chargebacks on ${count(d.auto)} auto-approvals`, empty: "No automatic decisions yet",
    });
    scoreChart($("chart-scores"), h.scores);
    renderDrift(h.drift || {});
    renderChanges(changes);
    $("h-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  async function load() {
    try {
      const response = await fetch("/review/api/health", { credentials: "same-origin" });
      if (response.status === 401) { window.location.assign("/review/login"); return; }
      if (!response.ok) { $("h-updated").textContent = `Not available (${response.status})`; return; }
      render(await response.json());
    } catch (_) {
      $("h-updated").textContent = "Offline: showing the last numbers";
    }
  }

  function show(which) {
    const health = which === "health";
    $("health").hidden = !health;
    $("queue-view").hidden = health;
    $("tab-health").classList.toggle("active", health);
    $("tab-queue").classList.toggle("active", !health);
    $("tab-health").setAttribute("aria-selected", String(health));
    $("tab-queue").setAttribute("aria-selected", String(!health));
    clearInterval(timer);
    if (health) {
      if (last) render(last);
      load();
      timer = setInterval(load, REFRESH_MS);
    }
    if (window.location.hash !== (health ? "#health" : "")) {
      history.replaceState(null, "", health ? "#health" : window.location.pathname);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("tab-health").addEventListener("click", () => show("health"));
    $("tab-queue").addEventListener("click", () => show("queue"));
    if (window.location.hash === "#health") show("health");
  });
})();

// flagstream review page: polls the queue API, shows an item, publishes a label.
// Every value from the server is written with textContent, never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const PAGE_SIZE = 50;
  const state = { csrf: null, reviewer: "", offset: 0, sort: "score", total: 0,
                  open: null, claimTimer: null, polling: false };
  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function money(amount, currency) {
    if (typeof amount !== "number") return "–";
    const text = amount.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    return currency ? `${text} ${currency}` : text;
  }

  function duration(seconds) {
    if (typeof seconds !== "number") return "–";
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }

  function when(value) {
    if (value === null || value === undefined) return "–";
    const date = new Date(typeof value === "number" ? value : String(value));
    if (Number.isNaN(date.getTime())) return String(value);
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z").replace(/:00Z$/, "Z");
  }

  function shortWhen(value) {
    const text = when(value);
    return /^\d{4}-\d\d-\d\d /.test(text) ? text.slice(5, 16) : text;
  }

  function scoreClass(score) {
    if (score >= 0.8) return "high";
    if (score >= 0.5) return "mid";
    return "low";
  }

  function toast(message, kind) {
    const box = $("toast");
    box.textContent = message;
    box.className = `toast ${kind || ""}`;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 3500);
  }

  async function api(path, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    if (opts.method && opts.method !== "GET") {
      opts.headers["X-CSRF-Token"] = state.csrf || "";
      opts.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, opts);
    if (response.status === 401) {
      window.location.assign("/review/login");
      throw new Error("signed out");
    }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    return { status: response.status, ok: response.ok, body: body || {} };
  }

  function post(path, payload) {
    return api(path, { method: "POST", body: JSON.stringify(payload || {}) });
  }

  function setLive(ok) {
    $("live").classList.toggle("offline", !ok);
    $("live-text").textContent = ok ? "Live" : "Reconnecting…";
  }

  function renderStats(stats) {
    $("kpi-depth").textContent = stats.depth.toLocaleString();
    $("kpi-claimed").textContent = stats.claimed.toLocaleString();
    $("kpi-oldest").textContent = stats.depth ? duration(stats.oldest_age_s) : "–";
    $("kpi-mine").textContent = stats.mine.toLocaleString();
    $("kpi-overturn").textContent = stats.decided ? `${(stats.overturn_rate * 100).toFixed(0)}%` : "–";
  }

  function renderQueue(data) {
    state.total = data.total;
    if (state.offset >= data.total && data.total > 0) {
      state.offset = Math.max(0, Math.floor((data.total - 1) / PAGE_SIZE) * PAGE_SIZE);
    }
    const body = $("queue-body");
    const rows = document.createDocumentFragment();
    for (const item of data.items) {
      const tr = el("tr");
      tr.dataset.id = item.id;
      tr.tabIndex = 0;
      if (state.open === item.id) tr.classList.add("selected");
      const mine = item.claimed_by === state.reviewer;
      if (item.claimed_by && !mine) tr.classList.add("locked");
      const scoreCell = el("td", null, "col-score");
      const pill = el("span", item.score.toFixed(3), `score ${scoreClass(item.score)}`);
      scoreCell.append(pill);
      tr.append(scoreCell, el("td", item.transaction_id, "mono"),
        el("td", money(item.amount, item.currency), "num"), el("td", item.account_id, "mono"),
        el("td", item.merchant_id, "mono"), el("td", item.reason || "—", item.reason ? "reason" : "reason none"),
        el("td", duration(item.age_s), "num"));
      const status = el("td");
      if (item.claimed_by) {
        status.append(el("span", mine ? "You" : `🔒 ${item.claimed_by}`, mine ? "tag tag-mine" : "tag tag-locked"));
      } else {
        status.append(el("span", "Open", "tag"));
      }
      tr.append(status);
      tr.addEventListener("click", () => openItem(item.id));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") openItem(item.id); });
      rows.append(tr);
    }
    body.replaceChildren(rows);
    $("queue-empty").hidden = data.total > 0;
    const first = data.total ? data.offset + 1 : 0;
    const last = Math.min(data.offset + data.items.length, data.total);
    $("page-info").textContent = `${first.toLocaleString()}–${last.toLocaleString()} of ${data.total.toLocaleString()}`;
    $("prev").disabled = data.offset <= 0;
    $("next").disabled = data.offset + PAGE_SIZE >= data.total;
    renderStats(data.stats);
  }

  async function poll() {
    if (state.polling) return;
    state.polling = true;
    try {
      const params = new URLSearchParams({ offset: state.offset, limit: PAGE_SIZE, sort: state.sort });
      const res = await api(`/review/api/queue?${params}`);
      if (res.ok) { renderQueue(res.body); setLive(true); } else { setLive(false); }
    } catch (_) {
      setLive(false);
    } finally {
      state.polling = false;
    }
  }

  function fillTable(table, rows, emptyNote) {
    const tbody = table.querySelector("tbody");
    tbody.replaceChildren(...rows);
    table.hidden = rows.length === 0;
    if (emptyNote) emptyNote.hidden = rows.length > 0;
  }

  function renderDetail(d) {
    $("d-tx").textContent = d.transaction_id;
    $("d-when").textContent = `${when(d.event_time)} · waiting ${duration(d.age_s)}`;
    const badge = $("d-score");
    badge.textContent = d.score.toFixed(3);
    badge.className = `score-badge ${scoreClass(d.score)}`;
    $("d-amount").textContent = money(d.amount, d.currency);
    $("d-card").textContent = d.account_id;
    $("d-merchant").textContent = d.merchant_id;
    $("d-model").textContent = d.model_version || "–";
    $("d-threshold").textContent = typeof d.threshold === "number" ? d.threshold.toFixed(3) : "–";
    $("d-context").textContent = [d.channel, d.country].filter(Boolean).join(" / ") || "–";
    const reasons = (d.reasons || []).map((r) => {
      const li = el("li");
      li.append(el("span", r.text || r.feature), el("span", `+${Number(r.contribution).toFixed(2)}`, "contrib"));
      return li;
    });
    if (!reasons.length) reasons.push(el("li", "No single feature stood out; the score is the model's baseline.", "none"));
    $("d-reasons").replaceChildren(...reasons);
    fillTable($("d-card-history"), (d.account_history || []).map((h) => {
      const tr = el("tr");
      const label = el("td");
      if (h.label) label.append(el("span", h.label === "fraud" ? "Fraud" : "Legit", `tag tag-${h.label}`));
      tr.append(el("td", h.transaction_id, "mono"), el("td", shortWhen(h.event_time)),
        el("td", money(h.amount), "num"), el("td", h.merchant_id, "mono"), label);
      return tr;
    }), $("d-card-empty"));
    fillTable($("d-merchant-history"), (d.merchant_frauds || []).map((h) => {
      const tr = el("tr");
      tr.append(el("td", h.transaction_id, "mono"), el("td", shortWhen(h.event_time)),
        el("td", money(h.amount), "num"), el("td", h.account_id, "mono"), el("td", h.source || "–"));
      return tr;
    }), $("d-merchant-empty"));
    const features = Object.entries(d.features || {}).map(([name, value]) => {
      const tr = el("tr");
      tr.append(el("td", name.replaceAll("_", " ")), el("td", typeof value === "number" ? value.toLocaleString(undefined, { maximumFractionDigits: 4 }) : String(value), "num"));
      return tr;
    });
    $("d-features").querySelector("tbody").replaceChildren(...features);
    $("detail-empty").hidden = true;
    $("detail-body").hidden = false;
  }

  function setClaimNote(text, kind) {
    const note = $("d-claim");
    note.textContent = text;
    note.className = `claim-note ${kind || ""}`;
  }

  function setButtons(enabled) {
    for (const id of ["btn-fraud", "btn-legit", "btn-release"]) $(id).disabled = !enabled;
  }

  function closeDetail(message) {
    clearInterval(state.claimTimer);
    state.open = null;
    $("detail-body").hidden = true;
    $("detail-empty").hidden = false;
    $("note").value = "";
    document.querySelectorAll("#queue-body tr.selected").forEach((tr) => tr.classList.remove("selected"));
    if (message) toast(message);
  }

  async function claim(id) {
    const res = await post(`/review/api/items/${encodeURIComponent(id)}/claim`);
    if (res.ok) {
      setClaimNote(`Reserved for you for ${duration(res.body.expires_in)}; others cannot open it meanwhile.`, "mine");
      setButtons(true);
    } else if (res.status === 409) {
      setClaimNote(`${res.body.claimed_by} is reviewing this item (free again in ${duration(res.body.expires_in)}).`, "locked");
      setButtons(false);
    } else if (res.status === 404) {
      closeDetail(res.body.error || "That item was just decided by someone else.");
    }
    return res;
  }

  async function openItem(id) {
    if (state.open && state.open !== id) release(state.open);
    clearInterval(state.claimTimer);
    state.open = id;
    document.querySelectorAll("#queue-body tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.id === id));
    const res = await api(`/review/api/items/${encodeURIComponent(id)}`);
    if (!res.ok) { closeDetail(res.body.error || "That item is no longer in the queue."); return; }
    $("note").value = "";
    renderDetail(res.body);
    const claimed = await claim(id);
    if (claimed.ok) state.claimTimer = setInterval(() => { if (state.open === id) claim(id); }, 60000);
    poll();
  }

  async function release(id) {
    try { await post(`/review/api/items/${encodeURIComponent(id)}/release`); } catch (_) { /* best effort */ }
  }

  async function decide(label) {
    const id = state.open;
    if (!id || $("btn-fraud").disabled) return;
    setButtons(false);
    const res = await post(`/review/api/items/${encodeURIComponent(id)}/decision`, { label, note: $("note").value });
    if (res.ok) {
      closeDetail(label === "fraud" ? "Labelled fraud. Thank you." : "Labelled legitimate. Thank you.");
      poll();
    } else {
      setButtons(res.status !== 404 && res.status !== 409);
      toast(res.body.error || `Could not save (${res.status}).`, "error");
      if (res.status === 404 || res.body.labelled_elsewhere) closeDetail();
    }
  }

  async function signOut() {
    const form = el("form");
    form.method = "post";
    form.action = "/review/logout";
    const field = el("input");
    field.type = "hidden";
    field.name = "csrf_token";
    field.value = state.csrf || "";
    form.append(field);
    document.body.append(form);
    form.submit();
  }

  async function start() {
    const res = await api("/review/api/session");
    if (!res.ok) return;
    state.csrf = res.body.csrf_token;
    state.reviewer = res.body.reviewer;
    $("who").textContent = state.reviewer;
    $("sort").addEventListener("change", (e) => { state.sort = e.target.value; state.offset = 0; poll(); });
    $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); poll(); });
    $("next").addEventListener("click", () => { state.offset += PAGE_SIZE; poll(); });
    $("btn-fraud").addEventListener("click", () => decide("fraud"));
    $("btn-legit").addEventListener("click", () => decide("legit"));
    $("btn-release").addEventListener("click", () => { if (state.open) release(state.open); closeDetail(); poll(); });
    $("sign-out").addEventListener("click", signOut);
    document.addEventListener("keydown", (e) => {
      if (!state.open || e.target.tagName === "TEXTAREA" || e.target.tagName === "INPUT") return;
      if (e.key === "f" || e.key === "F") decide("fraud");
      else if (e.key === "l" || e.key === "L") decide("legit");
      else if (e.key === "Escape") { release(state.open); closeDetail(); }
    });
    window.addEventListener("pagehide", () => {  // give the item back when the tab closes
      if (!state.open) return;
      const url = `/review/api/items/${encodeURIComponent(state.open)}/release`;
      navigator.sendBeacon(url, new URLSearchParams({ csrf_token: state.csrf || "" }));
    });
    await poll();
    setInterval(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();

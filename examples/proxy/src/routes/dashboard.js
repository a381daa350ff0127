"use strict";
// The operator dashboard: polls the admin JSON endpoints every 2 s and redraws.
// Every text from the proxy is set with textContent (never as HTML).
const POLL_MS = 2000;
const USAGE_EVERY = 5; // polls between two usage queries (they read SQLite)
const $ = (id) => document.getElementById(id);
let polls = 0;
let modelsFilled = false;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function getJson(path) {
  const res = await fetch(path, { credentials: "same-origin" });
  if (res.status === 401) { location.reload(); throw new Error("signed out"); }
  const json = await res.json().catch(() => ({}));
  return { ok: res.ok, status: res.status, json };
}

async function postJson(path, body) {
  const res = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  const json = await res.json().catch(() => ({}));
  return { ok: res.ok, status: res.status, json };
}

// Circuits ------------------------------------------------------------------

async function circuitAction(upstream, action) {
  const outcome = $("circuit-outcome");
  const { ok, status, json } = await postJson(
    `/v1/admin/circuits/${encodeURIComponent(upstream)}/${action}`);
  if (ok) {
    outcome.textContent = `${upstream}: ${action} done, now ${json.state}.`;
    outcome.className = "outcome done";
  } else {
    outcome.textContent = (json.error && json.error.message) || `failed (${status})`;
    outcome.className = "outcome failed";
  }
  refresh();
}

function circuitRow(c) {
  const row = el("tr");
  row.dataset.upstream = c.upstream;
  row.append(el("td", c.upstream, "upstream"));
  const state = el("td", null, "state");
  state.append(el("span", c.state, `state-${c.state}`));
  if (c.forced) state.append(el("span", " (forced)", "forced"));
  row.append(state);
  for (const n of [c.consecutive_failures, c.failures, c.rejected, c.trips]) {
    row.append(el("td", n, "num"));
  }
  const actions = el("td");
  for (const [action, label] of [["force-open", "Force open"], ["force-closed", "Force closed"], ["reset", "Reset"]]) {
    const button = el("button", label, action);
    button.type = "button";
    button.addEventListener("click", () => circuitAction(c.upstream, action));
    actions.append(button, " ");
  }
  row.append(actions);
  return row;
}

function drawCircuits(list) {
  $("circuits").tBodies[0].replaceChildren(...list.map(circuitRow));
}

// Answers by tier -----------------------------------------------------------

function share(n, total) {
  if (!total) return "–";
  return `${Math.round((100 * n) / total)}% (${n})`;
}

function shareCell(n, total, className) {
  const td = el("td", null, `num ${className}`);
  if (total) {
    const bar = el("span", null, "bar");
    bar.style.width = `${Math.round((3 * n) / total * 100) / 100}rem`;
    td.append(bar);
  }
  td.append(share(n, total));
  return td;
}

function failuresText(failures) {
  const parts = Object.entries(failures || {}).map(([kind, n]) => `${kind} ${n}`);
  return parts.length ? parts.join(" · ") : "none";
}

function modelSection(m, windows) {
  const section = el("section", null, "model");
  section.dataset.model = m.model;
  section.append(el("h3", m.model));
  const table = el("table");
  const head = el("tr");
  head.append(el("th", "Answered by"));
  for (const w of windows) head.append(el("th", `last ${w}`));
  head.append(el("th", "since start"));
  table.append(el("thead"));
  table.tHead.append(head);
  const body = el("tbody");
  const addRow = (label, className, count) => {
    const row = el("tr", null, className);
    row.append(el("td", label));
    for (const w of windows) {
      const win = m.windows[w];
      row.append(shareCell(count(win), win.answers, `w-${w}`));
    }
    row.append(el("td", count(m.windows.total), "num total"));
    body.append(row);
    return row;
  };
  m.tiers.forEach((name, i) => {
    const row = addRow(`${i}: ${name}`, "tier", (win) => win.by_tier[i]);
    row.dataset.tier = String(i);
  });
  if (m.windows.total.human) addRow("human", "human", (win) => win.human);
  if (m.windows.total.cache) addRow("cache", "cache", (win) => win.cache);
  addRow("degraded", "degraded", (win) => win.degraded);
  const failed = el("tr", null, "failed-requests");
  failed.append(el("td", "requests without an answer"));
  for (const w of windows) failed.append(el("td", m.windows[w].failed_requests, `num w-${w}`));
  failed.append(el("td", m.windows.total.failed_requests, "num total"));
  body.append(failed);
  table.append(body);
  section.append(table);
  for (const w of windows) {
    const none = Object.keys(m.windows[w].failures || {}).length === 0;
    const p = el("p", `Failures by kind, last ${w}: ${failuresText(m.windows[w].failures)}`,
      `failures w-${w}${none ? " none" : ""}`);
    section.append(p);
  }
  return section;
}

function drawStats(stats) {
  $("models").replaceChildren(...stats.models.map((m) => modelSection(m, stats.windows)));
  if (!modelsFilled) {
    const select = $("test-model");
    for (const m of stats.models) {
      const option = el("option", m.model);
      option.value = m.model;
      select.append(option);
    }
    modelsFilled = true;
  }
}

// Escalations, batches, usage ----------------------------------------------

// `[escalation.webhook]`: whether the human was told (nothing without a webhook).
function notificationText(n) {
  if (!n || (!n.attempts && n.delivered == null)) return "";
  if (n.delivered === true) return "notified";
  if (n.delivered === false) return `notification failed after ${n.attempts} attempt(s): ${n.last_error || "?"}`;
  return `notifying (attempt ${n.attempts})`;
}

function drawEscalations(list) {
  $("escalations-empty").hidden = list.length !== 0;
  $("escalations").replaceChildren(...list.map((e) => {
    const item = el("li");
    const link = el("a", e.id);
    link.href = `/escalations/${encodeURIComponent(e.id)}`;
    item.append(link, ` · ${e.model || "?"} · ${e.reason} · since ${e.created_at}`);
    const note = notificationText(e.notification);
    if (note) item.append(el("span", ` · ${note}`, `notification ${e.notification.delivered === false ? "failed" : ""}`));
    return item;
  }));
}

function drawBatches(list) {
  $("batches-empty").hidden = list.length !== 0;
  $("batches").hidden = list.length === 0;
  $("batches").tBodies[0].replaceChildren(...list.map((b) => {
    const row = el("tr");
    row.append(el("td", b.finished_at), el("td", b.batch_id || "(unnamed)"), el("td", b.client));
    for (const n of [b.items, b.ok, b.failed, b.cached, b.unfinished]) row.append(el("td", n, "num"));
    row.append(el("td", `${b.duration_ms} ms`, "num"));
    return row;
  }));
}

// Asynchronous batches: progress as the job store tells it (`null`: not read).
function drawAsyncBatches(list) {
  $("async-batches-section").hidden = list.length === 0;
  $("async-batches").tBodies[0].replaceChildren(...list.map((b) => {
    const row = el("tr");
    row.append(el("td", b.submitted_at), el("td", b.batch_id), el("td", b.client), el("td", b.status));
    const p = b.progress || {};
    for (const n of [p.total, p.done, p.failed, p.pending, p.in_flight]) row.append(el("td", n ?? "?", "num"));
    return row;
  }));
}

function drawUsage(usage) {
  $("usage-section").hidden = false;
  $("usage").tBodies[0].replaceChildren(...(usage.groups || []).map((g) => {
    const row = el("tr");
    row.append(el("td", g.model || "?"));
    for (const n of [g.requests, g.input_tokens, g.output_tokens]) row.append(el("td", n, "num"));
    row.append(el("td", (g.cost_nano_usd / 1e9).toFixed(4), "num"));
    row.append(el("td", g.cached, "num"), el("td", g.degraded, "num"));
    return row;
  }));
}

async function refresh() {
  try {
    const [circuits, stats, escalations, batches] = await Promise.all([
      getJson("/v1/admin/circuits"),
      getJson("/v1/admin/stats"),
      getJson("/v1/escalations?status=pending&limit=20"),
      getJson("/v1/admin/batches"),
    ]);
    if (circuits.ok) drawCircuits(circuits.json.data || []);
    if (stats.ok) drawStats(stats.json);
    if (escalations.ok) drawEscalations(escalations.json.data || []);
    if (batches.ok) {
      drawBatches(batches.json.data || []);
      drawAsyncBatches(batches.json.asynchronous || []);
    }
    if (polls % USAGE_EVERY === 0) {
      const usage = await getJson("/v1/admin/usage?group_by=model");
      if (usage.ok) drawUsage(usage.json); else $("usage-section").hidden = true;
    }
    polls += 1;
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("status").textContent = `cannot reach the proxy: ${e}`;
  }
}

// Test prompt ---------------------------------------------------------------

async function sendTestPrompt(event) {
  event.preventDefault();
  const button = $("test-send");
  const result = $("test-result");
  button.disabled = true;
  try {
    const { ok, status, json } = await postJson("/v1/admin/test-prompt", {
      model: $("test-model").value, prompt: $("test-prompt").value,
    });
    result.hidden = false;
    result.querySelector(".status").textContent = ok ? String(json.status) : String(status);
    result.querySelector(".tier").textContent = json.tier || "(none)";
    result.querySelector(".degraded").textContent =
      json.degraded === null || json.degraded === undefined ? "–" : String(json.degraded);
    const error = json.error && (json.error.message || json.error.code);
    result.querySelector(".answer").textContent = json.answer ?? error ?? "(no text)";
  } catch (e) {
    result.hidden = false;
    result.querySelector(".answer").textContent = `failed: ${e}`;
  } finally {
    button.disabled = false;
    refresh();
  }
}

$("test-form").addEventListener("submit", sendTestPrompt);
$("sign-out").addEventListener("click", async () => {
  await postJson("/escalations/logout", {}).catch(() => {});
  location.reload();
});
refresh();
setInterval(refresh, POLL_MS);

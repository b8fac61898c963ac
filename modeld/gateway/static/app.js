// modeld dashboard: every model, the GPU's memory, one-click switch and stop, live.
// It reads /v1/models/status, follows /events (server-sent events, read with fetch so
// the API key can travel in a header), and posts the seed's switch and the stop
// endpoint. Text from the daemon is only ever set as textContent, never as HTML.

const KEY_STORE = "modeld.apiKey";
const STEPS = 200; // ms between progress redraws while something loads

// Kept for this tab only (sessionStorage) unless the user asks to remember it.
let apiKey = sessionStorage.getItem(KEY_STORE) || localStorage.getItem(KEY_STORE) || "";
let status = null;
// Per model: what it is doing now, from events ("stopping demo-chat", "waking", ...),
// and when its load began by this browser's clock.
const steps = new Map();
const loadStarted = new Map();
const busy = new Set(); // models with an action of ours in flight
// What a switch to each model would do now (the daemon's dry run), fetched after each
// status read, at most every PLAN_EVERY_MS; and the latest decisions.
const plans = new Map();
const PLAN_EVERY_MS = 2000;
let plansAt = -Infinity;
let history = [];
let requests = null; // the gateway's latest requests (null: this key may not see them)
let keyWanted = null; // resolves when the user saves a key
// Set while the gateway says modeld does not answer it: {since, reason}. The tables
// then show the last state known, marked as such, and every action is off.
let daemonDown = null;
let streaming = false; // whether the events stream is open now

class Unauthorized extends Error {}

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    // The CSP (style-src 'self') drops style attributes; CSSOM properties are allowed.
    else if (name === "widthPercent") node.style.width = `${value}%`;
    else if (name === "class") node.className = value;
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

const gb = (value) => (value === null || value === undefined ? "–" : `${Number(value).toFixed(1)} GB`);
// As modeld writes them everywhere (core/units.py): one decimal below ten seconds, whole
// above; `~` before an estimate.
const seconds = (value) => (value === null || value === undefined ? "–"
  : `${Number(value).toFixed(Math.abs(value) < 10 ? 1 : 0)} s`);
const about = (value) => (value === null || value === undefined ? "–" : `~${seconds(value)}`);

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    askForKey(apiKey ? "The key was refused: enter another." : "This gateway needs an API key.");
    throw new Unauthorized();
  }
  return response;
}

function askForKey(message) {
  const dialog = $("#key-dialog");
  $("#key-message").textContent = message;
  if (!dialog.open) {
    $("#key-input").value = "";
    dialog.showModal();
  }
  if (!keyWanted) {
    let resolve;
    keyWanted = new Promise((done) => (resolve = done));
    keyWanted.resolve = resolve;
  }
  return keyWanted;
}

function setupKeyDialog() {
  const dialog = $("#key-dialog");
  $("#key-form").addEventListener("submit", () => {
    const entered = $("#key-input").value.trim();
    forgetKey();
    apiKey = entered;
    // This tab only, unless asked to remember it (localStorage of this origin only).
    (($("#key-remember").checked) ? localStorage : sessionStorage).setItem(KEY_STORE, apiKey);
    showForget();
    setConnection("checking the key…");
    const waiting = keyWanted;
    keyWanted = null;
    if (waiting) waiting.resolve();
    refresh().catch(() => {});
  });
  $("#key-cancel").addEventListener("click", () => dialog.close());
  $("#key-button").addEventListener("click", () => askForKey("Enter the API key to use."));
  $("#key-forget").addEventListener("click", () => {
    forgetKey();
    setConnection("key forgotten");
    refresh().catch(() => {});
  });
  showForget();
}

function forgetKey() {
  apiKey = "";
  sessionStorage.removeItem(KEY_STORE);
  localStorage.removeItem(KEY_STORE);
  showForget();
}

function showForget() {
  $("#key-forget").hidden = !apiKey;
}

function setConnection(text) {
  $("#connection").textContent = text;
}

const clock = (date) => date.toLocaleTimeString();

function modeldGone(reason) {
  if (!daemonDown) daemonDown = { since: new Date(), reason };
  else daemonDown.reason = reason || daemonDown.reason;
  const where = `the gateway at ${location.host}`;
  setConnection(`modeld unreachable since ${clock(daemonDown.since)}`);
  notice(`modeld is not answering ${where} since ${clock(daemonDown.since)}: ${daemonDown.reason}\n` +
    "The tables show the last state known; switching and stopping are off until it answers. " +
    "This page fills in again by itself.", true);
  render();
}

function modeldBack() {
  if (!daemonDown) return;
  daemonDown = null;
  notice("", false);
  setConnection(streaming ? "live" : "reconnecting…");
}

function notice(text, isError) {
  const box = $("#notice");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = !text;
}

// ---- state --------------------------------------------------------------------

let refreshing = null;
let refreshAgain = false;

async function refresh() {
  // One status read at a time; events during it ask for one more afterwards.
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      const response = await api("/v1/models/status");
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        if (body.error === "daemon_unreachable") modeldGone(body.message);
        throw new Error(`status: HTTP ${response.status}`);
      }
      status = await response.json();
      modeldBack();
      render();
      await refreshPlans().catch(() => {});
    } while (refreshAgain);
  })();
  try {
    await refreshing;
  } finally {
    refreshing = null;
  }
}

let planTimer = null;

async function refreshPlans() {
  // Debounced (memory events come every poll while something loads), with one trailing
  // read so the last change is always shown.
  const wait = PLAN_EVERY_MS - (performance.now() - plansAt);
  if (wait > 0) {
    if (!planTimer) {
      planTimer = setTimeout(() => {
        planTimer = null;
        refreshPlans().catch(() => {});
      }, wait);
    }
    return;
  }
  plansAt = performance.now();
  const names = Object.entries(status.models)
    .filter(([, view]) => view.status !== "running")
    .map(([name]) => name)
    .slice(0, 16);
  const answers = await Promise.all(names.map(async (name) => {
    const response = await api(`/v1/models/${encodeURIComponent(name)}/plan`);
    return [name, response.ok ? await response.json() : null];
  }));
  plans.clear();
  for (const [name, plan] of answers) if (plan) plans.set(name, plan);
  const told = await api("/v1/history?limit=10");
  if (told.ok) history = (await told.json()).entries || [];
  const answered = await api("/v1/requests");
  requests = answered.ok ? ((await answered.json()).requests || []).slice(-10) : null;
  render();
}

function describe(event) {
  switch (event.type) {
    case "switch.plan": {
      const parts = [];
      if (event.stop && event.stop.length) parts.push(`stopping ${event.stop.join(", ")}`);
      if (event.park && event.park.length) parts.push(`parking ${event.park.join(", ")}`);
      return parts.length ? parts.join("; ") : "room is free";
    }
    case "drain":
      return `waiting for requests in flight on ${event.model}`;
    case "switch.stopped":
      return `stopped ${event.stopped}`;
    case "switch.parked":
      return `parked ${event.parked}`;
    case "switch.room_ready":
      return "memory free, starting";
    case "switch.waking":
      return "waking from sleep";
    default:
      return null;
  }
}

let switching = null; // the model a switch (from anyone) is bringing up, for the banner

function banner(event) {
  // A switch announces its plan: say it at the top until the model runs or fails.
  if (event.type === "switch.plan") {
    const moves = [];
    if (event.stop && event.stop.length) moves.push(`stopping ${event.stop.join(", ")}`);
    if (event.park && event.park.length) moves.push(`parking ${event.park.join(", ")}`);
    const memory = event.memory_info || {};
    const needs = typeof memory.required_gb === "number"
      ? ` (needs ${gb(memory.required_gb)}, ${gb(memory.available_before_gb)} free)` : "";
    switching = event.model;
    notice(`Switching to ${event.model}: ${moves.length ? moves.join("; ") : "it fits as is"}${needs}`, false);
  } else if (event.type === "state" && event.model === switching &&
             ["running", "failed", "stopped"].includes(event.to_state)) {
    switching = null;
    // A switch clicked here is told by its own answer (act), with what it stopped.
    if (!busy.has(event.model)) notice(`${event.model} is ${event.to_state}`, event.to_state !== "running");
  }
}

function onEvent(event) {
  if (event.type === "gateway.disconnected") {
    modeldGone(event.reason || "its connection closed");
    return;
  }
  banner(event);
  if (event.type === "state") {
    if (event.to_state === "loading") {
      loadStarted.set(event.model, performance.now());
      steps.set(event.model, event.reason === "wake" ? "waking from sleep" : "loading");
    } else {
      loadStarted.delete(event.model);
      steps.delete(event.model);
    }
    if (event.to_state === "failed" && event.failure) {
      // A state event's failure is its reason, a string (docs/api.schema.json).
      notice(`${event.model} failed: ${event.failure}`, true);
    }
  } else if (event.type === "gpu.health") {
    if (event.to_health !== "ok") {
      notice(`GPU ${event.device} is ${event.to_health}: ${(event.reasons || []).join("; ")}`, true);
    }
  } else {
    const step = describe(event);
    if (step && event.model) steps.set(event.model, step);
  }
  refresh().catch(() => {});
}

// Each message block of a server-sent event stream, as it arrives (read with fetch, so
// the API key can travel in a header).
async function eachMessage(response, onBlock) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      onBlock(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
  }
}

async function followEvents() {
  let delay = 500;
  for (;;) {
    // Each attempt's stream is closed on every way out: a browser keeps six connections
    // to a host, and streams left open would take them all.
    const attempt = new AbortController();
    try {
      const response = await api("/events", {
        headers: { Accept: "text/event-stream" }, signal: attempt.signal,
      });
      if (!response.ok || !response.body) throw new Error(`events: HTTP ${response.status}`);
      await refresh();
      setConnection("live");
      streaming = true;
      delay = 500;
      await eachMessage(response, (block) => {
        for (const line of block.split("\n")) {
          if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
        }
      });
      if (!daemonDown) setConnection("reconnecting…");
    } catch (error) {
      if (error instanceof Unauthorized) {
        setConnection("waiting for an API key");
        await keyWanted;
        continue;
      }
      if (!daemonDown) setConnection("reconnecting…");
    } finally {
      streaming = false;
      attempt.abort();
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

// ---- actions ------------------------------------------------------------------

function refusal(body) {
  const error = typeof body.error === "object" && body.error ? body.error : body;
  const lines = [error.message || error.detail || "refused"];
  const numbers = [
    ["required_gb", "required"],
    ["available_gb", "available"],
    ["freed_gb", "could be freed"],
    ["total_available_gb", "available after stopping all"],
  ]
    .filter(([key]) => typeof error[key] === "number")
    .map(([key, label]) => `${label} ${gb(error[key])}`);
  if (numbers.length) lines.push(numbers.join(" · "));
  if (error.busy) {
    lines.push(
      "busy: " + Object.entries(error.busy).map(([model, n]) => `${model} (${n} requests)`).join(", ")
    );
  }
  return lines.join("\n");
}

async function act(model, action) {
  busy.add(model);
  render();
  const path =
    action === "switch"
      ? `/v1/models/switch?target_model=${encodeURIComponent(model)}`
      : `/v1/models/${encodeURIComponent(model)}/${action}`;
  try {
    const response = await api(path, { method: "POST" });
    const body = await response.json();
    if (!response.ok) {
      notice(`${action} ${model}: ${refusal(body)}`, true);
    } else if (action === "switch") {
      // unloaded_models holds both; the words must match the table's.
      const parked = body.parked_models || [];
      const stopped = (body.unloaded_models || []).filter((name) => !parked.includes(name));
      const moved = [
        stopped.length ? `stopped ${stopped.join(", ")}` : "",
        parked.length ? `parked ${parked.join(", ")}` : "",
      ].filter(Boolean).join("; ");
      notice(body.status === "already_loaded" ? `${model} is already running` : `${model} is running${moved ? ` (${moved})` : ""}`, false);
    } else {
      notice(`${model}: ${body.status}`, false);
    }
  } catch (error) {
    if (!(error instanceof Unauthorized)) notice(`${action} ${model}: ${error.message}`, true);
  } finally {
    busy.delete(model);
    refresh().catch(() => {});
  }
}

// ---- rendering ------------------------------------------------------------------

function renderGpus() {
  const box = $("#gpus");
  box.replaceChildren();
  const gpu = status.gpu || {};
  for (const device of gpu.devices || []) {
    const total = device.total_gb || 1;
    const bar = el("div", { class: "bar", role: "img" });
    const legend = el("div", { class: "legend" });
    const parts = [];
    for (const [name, view] of Object.entries(status.models)) {
      const used = (view.gpu_memory_per_device_gb || {})[String(device.index)];
      if (!used) continue;
      bar.append(el("span", {
        class: `seg ${view.status}`, widthPercent: (100 * used) / total, title: `${name}: ${gb(used)}`,
      }));
      const label = `${name} ${gb(used)}${view.status === "running" ? "" : ` (${view.status})`}`;
      legend.append(el("span", { text: label }));
      parts.push(label);
    }
    if (device.unmanaged_gb) {
      bar.append(el("span", { class: "unmanaged", widthPercent: (100 * device.unmanaged_gb) / total }));
      legend.append(el("span", { text: `unmanaged ${gb(device.unmanaged_gb)}` }));
      parts.push(`unmanaged ${gb(device.unmanaged_gb)}`);
    }
    bar.setAttribute("aria-label", `GPU ${device.index}: ${parts.join(", ") || "nothing loaded"}; free ${gb(device.free_gb)}`);
    const figures = el("div", {
      class: "figures",
      text: `used ${gb(device.used_gb)} · free ${gb(device.free_gb)} · total ${gb(device.total_gb)}`,
    });
    // Its health: ok, degraded, or unusable (nothing is loaded there), and why.
    const health = device.health || "ok";
    const why = (device.health_reasons || []).join("; ");
    const healthy = el("span", { class: `health ${health}`, text: health, title: why });
    box.append(el("div", { class: "gpu", "data-device": device.index, "data-health": health },
      el("strong", { text: `GPU ${device.index}` }), el("small", { text: ` ${device.name || ""} ` }),
      healthy, bar, figures, legend, ...(why ? [el("p", { class: "note", text: why })] : [])));
  }
  if (gpu.stale || gpu.error) box.append(el("p", { class: "note", text: `GPU reading: ${gpu.error || "stale"}` }));
  const parking = status.parking || {};
  const park = $("#parking");
  park.replaceChildren();
  if (parking.ram_budget_gb) {
    const used = parking.ram_used_gb || 0;
    park.append(el("div", { class: "parking" },
      el("strong", { text: "Parked in host RAM" }),
      el("div", { class: "bar", role: "img", "aria-label": `parked ${gb(used)} of ${gb(parking.ram_budget_gb)}` },
        el("span", { class: "seg sleeping", widthPercent: (100 * used) / parking.ram_budget_gb })),
      el("div", { class: "figures", text: `parked ${gb(used)} of ${gb(parking.ram_budget_gb)} · free ${gb(parking.ram_free_gb)}` })));
  }
}

function loadProgress(name, view) {
  if (view.status !== "loading") return null;
  const waking = (steps.get(name) || "").startsWith("waking");
  const estimate = waking && view.parked ? view.parked.estimated_wake_seconds : view.estimated_load_time_seconds;
  const started = loadStarted.get(name);
  const elapsed = started !== undefined
    ? (performance.now() - started) / 1000
    : Math.max(0, (Date.now() - Date.parse(view.since)) / 1000);
  const bar = el("progress", {
    max: String(estimate || 1), value: String(Math.min(elapsed, estimate || 1)), "data-model": name,
    "aria-label": `${name} ${waking ? "waking" : "loading"}`,
  });
  const text = el("small", {
    class: "note progress-text",
    text: `${seconds(elapsed)} of ${about(estimate || 0)}`,
  });
  return [bar, text];
}

// Each base followed by its adapters (an adapter whose base is gone, last).
function inOrder(models) {
  const rows = [];
  for (const [name, view] of Object.entries(models)) {
    if (view.base) continue;
    rows.push([name, view]);
    for (const adapter of view.adapters || []) {
      if (models[adapter]) rows.push([adapter, models[adapter]]);
    }
  }
  for (const [name, view] of Object.entries(models)) {
    if (view.base && !models[view.base]) rows.push([name, view]);
  }
  return rows;
}

function renderModels() {
  const body = $("#models tbody");
  body.replaceChildren();
  for (const [name, view] of inOrder(status.models)) {
    const state = view.status;
    const stepText = steps.get(name);
    const stateCell = el("td", { "data-label": "State" },
      el("span", { class: `state ${state}`, text: state }));
    if (stepText && (state === "loading" || busy.has(name))) stateCell.append(el("small", { class: "note step", text: stepText }));
    const progress = loadProgress(name, view);
    if (progress) stateCell.append(...progress);
    if (state === "failed" && view.failure) {
      stateCell.append(el("small", { class: "note", text: view.failure.reason || "" }));
    }
    const memory = view.base
      ? `in ${view.base}'s`
      : ["running", "loading", "sleeping", "stopping"].includes(state) && view.gpu_memory_used_gb !== null
        ? `${gb(view.gpu_memory_used_gb)} (${view.gpu_memory_source})`
        : `needs ${gb(view.gpu_memory_required_gb)} (${view.gpu_memory_required_source})`;
    const timing = state === "sleeping" && view.parked
      ? `wakes in ${about(view.parked.estimated_wake_seconds)}`
      : `loads in ${about(view.estimated_load_time_seconds)}`;
    const activity = view.activity;
    const requests = `${view.leases || 0} in flight` + (view.waiting ? `, ${view.waiting} waiting` : "") +
      (activity && activity.requests_per_s !== null
        ? ` · ${activity.requests_per_s.toFixed(1)} req/s · ${activity.tokens_per_s.toFixed(0)} tok/s`
        : "");
    const plan = plans.get(name);
    const doomed = plan && plan.action === "refuse" && state !== "running";
    const switchButton = el("button", {
      type: "button", class: doomed ? "doomed" : "primary", "data-action": "switch", "data-model": name,
      disabled: state === "running" || busy.has(name) || Boolean(daemonDown), text: "Switch",
      "aria-label": doomed ? `Switch to ${name} (would be refused now)` : `Switch to ${name}`,
    });
    switchButton.addEventListener("click", () => act(name, "switch"));
    const stopButton = el("button", {
      type: "button", "data-action": "stop", "data-model": name,
      disabled: state === "stopped" || busy.has(name) || Boolean(daemonDown), text: "Stop",
      "aria-label": `Stop ${name}`,
    });
    stopButton.addEventListener("click", () => act(name, "stop"));
    const logsButton = el("button", {
      type: "button", "data-action": "logs", "data-model": name, text: "Logs",
      "aria-label": `Logs of ${name}`, class: state === "failed" ? "primary" : "",
    });
    logsButton.addEventListener("click", () => showLogs(name));
    const planText = plan && state !== "running" && !busy.has(name) && !daemonDown
      ? el("small", {
        class: doomed ? "note plan refused" : "note plan", "data-plan-for": name,
        text: doomed ? `Switch would be refused now: ${plan.message}` : `Switch: ${plan.message}`,
      })
      : null;
    body.append(el("tr", { "data-model": name, class: view.base ? "adapter" : "" },
      el("td", { class: "name", "data-label": "Model" },
        el("strong", { text: name }),
        view.pinned ? el("span", { class: "tag pinned", text: "pinned", title: "pinned in its config: never stopped or parked to make room" }) : null,
        view.base ? el("span", { class: "tag adapter", text: `adapter of ${view.base}`, title: `a LoRA adapter: it runs in ${view.base}, which stays up when it is switched or stopped` }) : null,
        el("small", { text: view.description || "" })),
      stateCell,
      el("td", { "data-label": "Memory", text: memory }),
      el("td", { "data-label": "Health", text: view.health }),
      el("td", { "data-label": "Load / wake", text: timing }),
      el("td", { "data-label": "Requests", text: requests }),
      el("td", { "data-label": "Actions" },
        el("div", { class: "actions" }, switchButton, stopButton, logsButton), planText)));
  }
}

function renderRequests() {
  const section = $("#requests-section");
  section.hidden = requests === null;
  if (requests === null) return;
  const list = $("#requests");
  list.replaceChildren();
  for (const r of requests.slice().reverse()) {
    list.append(el("li", { "data-model": r.model },
      el("time", { text: new Date(r.at * 1000).toLocaleTimeString() }), " ",
      el("strong", { text: r.model }),
      ` ${r.path} → ${r.status}${r.error ? ` ${r.error}` : ""}${r.streamed ? " (streamed)" : ""}` +
      ` in ${Number(r.seconds).toFixed(2)} s (key ${r.key})`));
  }
  if (!requests.length) list.append(el("li", { class: "note", text: "none yet" }));
}

function renderHistory() {
  const list = $("#history");
  list.replaceChildren();
  for (const entry of history.slice().reverse()) {
    const when = new Date(entry.at * 1000).toLocaleTimeString();
    const what = entry.kind === "plan"
      ? `switch planned: ${entry.reason}`
      : `${entry.from_state} → ${entry.to_state} (${entry.reason})` +
        (entry.seconds ? ` after ${entry.seconds.toFixed(1)} s` : "") +
        (entry.failure ? `: ${entry.failure}` : "");
    list.append(el("li", { "data-model": entry.model },
      el("time", { text: when }), " ", el("strong", { text: entry.model }), ` ${what}`));
  }
  if (!history.length) list.append(el("li", { class: "note", text: "nothing yet" }));
}

// ---- logs ---------------------------------------------------------------------

let following = null; // the AbortController of the log being followed

async function showLogs(name) {
  const dialog = $("#logs-dialog");
  const lines = $("#logs-lines");
  const state = $("#logs-state");
  if (following) following.abort();
  following = new AbortController();
  const mine = following;
  $("#logs-title").textContent = `Logs of ${name}`;
  lines.textContent = "";
  const view = status && status.models[name];
  const failed = view && view.status === "failed" && view.failure
    ? `failed: ${view.failure.reason || "see below"}` : "";
  state.textContent = failed || "following…";
  if (!dialog.open) dialog.showModal();
  try {
    const response = await api(`/v1/models/${encodeURIComponent(name)}/logs?follow=true&lines=200`, {
      headers: { Accept: "text/event-stream" }, signal: mine.signal,
    });
    if (!response.ok || !response.body) {
      const body = await response.json().catch(() => ({}));
      state.textContent = `logs: ${refusal(body)}`;
      return;
    }
    await eachMessage(response, (block) => {
      if (block.startsWith("event: end")) {
        state.textContent = failed ? `${failed} · the backend ended` : "the backend ended";
        return;
      }
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const item = JSON.parse(line.slice(6));
        if (item.line === undefined) continue;
        const stick = lines.scrollTop + lines.clientHeight >= lines.scrollHeight - 4;
        lines.append(document.createTextNode(`${item.line}\n`));
        if (stick) lines.scrollTop = lines.scrollHeight;
      }
    });
  } catch (error) {
    if (error.name !== "AbortError" && !(error instanceof Unauthorized)) {
      state.textContent = `logs: ${error.message}`;
    }
  }
}

function closeLogs() {
  if (following) following.abort();
  following = null;
  $("#logs-dialog").close();
}

function render() {
  if (!status) return;
  // Keep keyboard focus on the same button across redraws.
  const focused = document.activeElement;
  const focusKey = focused && focused.dataset && focused.dataset.model
    ? [focused.dataset.model, focused.dataset.action] : null;
  $("main").classList.toggle("stale", Boolean(daemonDown));
  renderGpus();
  renderModels();
  renderRequests();
  renderHistory();
  if (focusKey) {
    const again = document.querySelector(
      `button[data-model="${CSS.escape(focusKey[0])}"][data-action="${focusKey[1]}"]`);
    if (again) again.focus();
  }
}

function tickProgress() {
  // Between events, only the progress bars move.
  if (!status) return;
  for (const [name, view] of Object.entries(status.models)) {
    if (view.status !== "loading") continue;
    const row = document.querySelector(`tr[data-model="${CSS.escape(name)}"]`);
    const fresh = loadProgress(name, view);
    const bar = row && row.querySelector("progress");
    const text = row && row.querySelector(".progress-text");
    if (bar && text && fresh) {
      bar.value = fresh[0].value;
      text.textContent = fresh[1].textContent;
    }
  }
}

setupKeyDialog();
$("#logs-close").addEventListener("click", closeLogs);
$("#logs-dialog").addEventListener("close", () => { if (following) following.abort(); });
setInterval(tickProgress, STEPS);
// Activity (requests and tokens per second) changes without an event: read it again.
// Also before the first answer: a page opened while modeld was down fills in by itself.
setInterval(() => { if (!document.hidden) refresh().catch(() => {}); }, 5000);
refresh().catch(() => {});
followEvents();

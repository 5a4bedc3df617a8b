// The hub's images, sources and jobs, kept current from the API's follow endpoints: the hub's
// events as Server-Sent Events (each one re-reads the document it names), a long poll of each
// unfinished job for its steps, and a build log read as it grows.
//
// Every value from the API is put on the page as text (textContent, createTextNode), never as
// markup. The key is kept in this tab's sessionStorage and sent only to this origin, in headers.
"use strict";

const ZERO_TIME = "0001-01-01T00:00:00Z";
const JOB_ENDED = new Set(["completed", "error", "expired"]);
const LIST_SIZE = 100;
// Browsers open at most six connections to one origin: the event stream, a build log and these
// long polls leave room for the page's other calls.
const MAX_JOB_WATCHERS = 3;
const STORE = window.sessionStorage;

const state = {
  key: null,
  hubId: null,
  images: new Map(),
  sources: new Map(),
  jobs: new Map(),
  jobTrails: new Map(), // job id -> the states this page saw it in, in order
  watched: new Set(), // jobs followed by a long poll
  events: null, // the EventSource of the hub's events
  lastEventId: null,
  session: 0, // bumped on each connect and disconnect, so old loops stop
  buildLog: null, // {imageId, controller}
  pruneJobId: null,
};

const $ = (id) => document.getElementById(id);

// --- Calling the API -------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error;
    super(error ? `${error.title}${error.detail ? `: ${error.detail}` : ""}` : `HTTP ${status}`);
    this.status = status;
    this.code = error ? error.code : "";
  }
}

function headers(extra) {
  return Object.assign({
    "Authorization": `Bearer ${state.key}`,
    "X-Hub-Id": state.hubId,
    "Accept": "application/json",
  }, extra || {});
}

async function call(method, path, body, options) {
  const init = Object.assign({
    method,
    headers: headers(body === undefined ? {} : {"Content-Type": "application/json"}),
    cache: "no-store",
    credentials: "omit",
  }, options || {});
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (response.status === 304) return {response, document: null};
  let document = null;
  try {
    document = await response.json();
  } catch (_) {
    document = null;
  }
  if (!response.ok) throw new ApiError(response.status, document);
  return {response, document};
}

async function data(method, path, body) {
  return (await call(method, path, body)).document.data;
}

// --- Small helpers for the page -------------------------------------------------------------

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function announce(text) {
  $("announcer").textContent = text;
}

function showError(where, error) {
  $(where).textContent = error ? String(error.message || error) : "";
}

function formatSize(bytes) {
  if (!bytes) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

// "1.2 MB of 5.0 MB", "2 of 5 steps".
function formatProgress(done, total, unit) {
  if (unit === "bytes") return `${formatSize(done) || "0 B"} of ${formatSize(total) || "0 B"}`;
  return `${done} of ${total} ${unit}`;
}

function stateBadge(current) {
  return el("span", {className: `state state-${current}`, text: current});
}

// Replaces a node with a new rendering of it, keeping the keyboard focus on the control that
// had it (matched by its data-action), so live updates never throw a keyboard user out.
function replaceKeepingFocus(old, fresh) {
  const focused = document.activeElement;
  const action = old.contains(focused) && focused.dataset ? focused.dataset.action : null;
  old.replaceWith(fresh);
  if (action) {
    const again = fresh.querySelector(`[data-action="${action}"]`);
    if (again) again.focus();
  }
}

function byNewest(a, b) {
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

// --- Connecting -------------------------------------------------------------------------------

function setConnection(text) {
  $("connection").textContent = text;
}

async function connect(key, hubId) {
  state.key = key;
  state.hubId = hubId;
  state.session += 1;
  const session = state.session;
  // The token proves the key first: a wrong key or hub fails here, before anything is shown.
  const token = (await data("GET", "/v1/hubs/current/notifications")).token;
  STORE.setItem("imagejobs.key", key);
  STORE.setItem("imagejobs.hub", hubId);
  $("sign-in").hidden = true;
  $("hub").hidden = false;
  showView("images");
  openEvents(token, session);
  await reloadAll();
  $("images-heading").focus({preventScroll: true});
}

function disconnect() {
  state.session += 1;
  if (state.events) state.events.close();
  state.events = null;
  closeBuildLog();
  STORE.removeItem("imagejobs.key");
  STORE.removeItem("imagejobs.hub");
  state.key = null;
  state.hubId = null;
  for (const map of [state.images, state.sources, state.jobs, state.jobTrails]) map.clear();
  state.watched.clear();
  state.lastEventId = null;
  state.pruneJobId = null;
  // Nothing of the hub stays in the page, hidden or not.
  renderImages();
  renderSources();
  renderJobs();
  $("prune-result").hidden = true;
  $("prune-output").replaceChildren();
  $("import-status").textContent = "";
  $("hub").hidden = true;
  $("sign-in").hidden = false;
  $("api-key").value = "";
  setConnection("Not connected.");
  $("api-key").focus();
}

async function reloadAll() {
  const [images, sources, jobs] = await Promise.all([
    data("GET", `/v1/images?page[size]=${LIST_SIZE}&sort=-created`),
    data("GET", `/v1/images/sources?page[size]=${LIST_SIZE}&sort=-created`),
    data("GET", `/v1/jobs?page[size]=20&sort=-created`),
  ]);
  state.images = new Map(images.map((image) => [image.id, image]));
  state.sources = new Map(sources.map((source) => [source.id, source]));
  for (const job of jobs) noteJob(job);
  renderImages();
  renderSources();
  renderJobs();
  watchJobs();
}

// --- The hub's events -------------------------------------------------------------------------

function openEvents(token, session) {
  if (state.events) state.events.close();
  let url = `/v1/hubs/current/notifications?token=${encodeURIComponent(token)}`;
  if (state.lastEventId) url += `&last_event_id=${encodeURIComponent(state.lastEventId)}`;
  const events = new EventSource(url);
  state.events = events;
  events.onopen = () => setConnection("Live: following the hub's events.");
  events.onmessage = (message) => {
    if (session !== state.session) return;
    if (message.lastEventId) state.lastEventId = message.lastEventId;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    if (!event.context || event.context.hub_id !== state.hubId) return;
    onHubEvent(event).catch((error) => showError("action-error", error));
  };
  events.onerror = () => {
    if (session !== state.session) return;
    if (events.readyState !== EventSource.CLOSED) {
      setConnection("Reconnecting to the hub's events…");
      return;
    }
    // The browser gives up on an answer that is not a stream (the token expired, say): ask for
    // a new token and go on after the last event seen.
    setConnection("Reconnecting to the hub's events…");
    setTimeout(() => reopenEvents(session), 1000);
  };
}

async function reopenEvents(session) {
  if (session !== state.session) return;
  try {
    const token = (await data("GET", "/v1/hubs/current/notifications")).token;
    if (session === state.session) openEvents(token, session);
  } catch (error) {
    setConnection(`Not following the hub's events: ${error.message}. Trying again…`);
    setTimeout(() => reopenEvents(session), 5000);
  }
}

async function onHubEvent(event) {
  const id = event.object && event.object.id;
  if (!id) return;
  if (event.topic.startsWith("job.")) {
    await refreshJob(id);
  } else if (event.topic.startsWith("image.source.")) {
    await refreshSource(id);
  } else if (event.topic.startsWith("image.")) {
    await refreshImage(id);
  }
}

// Reads one document again into its map: one that is gone (404) leaves the page.
async function refreshInto(map, path, id, render) {
  try {
    map.set(id, await data("GET", `${path}/${encodeURIComponent(id)}`));
  } catch (error) {
    if (error.status !== 404) throw error;
    map.delete(id);
  }
  render();
}

function refreshImage(id) {
  return refreshInto(state.images, "/v1/images", id, renderImages);
}

function refreshSource(id) {
  return refreshInto(state.sources, "/v1/images/sources", id, renderSources);
}

async function refreshJob(id) {
  try {
    noteJob(await data("GET", `/v1/jobs/${encodeURIComponent(id)}`));
  } catch (error) {
    if (error.status !== 404) throw error;
    return;
  }
  renderJobs();
  watchJobs();
}

// --- Jobs -------------------------------------------------------------------------------------

// Keeps the newest document of a job, the trail of states it was seen in, and announces a
// change of state.
function noteJob(job) {
  const before = state.jobs.get(job.id);
  state.jobs.set(job.id, job);
  const trail = state.jobTrails.get(job.id) || [];
  const current = job.state.current;
  if (trail[trail.length - 1] !== current) {
    trail.push(current);
    state.jobTrails.set(job.id, trail);
    if (before) announce(`${job.caption}: ${current}`);
  }
  if (job.id === state.pruneJobId) renderPrune(job);
}

// A job just queued by this page, from its Job Descriptor: shown queued at once.
function noteDescriptor(descriptor) {
  const queued = descriptor.job;
  if (state.jobs.has(queued.id)) return;
  const task = queued.tasks[0] || {caption: descriptor.action, steps: []};
  noteJob({
    id: queued.id,
    caption: task.caption,
    queue: queued.queue,
    tasks: [Object.assign({output: null, error: null}, task)],
    state: {current: "queued", changed: queued.schedule, error: null},
  });
  renderJobs();
  watchJobs();
}

function watchJobs() {
  const waiting = [...state.jobs.values()]
    .filter((job) => !JOB_ENDED.has(job.state.current) && !state.watched.has(job.id))
    .sort(byNewest);
  for (const job of waiting) {
    if (state.watched.size >= MAX_JOB_WATCHERS) break;
    followJob(job.id, state.session);
  }
}

// Long polls of one job until it ends: each answer comes as soon as the job differs from the
// version this page holds (its steps and their progress too, which have no events).
async function followJob(id, session) {
  state.watched.add(id);
  let etag = null;
  try {
    while (session === state.session) {
      const options = etag ? {headers: headers({"If-None-Match": etag})} : {};
      let answer;
      try {
        answer = await call("GET", `/v1/jobs/${encodeURIComponent(id)}?wait=30`, undefined,
          options);
      } catch (error) {
        if (error.status === 404) return;
        await new Promise((resolve) => setTimeout(resolve, 2000));
        continue;
      }
      if (session !== state.session) return;
      if (answer.response.status === 304) continue;
      etag = answer.response.headers.get("ETag");
      const job = answer.document.data;
      noteJob(job);
      renderJobs();
      if (JOB_ENDED.has(job.state.current)) return;
    }
  } finally {
    state.watched.delete(id);
    if (session === state.session) watchJobs();
  }
}

function stepState(step, job) {
  if (step.completed !== ZERO_TIME) return "done";
  if (step.started !== ZERO_TIME) return JOB_ENDED.has(job.state.current) ? "failed" : "running";
  return JOB_ENDED.has(job.state.current) ? "not reached" : "planned";
}

function renderStep(step, job) {
  const status = stepState(step, job);
  const item = el("li", {"data-step-state": status},
    el("span", {className: "step-caption", text: step.caption}), " ",
    el("span", {className: "step-state", text: `(${status})`}));
  if (step.progress && status === "running") {
    const {done, total, unit} = step.progress;
    const label = `${step.caption}: ${formatProgress(done, total, unit)}`;
    item.append(el("progress", {max: Math.max(total, 1), value: Math.min(done, total || 1),
      "aria-label": label}), " ", el("span", {className: "hint", text: label}));
  }
  return item;
}

function renderJob(job) {
  const task = (job.tasks && job.tasks[0]) || {steps: []};
  const headingId = `job-${job.id}-heading`;
  const trail = state.jobTrails.get(job.id) || [job.state.current];
  const article = el("li", {className: "job", "data-job-id": job.id},
    el("article", {"aria-labelledby": headingId},
      el("h3", {id: headingId, text: job.caption || task.caption || "Job"}),
      el("p", {className: "meta"}, "Job ", el("span", {className: "id", text: job.id}),
        ": ", el("span", {className: "job-state"}, stateBadge(job.state.current))),
      el("p", {className: "trail", text: `Seen here: ${trail.join(" → ")}`}),
      job.state.error ? el("p", {className: "state-error-message", text: job.state.error.message})
        : null,
      el("ol", {className: "steps", "aria-label": "Steps"},
        ...(task.steps || []).map((step) => renderStep(step, job)))));
  return article;
}

function renderJobs() {
  const list = $("jobs-list");
  const jobs = [...state.jobs.values()].sort(byNewest).slice(0, 30);
  const existing = new Map([...list.children].map((node) => [node.dataset.jobId, node]));
  const fresh = jobs.map((job) => {
    const node = renderJob(job);
    const old = existing.get(job.id);
    if (old && old.isEqualNode(node)) return old;
    return node;
  });
  // Keep nodes that did not change, so screen readers and focus are left alone.
  fresh.forEach((node, index) => {
    const at = list.children[index];
    if (at !== node) list.insertBefore(node, at || null);
  });
  while (list.children.length > fresh.length) list.lastElementChild.remove();
  $("jobs-empty").hidden = jobs.length > 0;
}

// --- Images -----------------------------------------------------------------------------------

function isBuild(image) {
  const origin = image.source && image.source.details && image.source.details.origin;
  return Boolean(origin && origin.type === "docker-file");
}

function sourceName(sourceId) {
  const source = state.sources.get(sourceId);
  return source ? source.name || source.id : sourceId;
}

function renderImageRow(image) {
  const current = image.state.current;
  const label = image.name || image.id;
  const actions = el("td", {className: "actions"});
  if (current === "new" || current === "live") {
    actions.append(el("button", {type: "button", className: "secondary", "data-action": "import",
      "aria-label": `Import ${label}`, text: "Import", onclick: () => startImport(image.id)}));
  }
  if (isBuild(image)) {
    actions.append(el("button", {type: "button", className: "secondary",
      "data-action": "build-log", "aria-label": `Build log of ${label}`, text: "Build log",
      onclick: () => openBuildLog(image.id)}));
  }
  if (current !== "deleting" && current !== "deleted") {
    actions.append(el("button", {type: "button", className: "danger", "data-action": "delete",
      "aria-label": `Delete ${label}`, text: "Delete", onclick: () => deleteImage(image)}));
  }
  const sourceId = image.source && image.source.details ? image.source.details.id : "";
  return el("tr", {"data-image-id": image.id},
    el("td", {text: image.name}),
    el("td", {className: "id", text: image.id}),
    el("td", {},
      stateBadge(current),
      image.state.error ? el("p", {className: "state-error-message",
        text: image.state.error.message}) : null),
    el("td", {text: sourceName(sourceId)}),
    el("td", {text: formatSize(image.size)}),
    actions);
}

function renderImages() {
  const body = $("images-table").tBodies[0];
  const images = [...state.images.values()].sort(byNewest);
  const existing = new Map([...body.rows].map((row) => [row.dataset.imageId, row]));
  const rows = images.map((image) => {
    const row = renderImageRow(image);
    const old = existing.get(image.id);
    if (old) {
      if (old.isEqualNode(row)) return old;
      replaceKeepingFocus(old, row);
    }
    return row;
  });
  rows.forEach((row, index) => {
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
  });
  while (body.rows.length > rows.length) body.lastElementChild.remove();
  $("images-empty").hidden = images.length > 0;
}

async function startImport(imageId) {
  showError("action-error", null);
  try {
    const descriptor = await data("POST", `/v1/images/${encodeURIComponent(imageId)}/tasks`,
      {action: "import"});
    noteDescriptor(descriptor);
    $("import-status").textContent = `Import queued: job ${descriptor.job.id}.`;
    await refreshImage(imageId);
    const image = state.images.get(imageId);
    if (image && isBuild(image)) openBuildLog(imageId);
  } catch (error) {
    showError("action-error", error);
  }
}

async function createAndImport(event) {
  event.preventDefault();
  showError("action-error", null);
  const sourceId = $("import-source").value;
  if (!sourceId) {
    showError("action-error", "Choose a source first (add one with the API).");
    return;
  }
  const body = {source_id: sourceId};
  const name = $("import-name").value.trim();
  if (name) body.name = name;
  try {
    const image = await data("POST", "/v1/images", body);
    state.images.set(image.id, image);
    renderImages();
    $("import-name").value = "";
    await startImport(image.id);
  } catch (error) {
    showError("action-error", error);
  }
}

async function deleteImage(image) {
  const label = image.name || image.id;
  if (!window.confirm(`Delete the image ${label}? The engine removes it.`)) return;
  showError("action-error", null);
  try {
    const descriptor = await data("DELETE", `/v1/images/${encodeURIComponent(image.id)}`);
    noteDescriptor(descriptor);
    announce(`Deleting ${label}.`);
    await refreshImage(image.id);
  } catch (error) {
    showError("action-error", error);
  }
}

// --- A build log, read as it grows ------------------------------------------------------------

function closeBuildLog() {
  if (state.buildLog) state.buildLog.controller.abort();
  state.buildLog = null;
  $("build-log-panel").hidden = true;
}

function openBuildLog(imageId) {
  closeBuildLog();
  const image = state.images.get(imageId);
  const controller = new AbortController();
  state.buildLog = {imageId, controller};
  $("build-log-image").textContent = image ? image.name || image.id : imageId;
  $("build-log").textContent = "";
  $("build-log-state").textContent = "Waiting for the build's output…";
  $("build-log-panel").hidden = false;
  followBuildLog(imageId, controller, 0, state.session);
}

async function followBuildLog(imageId, controller, offset, session) {
  const log = $("build-log");
  let position = offset;
  let ended = false;
  while (!ended && !controller.signal.aborted && session === state.session) {
    try {
      const response = await fetch(
        `/v1/images/${encodeURIComponent(imageId)}/build-log?follow=true&offset=${position}`,
        {headers: headers({"Accept": "text/event-stream"}), cache: "no-store",
          credentials: "omit", signal: controller.signal});
      if (!response.ok) {
        let body = null;
        try {
          body = await response.json();
        } catch (_) {
          body = null;
        }
        throw new ApiError(response.status, body);
      }
      $("build-log-state").textContent = "Following the build…";
      await readServerSentEvents(response.body, (event) => {
        if (event.type === "end") {
          ended = true;
          const end = JSON.parse(event.data);
          $("build-log-state").textContent = `The build ended; the image is ${end.state}.`;
          return;
        }
        const chunk = JSON.parse(event.data);
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(document.createTextNode(chunk.text));
        if (atBottom) log.scrollTop = log.scrollHeight;
        position = event.id ? Number(event.id) : chunk.offset + chunk.text.length;
      });
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) {
        $("build-log-state").textContent = `No build log: ${error.message}`;
        return;
      }
      $("build-log-state").textContent = "The log's stream broke; resuming…";
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

// Server-Sent Events from a response body: calls onEvent({type, id, data}) for each event with
// data, as the stream's text arrives.
async function readServerSentEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n|\r(?!$)/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = {type: "message", id: null, data: []};
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event.type = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id") event.id = text;
      }
      if (event.data.length) onEvent({type: event.type, id: event.id, data: event.data.join("\n")});
    }
  }
}

// --- Sources and the dry-run prune ------------------------------------------------------------

function originSummary(source) {
  const origin = source.origin || {};
  const details = origin.details || {};
  const where = details.target || details.targz_url || details.repo && details.repo.url || "";
  return where ? `${origin.type}: ${where}` : origin.type || "";
}

function renderSources() {
  const body = $("sources-table").tBodies[0];
  const checked = new Set([...body.querySelectorAll("input:checked")].map((box) => box.value));
  const sources = [...state.sources.values()].sort(byNewest);
  body.replaceChildren(...sources.map((source) => {
    const boxId = `prune-${source.id}`;
    const label = source.name || source.id;
    return el("tr", {"data-source-id": source.id},
      el("td", {},
        el("input", {type: "checkbox", id: boxId, name: "source_ids", value: source.id,
          checked: checked.has(source.id)}),
        el("label", {for: boxId, className: "visually-hidden", text: `Select ${label}`})),
      el("td", {text: source.name}),
      el("td", {className: "id", text: source.id}),
      el("td", {text: originSummary(source)}),
      el("td", {}, stateBadge(source.state.current)));
  }));
  $("sources-empty").hidden = sources.length > 0;
  const select = $("import-source");
  const chosen = select.value;
  select.replaceChildren(...sources.filter((source) => source.state.current === "live")
    .map((source) => el("option", {value: source.id, text: `${source.name} (${source.id})`})));
  if (chosen && state.sources.has(chosen)) select.value = chosen;
}

async function dryRunPrune(event) {
  event.preventDefault();
  showError("action-error", null);
  const ids = [...$("sources-table").querySelectorAll("input:checked")].map((box) => box.value);
  if (!ids.length) {
    showError("action-error", "Select at least one source to prune.");
    return;
  }
  try {
    const descriptor = await data("POST", "/v1/images/tasks",
      {action: "prune", contents: {source_ids: ids, dry_run: true}});
    state.pruneJobId = descriptor.job.id;
    $("prune-result").hidden = false;
    $("prune-output").replaceChildren();
    $("prune-state").textContent = `Dry run queued: job ${descriptor.job.id}.`;
    noteDescriptor(descriptor);
  } catch (error) {
    showError("action-error", error);
  }
}

function renderPrune(job) {
  const task = job.tasks && job.tasks[0];
  const current = job.state.current;
  if (!JOB_ENDED.has(current)) {
    $("prune-state").textContent = `Dry run ${current}: job ${job.id}.`;
    return;
  }
  if (current !== "completed") {
    $("prune-state").textContent = `The dry run ended in ${current}` +
      (job.state.error ? `: ${job.state.error.message}` : ".");
    return;
  }
  const output = (task && task.output) || {};
  $("prune-state").textContent = output.summary ? `Dry run completed: ${output.summary}.`
    : "Dry run completed.";
  const rows = [];
  for (const [imageId, outcome] of Object.entries(output)) {
    if (imageId === "summary") continue;
    const image = state.images.get(imageId);
    const name = image && image.name ? `${image.name} (${imageId})` : imageId;
    rows.push(el("dt", {text: name}), el("dd", {text: String(outcome)}));
  }
  $("prune-output").replaceChildren(...rows);
}

// --- Views ------------------------------------------------------------------------------------

function showView(name) {
  for (const button of document.querySelectorAll("[data-view]")) {
    const selected = button.dataset.view === name;
    if (selected) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
    $(`view-${button.dataset.view}`).hidden = !selected;
  }
}

// --- Start ------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("connect-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showError("connect-error", null);
    const key = $("api-key").value.trim();
    const hubId = $("hub-id").value.trim();
    if (!key || !hubId) {
      showError("connect-error", "Enter an API key and the id of its hub.");
      return;
    }
    try {
      await connect(key, hubId);
    } catch (error) {
      disconnect();
      $("hub-id").value = hubId;
      showError("connect-error", `Could not connect: ${error.message}`);
    }
  });
  $("disconnect").addEventListener("click", disconnect);
  for (const button of document.querySelectorAll("[data-view]")) {
    button.addEventListener("click", () => showView(button.dataset.view));
  }
  $("import-form").addEventListener("submit", createAndImport);
  $("prune-form").addEventListener("submit", dryRunPrune);
  $("build-log-close").addEventListener("click", closeBuildLog);
  for (const heading of ["images-heading", "sources-heading", "jobs-heading"]) {
    $(heading).setAttribute("tabindex", "-1");
  }

  const key = STORE.getItem("imagejobs.key");
  const hubId = STORE.getItem("imagejobs.hub");
  if (key && hubId) {
    // Still in this tab's session (a reload): connect again without asking.
    $("hub-id").value = hubId;
    $("sign-in").hidden = true;
    setConnection("Connecting…");
    connect(key, hubId).catch((error) => {
      disconnect();
      $("hub-id").value = hubId;
      showError("connect-error", `Could not connect: ${error.message}`);
    });
  }
});

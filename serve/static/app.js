// KripTik Fleet web UI: plain JS modules, no build step.
// The live log reads /api/build/stream/{id} with fetch() and a streaming body, not EventSource:
// EventSource cannot send an Authorization header, and a ?token= in the URL would land in
// proxy and access logs. The parser below handles id/event/data lines and ": ping" comments;
// on a dropped connection it reconnects with Last-Event-ID, so no event is lost or repeated.
"use strict";

import { apply, el, newModel, renderFleet, renderMerges, renderTournaments, renderTree, showDiff, showFile } from "./builder.js";
import { CHATTY, describe } from "./timeline.js";

const PHASES = ["intent", "fleet", "build", "verify", "judge", "merge", "preview", "satisfy", "done"];
const $ = (sel, root = document) => root.querySelector(sel);
let current = null; // {id, abort: AbortController}

function token() { return localStorage.getItem("kriptik.token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, options.headers || {});
  if (options.body) headers["Content-Type"] = "application/json";
  const res = await fetch(path, Object.assign({}, options, { headers }));
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error((body && body.message) || res.statusText);
  return body;
}

function cell(tr, text) { const td = document.createElement("td"); td.textContent = text ?? ""; tr.appendChild(td); return td; }
function fmtTime(ts) { return ts ? new Date(ts * 1000).toLocaleString() : ""; }
function fmtClock(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : ""; }
function fill(tbody, rows, render) { tbody.replaceChildren(...rows.map((r) => { const tr = document.createElement("tr"); render(tr, r); return tr; })); }

// --- list of builds --------------------------------------------------------------------------

async function showList() {
  $("#main").replaceChildren($("#list-view").content.cloneNode(true));
  $("#new-build").addEventListener("submit", async (e) => {
    e.preventDefault();
    const created = await api("/api/builds", { method: "POST", body: JSON.stringify({
      prompt: $("#prompt").value, budget_usd: Number($("#budget-usd").value) || null }) });
    location.hash = "#/build/" + created.id;
  });
  try {
    const builds = await api("/api/builds");
    $("#builds-empty").hidden = builds.length > 0;
    fill($("#builds tbody"), builds, (tr, b) => {
      tr.className = "build-row";
      const a = document.createElement("a"); a.href = "#/build/" + b.id; a.textContent = b.id;
      cell(tr, "").appendChild(a); cell(tr, b.title); cell(tr, b.status); cell(tr, b.phase); cell(tr, fmtTime(b.started_at));
    });
  } catch (err) { $("#builds-empty").hidden = false; $("#builds-empty").textContent = err.message; }
}

// --- one build: phases, budget, timeline -----------------------------------------------------

function renderPhases(s) {
  const at = PHASES.indexOf(s.phase);
  $("#timeline").replaceChildren(...PHASES.map((p, i) => el("li", {
    "data-phase": p, text: p,
    class: i < at || s.status === "completed" ? "done" : i === at ? (s.status === "failed" ? "current failed" : "current") : "",
  })));
}

function renderBudget(b) {
  if (!b) return;
  const pct = b.limit_usd > 0 ? Math.min(100, (100 * b.spent_usd) / b.limit_usd) : 0;
  const warn = b.warn_fraction ?? 0.8;
  $("#budget-meter").className = "meter " + (b.status || "");
  $("#budget-meter").dataset.pct = pct.toFixed(1);
  $("#budget-meter .fill").style.width = Math.max(pct, pct > 0 ? 0.5 : 0) + "%";
  $("#budget-meter .tick.warn").style.left = 100 * warn + "%";
  $("#budget-warn-label").textContent = `warns at $${(warn * b.limit_usd).toFixed(2)}`;
  $("#budget-limit-label").textContent = `pauses at $${b.limit_usd.toFixed(2)}`;
  const tokens = b.llm_tokens ? ` · ${b.llm_tokens.toLocaleString("en-US")} LLM tokens` : "";
  $("#budget-text").textContent = `$${b.spent_usd.toFixed(2)} of $${b.limit_usd.toFixed(2)} (${b.status})${tokens}`;
  if (b.llm_tokens == null) return;
  $("#budget-stats").replaceChildren(
    el("dt", { text: "Dollars" }), el("dd", { text: `$${b.spent_usd.toFixed(b.spent_usd < 0.01 ? 6 : 2)}` }),
    el("dt", { text: "LLM tokens" }), el("dd", { text: (b.llm_tokens || 0).toLocaleString("en-US") }),
    el("dt", { text: "Compute" }), el("dd", { text: `${(b.compute_seconds || 0).toFixed(1)} s` }));
}

function logLine(ev) {
  let body = null;
  try { body = JSON.parse(ev.data); } catch (_) { /* not JSON: shown as it came */ }
  const kind = body?.kind || ev.event;
  const line = body ? describe(kind, body.data) : { icon: "•", tone: "quiet", text: `${ev.event} ${ev.data}` };
  const li = el("li", { class: `log-line ev-${ev.event} tone-${line.tone}${CHATTY.has(kind) ? " chatty" : ""}`, "data-id": ev.id || "", "data-kind": kind },
    el("span", { class: "icon", text: line.icon, "aria-hidden": "true" }),
    el("details", {}, el("summary", {}, el("span", { class: "when", text: fmtClock(body?.ts) }), " ", el("span", { class: "text", text: line.text })),
      el("pre", { class: "raw", text: JSON.stringify(body || ev.data, null, 2) })));
  const log = $("#log"); const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.appendChild(li); if (atBottom) log.scrollTop = log.scrollHeight;
  return body;
}

async function streamEvents(id, abort, onEvent) {
  let lastId = null;
  for (let attempt = 0; !abort.signal.aborted; attempt++) {
    try {
      const headers = { Authorization: "Bearer " + token(), Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const res = await fetch(`/api/build/stream/${id}`, { headers, signal: abort.signal });
      if (res.status === 401 || res.status === 404) { $("#stream-state").textContent = res.statusText; return; }
      $("#stream-state").textContent = "live";
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          const ev = { event: "message", data: "", id: null };
          for (const line of block.split("\n")) {
            if (!line || line.startsWith(":")) continue;
            const i = line.indexOf(":"); const k = i < 0 ? line : line.slice(0, i);
            const v = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (k === "data") ev.data += (ev.data ? "\n" : "") + v; else if (k === "event") ev.event = v; else if (k === "id") ev.id = v;
          }
          if (ev.id) lastId = ev.id;
          if (ev.event === "end") { $("#stream-state").textContent = "ended"; onEvent(ev); return; }
          if (ev.data) onEvent(ev);
        }
      }
    } catch (err) { if (abort.signal.aborted) return; }
    $("#stream-state").textContent = "reconnecting…";
    await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** Math.min(attempt, 5))));
  }
}

// --- preview screenshots ---------------------------------------------------------------------
// An <img src> cannot send the Authorization header, so each PNG is fetched with it and shown
// through an object URL. A name always holds the same bytes, so each is fetched once; the URLs of
// screenshots no longer listed are revoked, and all of them when the page leaves the build.

async function blobUrl(path, signal) {
  const res = await fetch(path, { headers: { Authorization: "Bearer " + token() }, signal });
  if (!res.ok) throw new Error(res.statusText);
  return URL.createObjectURL(await res.blob());
}

function shotCaption(s) { return `${fmtTime(s.taken_at)}${s.path !== "/" ? " · " + s.path : ""}${s.tree ? " · tree " + s.tree : ""}`; }

function openShot(s, url) {
  $("#shot-full img").src = url; $("#shot-full figcaption").textContent = shotCaption(s);
  $("#shot-full").showModal();
}

function renderShots(list, urls) {
  const latest = list[0];
  $("#shot-latest").hidden = !latest; $("#shots-empty").hidden = Boolean(latest);
  if (latest) {
    $("#shot-latest img").src = urls.get(latest.name); $("#shot-latest").dataset.name = latest.name;
    $("#shot-latest figcaption").textContent = "Latest screenshot: " + shotCaption(latest);
    $("#shot-latest img").onclick = () => openShot(latest, urls.get(latest.name));
  }
  $("#shots").replaceChildren(...list.map((s) => {
    const button = document.createElement("button");
    button.type = "button"; button.className = "shot"; button.dataset.name = s.name; button.title = shotCaption(s);
    const img = document.createElement("img"); img.src = urls.get(s.name); img.alt = "screenshot, " + fmtTime(s.taken_at);
    button.appendChild(img); button.addEventListener("click", () => openShot(s, urls.get(s.name)));
    return button;
  }));
}

// Returns the function that brings the strip up to date (called with each status poll and on events).
function screenshots(id, signal) {
  const urls = new Map(); // name → object URL
  const revokeAll = () => { for (const url of urls.values()) URL.revokeObjectURL(url); urls.clear(); };
  signal.addEventListener("abort", revokeAll);
  $("#shot-full").addEventListener("click", () => $("#shot-full").close());
  let shown = null; let busy = false;
  return async () => {
    if (busy || signal.aborted) return;
    busy = true;
    try {
      const list = await api(`/api/build/screenshots/${id}`);
      await Promise.all(list.filter((s) => !urls.has(s.name)).map(async (s) => {
        try { urls.set(s.name, await blobUrl(`/api/build/screenshots/${id}/${encodeURIComponent(s.name)}`, signal)); }
        catch (_) { /* dropped meanwhile, or the page left: the next poll lists again */ }
      }));
      if (signal.aborted) { revokeAll(); return; }
      const listed = new Set(list.map((s) => s.name));
      for (const [name, url] of urls) if (!listed.has(name)) { URL.revokeObjectURL(url); urls.delete(name); }
      const ready = list.filter((s) => urls.has(s.name));
      const names = ready.map((s) => s.name).join(",");
      if (names !== shown) { shown = names; renderShots(ready, urls); }
    } catch (err) { if (!signal.aborted) $("#action-msg").textContent = err.message; }
    finally { busy = false; }
  };
}

// --- main's files and the merges' diffs --------------------------------------------------------

function mainBrowser(id) {
  let head = null; let openPath = null;
  const pickFile = async (f, button) => {
    openPath = f.path;
    document.querySelectorAll("#files .tree-file").forEach((b) => b.classList.toggle("active", b === button));
    try { showFile($("#code"), await api(`/api/build/file/${id}?path=${encodeURIComponent(f.path)}`)); }
    catch (err) { $("#code").replaceChildren(el("p", { class: "error", text: err.message })); }
  };
  return async (mainCommit) => {
    if (!mainCommit || mainCommit === head) return;
    head = mainCommit; // asked once per head, even when the answer is "not kept any more"
    let tree;
    try { tree = await api(`/api/build/tree/${id}`); } catch (err) { $("#main-head").textContent = err.message; return; }
    $("#main-head").textContent = `${tree.files.length} files at ${tree.head.slice(0, 8)}`;
    renderTree($("#files"), tree, pickFile);
    const again = tree.files.find((f) => f.path === openPath) || tree.files.find((f) => /index\.html$/.test(f.path)) || tree.files[0];
    if (again) pickFile(again, $(`#files .tree-file[data-path="${CSS.escape(again.path)}"]`));
  };
}

// --- one build -------------------------------------------------------------------------------

async function showBuild(id) {
  $("#main").replaceChildren($("#build-view").content.cloneNode(true));
  $("#build-id").textContent = id;
  const abort = new AbortController(); current = { id, abort };
  const model = newModel();
  const opened = Date.now() / 1000;
  let status = { components: [], merges: [] }; let shownMerge = null; let userPicked = false;
  const browseMain = mainBrowser(id);
  const pickMerge = (m, button, byUser = true) => {
    shownMerge = m.commit; userPicked ||= byUser;
    document.querySelectorAll("#merges .merge-pick").forEach((b) => b.classList.toggle("active", b === button));
    showDiff($("#diff"), api, id, m);
  };
  const draw = () => {
    renderFleet($("#fleet tbody"), model, status.components || []);
    renderTournaments($("#tournaments"), model);
    const merges = renderMerges($("#merges"), model, status.merges || [], pickMerge);
    const shown = merges.find(([m]) => m.commit === shownMerge);
    const newest = merges.filter(([m]) => m.commit).pop();
    if (shown && (userPicked || shown === newest)) shown[1].classList.add("active");
    else if (newest) pickMerge(...newest, false); // follow the newest merge's diff until the user picks one
  };
  let drawing = null; // one redraw per animation frame, however many events arrive in it
  const redraw = () => { drawing ??= requestAnimationFrame(() => { drawing = null; draw(); }); };
  const showPreview = (url) => {
    if (!url || $("#preview").dataset.src === url) return;
    $("#preview").src = $("#preview").dataset.src = url; $("#preview-note").hidden = true;
    $("#preview-link").href = url; $("#preview-link").textContent = url;
  };
  const refresh = async () => {
    try {
      status = await api(`/api/build/status/${id}`);
      $("#build-status").textContent = status.status; $("#build-status").className = "badge st-" + status.status;
      $("#build-error").hidden = !status.error; $("#build-error").textContent = status.error || "";
      $("#cancel").disabled = ["completed", "failed", "cancelled"].includes(status.status);
      $("#resume").disabled = status.status !== "paused";
      renderPhases(status); renderBudget(status.budget); showPreview(status.preview_url);
      browseMain(status.main_commit); redraw();
    } catch (err) { $("#action-msg").textContent = err.message; }
  };
  const act = (path, body) => async (e) => {
    e.preventDefault();
    try { await api(path, { method: "POST", body: body ? JSON.stringify(body()) : undefined }); $("#action-msg").textContent = ""; }
    catch (err) { $("#action-msg").textContent = err.message; }
    refresh();
  };
  $("#cancel").addEventListener("click", act(`/api/build/cancel/${id}`));
  $("#resume").addEventListener("click", act(`/api/build/resume/${id}`));
  $("#raise-form").addEventListener("submit", act(`/api/build/budget/${id}`, () => ({ usd: Number($("#raise-usd").value) })));
  $("#take-control").addEventListener("click", async () => {
    try { const { url } = await api(`/api/build/take-control/${id}`, { method: "POST" }); window.open(url, "_blank", "noopener"); }
    catch (err) { $("#action-msg").textContent = err.message; }
  });
  $("#show-all").addEventListener("change", (e) => $("#log").classList.toggle("show-all", e.target.checked));
  const refreshShots = screenshots(id, abort.signal);
  await refresh(); refreshShots();
  const timer = setInterval(() => (abort.signal.aborted ? clearInterval(timer) : (refresh(), refreshShots())), 5000);
  streamEvents(id, abort, (ev) => {
    const body = ev.event === "end" ? null : logLine(ev);
    if (body?.kind) {
      apply(model, body.kind, body.data || {});
      if (body.kind === "intent.locked") $("#build-title").textContent = body.data.name;
      if (body.kind === "preview.refreshed" && body.ts > opened) { // live: reload the frame on main's new code
        showPreview(body.data.url); $("#preview").src = $("#preview").dataset.src; refreshShots();
      }
      redraw();
    }
    if (ev.event === "budget") { try { renderBudget(JSON.parse(ev.data).data); } catch (_) { /* a partial budget event */ } }
    if (["phase", "merge", "tournament", "sandbox", "build", "end"].includes(ev.event)) refresh();
    if (["merge", "build", "end"].includes(ev.event)) refreshShots();
  });
}

function route() {
  if (current) { current.abort.abort(); current = null; }
  const m = location.hash.match(/^#\/build\/([^/]+)$/);
  return m ? showBuild(decodeURIComponent(m[1])) : showList();
}

$("#token").value = token();
$("#token-form").addEventListener("submit", (e) => { e.preventDefault(); localStorage.setItem("kriptik.token", $("#token").value.trim()); route(); });
window.addEventListener("hashchange", route);
route();

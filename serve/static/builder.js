// The builder view's model and panels: what the event log says about each slot, tournament and
// merge (folded by `apply`, one event at a time, the backlog first), drawn by the render functions.
// The build's status (polled) adds what the log cannot say (slot statuses, stored merges);
// main's files and each merge's diff come from the read-only /api/build/{tree,file,diff} routes.
"use strict";

import { agentName } from "./timeline.js";

export const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c != null && c !== false));
  return node;
};

export function newModel() {
  return { slots: new Map(), decisions: new Map(), eliminated: new Set(), merges: new Map(), order: [] };
}

// A team names itself after its slot with "." where the slot has "~" (frontend.polished ↔ frontend~polished).
const slotOfTeam = (component) => component.replace(".", "~");

function slot(model, id) {
  if (!model.slots.has(id)) {
    model.slots.set(id, { id, component: id.split("~")[0], sandbox: null, backend: "", status: "", agentCount: 0,
      agents: new Map(), tasks: 0, progress: null, swarm: null, verifiers: new Map(), verified: null, check: null });
  }
  return model.slots.get(id);
}

function merge(model, d) {
  const key = d.commit || `${d.component}:queued`;
  const queued = model.merges.get(`${d.component}:queued`);
  if (d.commit && queued) model.merges.delete(`${d.component}:queued`);
  const m = model.merges.get(key) || { component: d.component, slot: d.slot, changed: [], findings: [] };
  model.merges.set(key, Object.assign(m, Object.fromEntries(Object.entries(d).filter(([, v]) => v != null && v !== ""))));
  return m;
}

export function apply(model, kind, d) {
  switch (kind) {
    case "fleet.ready": d.slots.forEach((s) => slot(model, s)); model.order = d.order || []; break;
    case "slot.acquired": case "slot.respawned": case "slot.restored": {
      const s = slot(model, d.slot); s.sandbox = d.sandbox_id; if (d.backend) s.backend = d.backend; break;
    }
    case "slot.building": slot(model, d.slot).status = d.attempt ? "fixing" : "building"; break;
    case "slot.built": slot(model, d.slot).status = "built"; break;
    case "slot.blocked": slot(model, d.slot).status = "blocked"; break;
    case "slot.verified": Object.assign(slot(model, d.slot), { verified: d, status: d.passed ? "verified" : "verify failed" }); break;
    case "team.started": { const s = slot(model, slotOfTeam(d.component)); s.agentCount = d.agents; s.tasks = d.tasks; break; }
    case "team.check": slot(model, slotOfTeam(d.component)).check = d.ok; break;
    case "team.progress": slot(model, d.slot || slotOfTeam(d.component)).progress = d; break;
    case "task.started": case "task.done": {
      const s = slot(model, slotOfTeam(d.component));
      const was = s.agents.get(agentName(d.agent));
      s.agents.set(agentName(d.agent), { task: d.task, attempt: d.attempt, done: kind === "task.done", level: d.level,
        step: kind === "task.done" ? was?.step : null });
      break;
    }
    case "agent.step": {
      const s = slot(model, d.sid || slotOfTeam(d.component));
      const a = s.agents.get(agentName(d.agent)) || { task: d.task, done: false, level: 0 };
      s.agents.set(agentName(d.agent), Object.assign(a, { step: d }));
      break;
    }
    case "swarm.report": slot(model, d.sid).swarm = d; break;
    case "verifier.report": slot(model, d.sid).verifiers.set(d.verifier, d); break;
    case "tournament.decision": case "judge.decision": model.decisions.set(d.component, d); break;
    case "tournament.eliminated": model.eliminated.add(d.slot); break;
    case "merge.queued": if (![...model.merges.values()].some((m) => m.component === d.component && m.commit)) merge(model, { ...d, status: "queued" }); break;
    case "merge.accepted": merge(model, { ...d, status: "merged" }); break;
    case "merge.rejected": merge(model, { ...d, status: "rejected" }); break;
    default: break;
  }
}

// --- fleet ------------------------------------------------------------------------------------

// An agent's latest step: "$ npm test" for an exec, "write_file src/App.jsx", or the model's words.
const stepText = (st) => (!st.tool ? `“${st.detail}”` : st.tool === "exec" ? `$ ${st.detail}` : `${st.tool} ${st.detail}`)
  + (st.ok ? "" : " ✗");

function agentsCell(s) {
  const names = [...s.agents.keys()];
  for (let n = names.length; n < s.agentCount; n++) names.push(`agent ${n + 1}`);
  if (!names.length) return el("span", { class: "muted", text: "—" });
  return el("ul", { class: "agents" }, ...names.map((name) => {
    const a = s.agents.get(name);
    const doing = !a ? "idle" : a.done ? `done: ${a.task}` : `working on ${a.task}${a.level ? " (retry)" : ""}`;
    return el("li", { class: "agent " + (!a ? "idle" : a.done ? "done" : "busy") },
      el("span", { class: "who", text: name }), " ", el("span", { class: "what", text: doing }),
      a?.step ? el("div", { class: "step" + (a.step.ok ? "" : " bad"), text: stepText(a.step) }) : "");
  }));
}

function verificationCell(s) {
  const score = s.swarm?.score ?? s.verified?.score;
  if (score == null) return el("span", { class: "muted", text: "not verified yet" });
  const passed = s.swarm ? s.swarm.passed : s.verified.passed;
  const names = new Set([...Object.keys(s.swarm?.verifiers || {}), ...s.verifiers.keys()]);
  const chips = [...names].map((v) => {
    const r = s.verifiers.get(v); const ok = r ? r.passed : s.swarm.verifiers[v];
    const note = r && !r.passed ? ` · ${r.errors} error${r.errors === 1 ? "" : "s"}` : "";
    return el("span", { class: "chip " + (ok ? "ok" : "bad"), title: r ? `score ${r.score.toFixed(2)}` : "", text: `${ok ? "✓" : "✗"} ${v.replace(/_/g, " ")}${note}` });
  });
  const tests = s.verified ? ` · tests ${s.verified.tests_passed}/${s.verified.tests_total}` : "";
  return el("div", {}, el("div", { class: "score " + (passed ? "ok" : "bad") },
    el("b", { class: "swarm-score", text: score.toFixed(2) }), el("span", { class: "muted", text: ` swarm ${passed ? "passed" : "failed"}${tests}` })),
  el("div", { class: "chips" }, ...chips));
}

// "50% · task api-tests: check passed": the slot's latest team.progress line.
const progressText = (p) => (p ? (p.fraction == null ? "" : Math.round(100 * p.fraction) + "% · ") + (p.message || "") : "");

export function renderFleet(tbody, model, components) {
  const rows = new Map(components.map((c) => [c.slot, c]));
  for (const id of model.slots.keys()) if (!rows.has(id)) rows.set(id, { slot: id, component: id.split("~")[0] });
  tbody.replaceChildren(...[...rows.values()].map((c) => {
    const s = model.slots.get(c.slot) || slot(model, c.slot);
    const status = c.status && c.status !== "pending" ? c.status : s.status || "pending";
    const frac = s.progress?.fraction;
    return el("tr", { "data-slot": c.slot, "data-component": c.component, class: model.eliminated.has(c.slot) ? "lost" : "" },
      el("td", {}, el("b", { text: c.slot }), el("div", {}, el("span", { class: "badge st-" + status, text: status }))),
      el("td", {}, el("code", { class: "sandbox-id", text: c.sandbox_id || s.sandbox || "—" }),
        el("div", { class: "muted", text: s.backend ? `${s.backend} backend` : "" })),
      el("td", {}, agentsCell(s)),
      el("td", {}, el("div", { class: "bar" }, el("div", { class: "bar-fill", style: `width:${Math.round(100 * (frac || 0))}%` })),
        el("div", { class: "progress-line", text: progressText(s.progress) }), s.tasks ? el("div", { class: "muted", text: `${s.tasks} tasks` }) : null),
      el("td", {}, verificationCell(s)));
  }));
}

// --- tournaments ------------------------------------------------------------------------------

export function renderTournaments(root, model) {
  const byComponent = new Map();
  for (const id of model.slots.keys()) {
    if (!id.includes("~")) continue;
    const c = id.split("~")[0];
    byComponent.set(c, [...(byComponent.get(c) || []), id]);
  }
  if (!byComponent.size) return;
  root.replaceChildren(...[...byComponent].map(([component, ids]) => {
    const decision = model.decisions.get(component);
    const ranked = new Map((decision?.ranking || []).map((r) => [r.candidate, r]));
    const cards = ids.map((id) => {
      const s = model.slots.get(id); const r = ranked.get(id);
      const won = decision?.winner === id; const lost = model.eliminated.has(id) || (decision && !won);
      const terms = Object.entries(r?.terms || {}).map(([name, t]) => el("li", {},
        el("span", { text: name }), el("span", { class: "bar small" }, el("span", { class: "bar-fill", style: `width:${Math.round(100 * t.value)}%` })),
        el("span", { class: "muted", text: t.value.toFixed(2) })));
      return el("div", { class: "candidate" + (won ? " winner" : lost ? " eliminated" : ""), "data-slot": id },
        el("div", { class: "cand-head" }, el("b", { text: id.split("~")[1] }),
          won ? el("span", { class: "badge st-merged", text: "winner" }) : lost ? el("span", { class: "badge st-lost", text: "eliminated" }) : null),
        el("div", { class: "big-score", text: r ? r.score.toFixed(3) : "—" }), el("div", { class: "muted", text: "judge score" }),
        el("div", { class: "muted", text: `swarm ${s.swarm ? s.swarm.score.toFixed(2) : "—"} · tests ${s.verified ? `${s.verified.tests_passed}/${s.verified.tests_total}` : "—"}` }),
        terms.length ? el("ul", { class: "terms" }, ...terms) : null,
        r?.llm_reasons ? el("p", { class: "llm", text: r.llm_reasons }) : null);
    });
    const reasons = decision ? el("ol", { class: "reasons" }, ...decision.reasons.map((t) => el("li", { text: t })))
      : el("p", { class: "muted", text: "The judge has not decided yet." });
    return el("div", { class: "card tournament", "data-component": component },
      el("h3", { text: `${component}: ${ids.length} candidates` }), el("div", { class: "candidates" }, ...cards),
      el("h4", { text: decision?.llm_used ? "The judge's reasons (evidence and an LLM's opinion)" : "The judge's reasons (evidence)" }), reasons);
  }));
}

// --- merges and their diffs --------------------------------------------------------------------

function diffLines(text) {
  return el("pre", { class: "diff-text" }, ...text.split("\n").map((line) => {
    const kind = line.startsWith("@@") ? "hunk" : line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ") || line.startsWith("index ") || line.startsWith("new file") || line.startsWith("deleted file") ? "meta"
      : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "ctx";
    return el("span", { class: "dl " + kind, text: line + "\n" });
  }));
}

export async function showDiff(root, api, buildId, m) {
  root.replaceChildren(el("p", { class: "muted", text: `Loading ${m.commit.slice(0, 8)}…` }));
  let diff;
  try { diff = await api(`/api/build/diff/${buildId}/${m.commit}`); } catch (err) { root.replaceChildren(el("p", { class: "error", text: err.message })); return; }
  const body = el("div", { class: "diff-body" });
  const pick = (f, button) => {
    root.querySelectorAll(".diff-file").forEach((b) => b.classList.toggle("active", b === button));
    body.replaceChildren(f.binary ? el("p", { class: "muted", text: "A binary file." }) : diffLines(f.diff));
    if (f.truncated) body.append(el("p", { class: "muted", text: "The rest of this diff is left out (too long)." }));
  };
  const files = diff.files.map((f) => {
    const b = el("button", { type: "button", class: "diff-file", "data-path": f.path, onclick: () => pick(f, b) },
      el("span", { class: "fs fs-" + f.status, text: f.status }), " ", f.path);
    return b;
  });
  root.replaceChildren(el("div", { class: "viewer-head" }, el("code", { text: diff.commit.slice(0, 10) }),
    el("span", { class: "muted", text: ` ${m.component} · ${diff.files.length} files · parent ${diff.parent.slice(0, 8)}` })),
  el("div", { class: "diff-files" }, ...files), body);
  if (diff.files.length) pick(diff.files[0], files[0]);
}

export function renderMerges(root, model, stored, onPick) {
  const all = [...model.merges.values()];
  for (const m of stored) if (m.commit && !model.merges.has(m.commit)) all.push({ ...m, changed: [], findings: [], reason: m.message });
  if (!all.length) return [];
  const picks = []; // [merge, its button], oldest first
  root.replaceChildren(...all.map((m) => {
    const button = el("button", { type: "button", class: "merge-pick", disabled: !m.commit, onclick: () => onPick(m, button) },
      el("span", { class: "badge st-" + m.status, text: m.status }), " ", el("b", { text: m.component }),
      m.commit ? el("code", { text: " " + m.commit.slice(0, 8) }) : null);
    picks.push([m, button]);
    const about = m.status === "queued" ? (m.waiting_for?.length ? `waiting for ${m.waiting_for.join(", ")}` : "at the gate")
      : `${m.slot || ""} · ${(m.changed || []).length} files · ${m.reason || ""}`;
    return el("li", { class: "merge st-" + m.status, "data-component": m.component }, button, el("div", { class: "muted", text: about }),
      m.findings?.length ? el("ul", { class: "findings" }, ...m.findings.map((f) => el("li", { text: f }))) : null);
  }));
  return picks;
}

// --- main's files ---------------------------------------------------------------------------------

export function renderTree(root, tree, onPick) {
  const top = { dirs: new Map(), files: [] };
  for (const f of tree.files) {
    const parts = f.path.split("/"); let node = top;
    for (const dir of parts.slice(0, -1)) { if (!node.dirs.has(dir)) node.dirs.set(dir, { dirs: new Map(), files: [] }); node = node.dirs.get(dir); }
    node.files.push(f);
  }
  const draw = (node) => el("ul", {},
    ...[...node.dirs].sort().map(([name, sub]) => el("li", {}, el("details", { open: true }, el("summary", { text: name + "/" }), draw(sub)))),
    ...node.files.map((f) => el("li", {}, el("button", { type: "button", class: "tree-file", "data-path": f.path, title: f.component ? `written by ${f.component}` : "",
      onclick: (e) => onPick(f, e.currentTarget) }, f.path.split("/").pop(), el("span", { class: "muted", text: ` ${f.size} B` })))));
  root.replaceChildren(draw(top));
}

export function showFile(root, file) {
  const lines = file.binary ? [] : file.content.replace(/\n$/, "").split("\n");
  root.replaceChildren(el("div", { class: "viewer-head" }, el("code", { text: file.path }),
    el("span", { class: "muted", text: ` ${file.size} bytes${file.truncated ? ", first part shown" : ""}` })),
  file.binary ? el("p", { class: "muted", text: "A binary file." })
    : el("pre", { class: "code-text" }, ...lines.map((l) => el("span", { class: "ln", text: l + "\n" }))));
}

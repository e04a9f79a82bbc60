// One human line per event of the build's log: an icon, a tone (its colour) and a sentence.
// The icons are plain Unicode symbols that the common system fonts carry (no emoji font needed).
// A kind this page does not know still gets a line: its kind and its data as compact JSON.
"use strict";

const LEVELS = ["a first attempt", "a retry", "a hand-off", "a re-plan"];

export function agentName(agent) {
  const n = String(agent || "").split(":").pop();
  return /^\d+$/.test(n) ? `agent ${Number(n) + 1}` : n || "an agent";
}

function firstLine(text, max = 140) {
  const line = String(text || "").split("\n").find((l) => l.trim()) || "";
  return line.length > max ? line.slice(0, max - 1) + "…" : line;
}

const pct = (x) => (x == null ? "" : Math.round(100 * x) + "%");
const short = (commit) => String(commit || "").slice(0, 8);
const list = (xs) => (xs || []).join(", ");
const money = (usd) => (usd == null ? "no limit" : "$" + Number(usd).toFixed(2));

// kind → [icon, tone, sentence(data)]
const KINDS = {
  "build.phase": ["➜", "phase", (d) => `Build phase: ${d.phase}`],
  "build.resumed": ["▶", "phase", (d) => `Build resumed in ${d.phase}`],
  "coordinator.resumed": ["↻", "phase", (d) => `Coordinator restarted; carries on in ${d.phase}`],
  "build.paused": ["❚❚", "warn", (d) => `Build paused: ${d.reason} (spent ${money(d.spent_usd)})`],
  "build.cancelled": ["■", "error", (d) => `Build cancelled in ${d.phase}`],
  "build.error": ["✗", "error", (d) => `${d.fatal === false ? "A step failed" : "Build failed"}${d.component ? ` in ${d.component}` : ""}: ${firstLine(d.error)}`],
  "build.done": ["★", "good", (d) => `Build done: main's tree ${short(d.tree_hash)}`],
  "intent.locked": ["◆", "phase", (d) => `Intent locked: contract “${d.name}”`],
  "intent.satisfaction": ["◎", "good", (d) => `Success criteria: ${d.passed}/${d.total} pass${d.done ? ", the app is done" : ""}`],
  "fleet.ready": ["⚓", "fleet", (d) => `Fleet ready: ${d.slots.length} sandboxes (${list(d.slots)})`],
  "component.phase": ["›", "phase", (d) => `${d.component} moves to ${d.phase}`],
  "checkpoint.taken": ["⛁", "fleet", (d) => `Checkpoint of ${d.slots} sandbox${d.slots === 1 ? "" : "es"} (${d.reason})`],
  "slot.acquired": ["▣", "fleet", (d) => `${d.slot} got sandbox ${d.sandbox_id}${d.backend ? ` (${d.backend})` : ""}${d.respawn ? " after its old one died" : ""}`],
  "slot.respawned": ["♻", "warn", (d) => `${d.slot}'s sandbox died; restored from a checkpoint into ${d.sandbox_id}`],
  "slot.restored": ["♻", "fleet", (d) => `${d.slot} restored from a checkpoint into ${d.sandbox_id}`],
  "slot.seeded": ["⇣", "fleet", (d) => `${d.slot} starts from main (${d.files} files)`],
  "component.fed": ["⇢", "fleet", (d) => `${d.component} got ${d.provider}'s code (${d.files} files) before it merged`],
  "interface.changed": ["⚡", "warn", (d) => `${d.component}'s interface changed (v${d.version})${d.dependents?.length ? `; rebuilding ${list(d.dependents)}` : ""}`],
  "slot.building": ["⚒", "team", (d) => (d.attempt ? `${d.slot}: fixing a rejected merge (attempt ${d.attempt})` : `${d.slot}: the team starts building`)],
  "slot.built": ["✓", "good", (d) => `${d.slot}: built (${d.done.length} task${d.done.length === 1 ? "" : "s"} done)`],
  "slot.blocked": ["⊘", "error", (d) => `${d.slot}: blocked (${list(Object.keys(d.blocked || {}))})`],
  "slot.verified": ["◈", "verify", (d) => `${d.slot}: verified ${d.passed ? "✓" : "✗"} score ${d.score.toFixed(2)}, tests ${d.tests_passed}/${d.tests_total}`],
  "team.started": ["☺", "team", (d) => `${d.component}: a team of ${d.agents} agents starts ${d.tasks} tasks`],
  "team.progress": ["…", "team", (d) => `${d.slot || d.component}: ${d.message}${d.fraction == null ? "" : ` (${pct(d.fraction)})`}`],
  "team.check": ["✓", "team", (d) => `${d.component}: component check ${d.ok ? "passed" : "failed"}`],
  "team.ready_to_merge": ["⇡", "team", (d) => `${d.component}: ready to merge`],
  "team.finished": ["⚑", "team", (d) => `${d.component}: team finished${d.ready ? "" : `, blocked on ${list(d.blocked)}`}`],
  "task.started": ["▶", "team", (d) => `${d.component}: ${agentName(d.agent)} starts ${d.task}${d.level ? ` (${LEVELS[d.level] || "level " + d.level})` : ""}`],
  "task.done": ["✓", "team", (d) => `${d.component}: ${agentName(d.agent)} finished ${d.task}`],
  "agent.step": ["·", "team", (d) => `${d.component}: ${agentName(d.agent)} ${d.tool ? `${d.tool} ${d.detail}${d.ok ? "" : " (failed)"}` : `says “${d.detail}”`}`],
  "task.recovered": ["✚", "good", (d) => `${d.component}: ${d.task} recovered with ${LEVELS[d.level] || "level " + d.level}`],
  "task.escalated": ["⚠", "warn", (d) => `${d.component}: ${d.task} failed, escalated to ${LEVELS[d.level] || "level " + d.level}: ${firstLine(d.reason, 90)}`],
  "task.blocked": ["⊘", "error", (d) => `${d.component}: ${d.task} blocked: ${firstLine(d.reason)}`],
  "swarm.report": ["◈", "verify", (d) => {
    const failed = Object.entries(d.verifiers || {}).filter(([, ok]) => !ok).map(([v]) => v);
    return `${d.sid}: verification swarm ${d.score.toFixed(2)}${failed.length ? `, failing ${list(failed)}` : ", every verifier passed"}`;
  }],
  "verifier.report": ["☑", "verify", (d) => `${d.sid}: ${d.verifier} ${d.passed ? "passed" : `failed (${d.errors} error${d.errors === 1 ? "" : "s"})`}`],
  "judge.decision": ["⚖", "tournament", (d) => `Judge: ${d.winner} wins ${d.component}${d.reasons?.length ? ` (${d.reasons[d.reasons.length - 1]})` : ""}`],
  "tournament.decision": ["♛", "tournament", (d) => `${d.winner} wins the ${d.component} tournament`],
  "tournament.eliminated": ["✂", "tournament", (d) => `${d.slot} eliminated: snapshotted, then stopped`],
  "merge.queued": ["◷", "merge", (d) => `${d.component} queued for the merge gate${d.waiting_for?.length ? `, waiting for ${list(d.waiting_for)}` : ""}`],
  "merge.accepted": ["⎇", "good", (d) => `${d.component} merged into main${d.commit ? " at " + short(d.commit) : ""} (${(d.changed || []).length} files changed)`],
  "merge.rejected": ["✗", "error", (d) => `${d.component}'s merge rejected: ${firstLine(d.reason || (d.findings || [])[0] || "see findings")}`],
  "preview.refreshed": ["◉", "merge", (d) => `Preview now serves main with ${d.component}`],
  "budget.raised": ["$", "budget", (d) => `Budget raised to ${money(d.budget_usd)} (spent ${money(d.spent_usd)})`],
  "budget.warning": ["$", "warn", (d) => `Budget warning: ${money(d.spent_usd)} of ${money(d.budget_usd)} spent`],
  "budget.exhausted": ["$", "error", (d) => `Budget spent (${money(d.spent_usd)} of ${money(d.budget_usd)}): the build will ${d.action}`],
  "busy.report": ["◔", "quiet", (d) => `${d.component}: ${d.seconds.toFixed(1)} s of ${d.source} work`],
};

// Lines hidden unless "progress & timing" is ticked: the fleet table shows them better.
export const CHATTY = new Set(["team.progress", "busy.report", "verifier.report", "component.phase", "agent.step"]);

export function describe(kind, data) {
  const known = KINDS[kind];
  if (known) {
    try { return { icon: known[0], tone: known[1], text: known[2](data || {}) }; } catch (_) { /* data of another shape */ }
  }
  const tone = kind.endsWith(".error") || kind.endsWith(".failed") ? "error" : "quiet";
  return { icon: "•", tone, text: `${kind} ${JSON.stringify(data)}` };
}

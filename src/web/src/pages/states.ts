// Declared states: states × machines at a glance, one state's machines with their checks' output,
// applies linked to their live operation, and resuming a halted rollout.

import { api, session } from "../api";
import type { StateDetail, StateMachineView, StateView } from "../contract";
import { badge, h, table, when } from "../dom";

/** Machines drawn as a grid on the list page; beyond, each state shows its counts only. */
const GRID_MACHINES = 60;

export async function statesPage(main: HTMLElement): Promise<void> {
  const states = await api<StateView[]>("GET", "/api/states");
  main.append(h("h1", {}, "States"));
  if (states.length === 0) {
    main.append(h("p", {}, "No declared states: commit one under states/ (see the README's “Declared states”)."));
    return;
  }
  main.append(table(["State", "Mode", "In sync", "Drifted", "Applying", "Failed", "Held", "Rollout", "Reconciled"],
    states.map((s) => [
      h("a", { href: `#/states/${encodeURIComponent(s.id)}` }, s.id), s.declared.mode,
      `${s.counts.in_sync}/${total(s)}`, s.counts.drifted, s.counts.applying, s.counts.failed, s.counts.held,
      s.halted ? h("span", {}, badge("halted"), ` ${s.halted.reason}`) : `${s.progress.succeeded} applied`,
      when(s.updated_at),
    ]), "Declared states"));

  // The grid: one row per state, one cell per machine, coloured by its standing.
  const details = await Promise.all(states.map((s) => api<StateDetail>("GET", `/api/states/${encodeURIComponent(s.id)}`)));
  const machines = [...new Set(details.flatMap((d) => d.machines.map((m) => m.machine_id)))].sort();
  if (machines.length > GRID_MACHINES) {
    main.append(h("p", { class: "muted" }, `${machines.length} machines: open a state to see each of them.`));
    return;
  }
  const rows = details.map((detail) => {
    const by = new Map(detail.machines.map((m) => [m.machine_id, m]));
    return [
      h("a", { href: `#/states/${encodeURIComponent(detail.state.id)}` }, detail.state.id),
      ...machines.map((id) => {
        const machine = by.get(id);
        return machine ? badge(machine.standing.standing) : h("span", { class: "muted" }, "—");
      }),
    ];
  });
  main.append(h("h2", {}, "States × machines"), table(["State", ...machines], rows, "States by machine"));
}

function total(state: StateView): number {
  return Object.values(state.counts).reduce((sum, count) => sum + count, 0);
}

export async function statePage(main: HTMLElement, [id]: string[]): Promise<void> {
  const detail = await api<StateDetail>("GET", `/api/states/${encodeURIComponent(id)}`);
  const state = detail.state;
  main.append(
    h("h1", {}, `State ${state.id}`),
    h("p", {}, state.declared.description || "", " ",
      h("span", { class: "muted" }, `script ${state.declared.script} · ${state.declared.mode} · content ${state.digest ?? "not reconciled yet"} · revision ${state.revision?.slice(0, 12) ?? "—"}`)),
  );
  if (state.halted) {
    const resume = h("button", { type: "button" }, "Resume the rollout");
    resume.hidden = session()?.role === "viewer";
    resume.addEventListener("click", async () => {
      resume.disabled = true;
      await api("POST", `/api/states/${encodeURIComponent(id)}/resume`);
      location.reload();
    });
    main.append(h("p", { role: "alert", class: "error" }, `The rollout is halted: ${state.halted.reason} (${when(state.halted.at)}). `, resume));
  }
  main.append(table(["Machine", "Standing", "Since", "Last check", "Last apply"],
    detail.machines.map((machine) => [
      h("a", { href: `#/machines/${encodeURIComponent(machine.machine_id)}` }, machine.machine_id),
      standing(machine), when(machine.since), check(machine), apply(machine),
    ]), `Machines of ${state.id}`));
}

function standing(machine: StateMachineView): HTMLElement {
  const s = machine.standing;
  const why = "reason" in s ? s.reason : "message" in s ? s.message : "";
  const drifted = machine.drifted_since ? ` drifted since ${when(machine.drifted_since)}` : "";
  return h("span", {}, badge(s.standing), why ? ` ${why}` : "", drifted);
}

/** The check's result, with what it printed one click away. */
function check(machine: StateMachineView): HTMLElement | string {
  const check = machine.check;
  if (!check) return "—";
  const summary = h("summary", {}, badge(check.outcome.result), ` ${when(check.at)} (${check.duration_ms} ms)`);
  const message = "message" in check.outcome ? `${check.outcome.message}\n` : "";
  return h("details", {}, summary, h("pre", { class: "output", tabindex: "0" }, message + (check.output || "(no output)")));
}

function apply(machine: StateMachineView): HTMLElement | string {
  const apply = machine.apply;
  if (!apply) return "—";
  const reason = "reason" in apply.result ? ` ${apply.result.reason}` : "";
  return h("span", {}, h("a", { href: `#/operations/${apply.operation_id}` }, `#${apply.operation_id}`), " ",
    badge(apply.result.result), reason);
}

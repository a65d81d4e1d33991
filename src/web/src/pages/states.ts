// Declared states: states × machines at a glance, one state's machines with their checks' output,
// applies linked to their live operation, and resuming a halted rollout.

import { api, session } from "../api";
import type { StateByTag, StateDetail, StateMachineView, StateView } from "../contract";
import { shareBar } from "../charts";
import { badge, h, table, when } from "../dom";
import { STANDINGS } from "./overview";

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
  const machineCount = states.reduce((most, s) => Math.max(most, total(s)), 0);
  if (machineCount > GRID_MACHINES) {
    main.append(h("h2", {}, "States × tags"), await byTag());
    return;
  }
  const details = await Promise.all(states.map((s) => api<StateDetail>("GET", `/api/states/${encodeURIComponent(s.id)}`)));
  const machines = [...new Set(details.flatMap((d) => d.machines.map((m) => m.machine_id)))].sort();
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

/** At fleet size, a state's machines by tag: each cell its counts by standing, drawn as one bar, linked to those machines. */
async function byTag(): Promise<HTMLElement> {
  const grid = await api<StateByTag[]>("GET", "/api/pictures/states");
  const tags = [...new Set(grid.flatMap((state) => Object.keys(state.tags)))].sort();
  const rows = grid.map((state) => [
    h("a", { href: `#/states/${encodeURIComponent(state.state)}` }, state.state),
    ...tags.map((tag) => {
      const counts = state.tags[tag];
      if (!counts) return h("span", { class: "muted" }, "—");
      const all = Object.values(counts).reduce((sum, n) => sum + n, 0);
      const summary = STANDINGS.filter((k) => counts[k.key]).map((k) => `${counts[k.key]} ${k.name}`).join(", ");
      const bar = shareBar(STANDINGS.filter((k) => counts[k.key]).map((k) => [k.tone, counts[k.key]]));
      return h("a", { href: `#/states/${encodeURIComponent(state.state)}?tag=${encodeURIComponent(tag)}`, "aria-label": `${state.state} on ${tag}: ${summary}` },
        bar, h("span", {}, `${counts.in_sync ?? 0}/${all} in sync`));
    }),
  ]);
  return table(["State", ...tags], rows, "States by tag");
}

function total(state: StateView): number {
  return Object.values(state.counts).reduce((sum, count) => sum + count, 0);
}

/** A state's machines one page shows: at fleet size the rest are a standing or a tag away. */
const PAGE = 500;

export async function statePage(main: HTMLElement, [id]: string[]): Promise<void> {
  // Drilled down from the grid by tag, or narrowed to a standing.
  const asked = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const tag = asked.get("tag");
  const only = asked.get("standing");
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (tag) query.set("tag", tag);
  if (only) query.set("standing", only);
  const detail = await api<StateDetail>("GET", `/api/states/${encodeURIComponent(id)}?${query}`);
  const state = detail.state;
  main.append(
    h("h1", {}, `State ${state.id}${tag ? ` on ${tag}` : ""}`),
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
  const narrowed = (standing: string | null): string => {
    const next = new URLSearchParams();
    if (tag) next.set("tag", tag);
    if (standing) next.set("standing", standing);
    const suffix = next.toString();
    return `#/states/${encodeURIComponent(id)}${suffix ? `?${suffix}` : ""}`;
  };
  // The state's counts are of all its machines: drilled down to a tag, the standings are named without them.
  const counts = state.counts as unknown as Record<string, number>;
  const named = (k: { key: string; name: string }): string => tag ? k.name : `${k.name} (${counts[k.key]})`;
  main.append(h("p", {}, "Show: ", h("a", { href: narrowed(null), "aria-current": only ? "false" : "page" }, "all"),
    ...STANDINGS.filter((k) => counts[k.key]).flatMap((k) => [" · ",
      h("a", { href: narrowed(k.key), "aria-current": only === k.key ? "page" : "false" }, named(k))])));
  if (detail.machines.length === PAGE) {
    main.append(h("p", { class: "muted" }, `The first ${PAGE} are shown: choose a standing or a tag for the others.`));
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

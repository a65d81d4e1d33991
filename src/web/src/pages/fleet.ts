// The fleet: machines with live health and enrollment; one machine's details.

import { api, fleetRows, session } from "../api";
import { type Category, lines, stackedColumns } from "../charts";
import type { FactsView, FactValue, FleetRowChanges, FleetRows, MachineDetail, MachinePicture, MachineRow, MachineView } from "../contract";
import { badge, type Child, h, put, table, when } from "../dom";

/** Rows on one page of the fleet's table: at 10,000 machines the DOM holds a page, not the fleet. */
const PAGE = 100;

export async function fleetPage(main: HTMLElement): Promise<() => void> {
  const filter = h("select", { "aria-label": "Filter by tag" }, h("option", { value: "" }, "All tags"));
  const search = h("input", { type: "search", "aria-label": "Search machines", placeholder: "id, name or host" });
  const summary = h("p", { class: "row", "aria-label": "Fleet summary" });
  const body = h("div");
  const previous = h("button", { type: "button" }, "Previous");
  const next = h("button", { type: "button" }, "Next");
  const range = h("span", { class: "muted", "aria-live": "polite" });
  main.append(h("h1", {}, "Fleet"), summary,
    h("div", { class: "row" }, h("label", {}, "Tag", filter), search), body,
    h("div", { class: "row" }, previous, range, next));
  let tags: string[] = [];
  let first = 0;
  const machines = new Map<string, MachineRow>();
  const counts = (state: (m: MachineRow) => string) => {
    const by = new Map<string, number>();
    for (const m of machines.values()) by.set(state(m), (by.get(state(m)) ?? 0) + 1);
    return [...by.entries()].sort(([a], [b]) => a.localeCompare(b));
  };
  let drawing = 0;
  const draw = () => {
    drawing = 0;
    const all = [...machines.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const known = [...new Set(all.flatMap((m) => m.tags))].sort();
    if (known.join() !== tags.join()) {
      tags = known;
      const chosen = filter.value;
      filter.replaceChildren(h("option", { value: "" }, "All tags"), ...tags.map((tag) => h("option", { value: tag }, tag)));
      filter.value = chosen;
    }
    summary.replaceChildren(`${all.length} machines:`,
      ...counts((m) => m.health).map(([state, n]) => h("span", {}, badge(state), ` ${n}`)),
      ...counts((m) => m.enrollment).map(([state, n]) => h("span", {}, badge(state), ` ${n}`)));
    const text = search.value.trim().toLowerCase();
    const shown = all.filter((m) => (!filter.value || m.tags.includes(filter.value))
      && (!text || [m.id, m.name, m.host].some((field) => field.toLowerCase().includes(text))));
    // A list that shrank under the page shown: its last page.
    if (first >= shown.length) first = Math.max(0, Math.floor((shown.length - 1) / PAGE) * PAGE);
    const page = shown.slice(first, first + PAGE);
    body.replaceChildren(table(
      ["Machine", "Address", "Health", "Enrollment", "Ready", "Last seen", "Tags"],
      page.map((m) => [
        h("span", {}, h("a", { href: `#/machines/${encodeURIComponent(m.id)}` }, m.id),
          ...(m.suspended ? [" ", badge("suspended")] : [])),
        `${m.host}:${m.port}`,
        badge(m.health),
        h("span", { title: m.found ? `holds ${m.found}` : "" }, badge(m.enrollment)),
        h("span", { title: m.ready_message ?? "" }, badge(m.ready)),
        when(m.last_seen),
        m.tags.join(", "),
      ]),
      "Machines"));
    range.textContent = shown.length ? `${first + 1}–${first + page.length} of ${shown.length}` : "no machine matches";
    previous.disabled = first === 0;
    next.disabled = first + PAGE >= shown.length;
  };
  // Many events in a burst draw once.
  const redraw = () => { if (!drawing) drawing = requestAnimationFrame(draw); };
  filter.addEventListener("change", () => { first = 0; draw(); });
  search.addEventListener("input", () => { first = 0; redraw(); });
  previous.addEventListener("click", () => { first = Math.max(0, first - PAGE); draw(); });
  next.addEventListener("click", () => { first += PAGE; draw(); });
  summary.textContent = "Loading the fleet…";
  // A snapshot first (and after a reconnect the daemon cannot resume), then only what changed.
  // EventSource reconnects by itself after a network drop, sending the last event's id.
  const events = fleetRows();
  events.on("snapshot", (event) => {
    const snapshot = JSON.parse(event) as FleetRows;
    machines.clear();
    for (const m of snapshot.machines) machines.set(m.id, m);
    // The whole fleet at once: drawn now, not at the next frame (which a busy page may delay).
    if (drawing) cancelAnimationFrame(drawing);
    draw();
  });
  events.on("changes", (event) => {
    const changes = JSON.parse(event) as FleetRowChanges;
    for (const m of changes.changed) machines.set(m.id, m);
    for (const id of changes.removed) machines.delete(id);
    redraw();
  });
  // A one-machine page beside the stream, so that a refusal (an expired session) comes as the
  // API's; the fleet itself comes with the stream's snapshot, then every change.
  await api<MachineView[]>("GET", "/api/links?limit=1").catch((error: unknown) => {
    events.close();
    throw error;
  });
  return () => {
    events.close();
    if (drawing) cancelAnimationFrame(drawing);
  };
}

export async function machinePage(main: HTMLElement, [id]: string[]): Promise<void> {
  const [machine, picture] = await Promise.all([
    api<MachineDetail>("GET", `/api/links/${encodeURIComponent(id)}`),
    api<MachinePicture>("GET", `/api/pictures/machines/${encodeURIComponent(id)}?span=day`),
  ]);
  const verify = h("button", { type: "button" }, "Verify now");
  verify.addEventListener("click", async () => {
    verify.disabled = true;
    await api("POST", `/api/links/${encodeURIComponent(id)}/verify`).finally(() => (verify.disabled = false));
    main.replaceChildren();
    await machinePage(main, [id]);
  });
  const canVerify = session()?.role !== "viewer";
  put(main,
    h("h1", {}, `${machine.name} (${machine.id})`),
    h("div", { class: "row" }, badge(machine.health.state), badge(machine.enrollment.state),
      `${machine.host}:${machine.port}`, canVerify ? verify : null),
    machine.enrollment.state === "mismatch"
      ? h("p", { class: "error" }, `/etc/linkops/client_id holds ${machine.enrollment.found}; the inventory expects ${machine.enrollment.expected}`)
      : null,
    h("h2", {}, "Conditions"),
    table(["Type", "Status", "Reason", "Message"],
      machine.conditions.map((c) => [c.type, badge(c.status), c.reason, c.message]), "Conditions"),
    h("h2", {}, "Recent operations"),
    table(["Operation", "Script", "State", "Created"], (machine.recent_operations ?? []).map((o) => [
      h("a", { href: `#/operations/${o.id}` }, `#${o.id}`), o.script, badge(o.state), when(o.created_at)]), "Recent operations"),
    h("h2", {}, "The last day"),
    h("div", { class: "pictures" },
      stackedColumns("Checks per half hour", picture.points.map((p) => ({
        at: p.at_ms, values: p.checks ? { reachable: p.reachable, unreachable: p.checks - p.reachable } : null,
      })), CHECKS, 1_800_000),
      lines("SSH latency per half hour (mean; dashed: highest)", picture.points.map((p) => ({
        at: p.at_ms, value: p.latency_ms ?? null, high: p.latency_max_ms ?? null,
      })), " ms")),
    h("h2", {}, "Health history"),
    table(["Checked", "Health", "Enrolled"], (machine.health_history ?? []).map((s) => [
      when(s.at), badge(s.health.state), s.enrolled ? "yes" : "no"]), "Health history"),
    ...factsSection(machine.facts),
  );
}

const CHECKS: Category[] = [
  { key: "reachable", name: "answered", tone: "ok" },
  { key: "unreachable", name: "unreachable", tone: "bad" },
];

/** What the machine is (its facts, as last gathered) and what changed lately. */
function factsSection(facts: FactsView | null | undefined): Child[] {
  if (!facts) return [h("h2", {}, "Facts"), h("p", { class: "muted" }, "Not gathered yet: facts are gathered once a machine is enrolled.")];
  const shown = (value: FactValue | null | undefined) => value === null || value === undefined ? "—" : String(value);
  return [
    h("h2", {}, "Facts"),
    h("p", { class: "muted" }, `Gathered ${when(facts.gathered_at)}`),
    facts.error ? h("p", { class: "error" }, facts.error) : null,
    table(["Fact", "Value"], Object.entries(facts.facts).map(([name, value]) => [name, readable(name, value)]), "Facts"),
    facts.changes.length ? h("h3", {}, "What changed") : null,
    facts.changes.length
      ? table(["When", "Changes"], facts.changes.map((change) => [when(change.at),
        Object.entries(change.changed).map(([name, diff]) => `${name} ${shown(diff.before)} → ${shown(diff.after)}`).join(", ")]),
        "Fact changes")
      : null,
  ];
}

/** A fact as a person reads it: sizes in GiB, times as dates, durations in days and hours. */
function readable(name: string, value: FactValue): string {
  if (typeof value !== "number") return String(value);
  if (name.endsWith("_bytes")) return `${(value / 2 ** 30).toFixed(1)} GiB`;
  if (name.endsWith("_at_ms")) return new Date(value).toLocaleString();
  if (name === "uptime_s") {
    const days = Math.floor(value / 86400), hours = Math.floor((value % 86400) / 3600), minutes = Math.floor((value % 3600) / 60);
    return days ? `${days} d ${hours} h` : hours ? `${hours} h ${minutes} min` : `${minutes} min`;
  }
  if (name.endsWith("_pct")) return `${value} %`;
  return String(value);
}

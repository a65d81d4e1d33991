// The fleet: machines with live health and enrollment; one machine's details.

import { api, fleetEvents, session } from "../api";
import type { MachineDetail, MachineView } from "../contract";
import { badge, h, put, table, when } from "../dom";

export async function fleetPage(main: HTMLElement): Promise<() => void> {
  const filter = h("select", { "aria-label": "Filter by tag" }, h("option", { value: "" }, "All tags"));
  const body = h("div");
  main.append(h("h1", {}, "Fleet"), h("div", { class: "row" }, h("label", {}, "Tag", filter)), body);
  let tags: string[] = [];
  // The first list by a plain request (its refusals are the API's); then the daemon pushes every change.
  let machines = await api<MachineView[]>("GET", "/api/links");
  const draw = () => {
    const known = [...new Set(machines.flatMap((m) => m.tags))].sort();
    if (known.join() !== tags.join()) {
      tags = known;
      const chosen = filter.value;
      filter.replaceChildren(h("option", { value: "" }, "All tags"), ...tags.map((tag) => h("option", { value: tag }, tag)));
      filter.value = chosen;
    }
    const shown = machines.filter((m) => !filter.value || m.tags.includes(filter.value));
    body.replaceChildren(table(
      ["Machine", "Address", "Health", "Enrollment", "Ready", "Last seen", "Tags"],
      shown.map((m) => {
        const ready = m.conditions.find((c) => c.type === "Ready");
        return [
          h("span", {}, h("a", { href: `#/machines/${encodeURIComponent(m.id)}` }, m.id),
            ...(m.suspended ? [" ", badge("suspended")] : [])),
          `${m.host}:${m.port}`,
          badge(m.health.state),
          h("span", { title: m.enrollment.state === "mismatch" ? `holds ${m.enrollment.found}` : "" }, badge(m.enrollment.state)),
          h("span", { title: ready?.message ?? "" }, badge(ready?.status)),
          when(m.last_seen),
          m.tags.join(", "),
        ];
      }),
      "Machines"));
  };
  filter.addEventListener("change", draw);
  draw();
  // EventSource reconnects by itself after a network drop.
  const events = fleetEvents();
  events.addEventListener("machines", (event) => {
    machines = JSON.parse((event as MessageEvent<string>).data) as MachineView[];
    draw();
  });
  return () => events.close();
}

export async function machinePage(main: HTMLElement, [id]: string[]): Promise<void> {
  const machine = await api<MachineDetail>("GET", `/api/links/${encodeURIComponent(id)}`);
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
    h("h2", {}, "Health history"),
    table(["Checked", "Health", "Enrolled"], (machine.health_history ?? []).map((s) => [
      when(s.at), badge(s.health.state), s.enrolled ? "yes" : "no"]), "Health history"),
  );
}

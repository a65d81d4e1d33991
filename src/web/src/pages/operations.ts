// Operations: the history, and one operation live — per-host output, states, exit codes, a stop button.

import { api, operationEvents, session } from "../api";
import type { HostEvent, HostState, OperationState, OperationView, OutputChunk, Requester, StateEvent } from "../contract";
import { badge, h, table, when } from "../dom";

const FINISHED: OperationState[] = ["succeeded", "failed", "partially_failed", "stopped", "interrupted"];
const STATES: (OperationState | "")[] = ["", "running", ...FINISHED];

export async function historyPage(main: HTMLElement): Promise<void> {
  const state = h("select", { "aria-label": "State" }, ...STATES.map((s) => h("option", { value: s }, s || "Any state")));
  const script = h("input", { "aria-label": "Script", placeholder: "script id" });
  const body = h("div");
  const draw = async () => {
    const query = new URLSearchParams({ limit: "100" });
    if (state.value) query.set("state", state.value);
    if (script.value) query.set("script", script.value);
    const operations = await api<OperationView[]>("GET", `/api/operations?${query}`);
    body.replaceChildren(table(["Operation", "Script", "State", "Machines", "By", "Created"],
      operations.map((o) => [
        h("a", { href: `#/operations/${o.id}` }, `#${o.id}`), o.script, badge(o.state), o.machines.length,
        requester(o.requested_by),
        when(o.created_at),
      ]), "Operations"));
  };
  state.addEventListener("change", () => void draw());
  script.addEventListener("change", () => void draw());
  main.append(h("h1", {}, "Operations"), h("div", { class: "row" }, state, script), body);
  await draw();
}

/** One host's panel: its state and its output as it arrives. */
class HostPanel {
  readonly element: HTMLElement;
  private badge = h("span");
  /** The host's state name, for the retry button. */
  state = "pending";
  private output = h("pre", { class: "output", "aria-live": "off", tabindex: "0" });

  constructor(readonly machine: string) {
    this.element = h("section", { class: "card", "aria-label": `Output of ${machine}`, "data-machine": machine },
      h("div", { class: "row" }, h("strong", {}, machine), this.badge), this.output);
  }

  setState(state: HostState): void {
    const detail = "exit_code" in state && state.exit_code != null ? `exit ${state.exit_code}`
      : "signal" in state && state.signal ? `signal ${state.signal}`
      : "error" in state ? state.error : "reason" in state ? state.reason : "";
    this.state = state.state;
    this.badge.replaceChildren(badge(state.state), detail ? ` ${detail}` : "");
  }

  append(stream: string, text: string): void {
    const follow = this.output.scrollTop + this.output.clientHeight >= this.output.scrollHeight - 4;
    this.output.append(stream === "stderr" ? h("span", { class: "stderr" }, text) : text);
    if (follow) this.output.scrollTop = this.output.scrollHeight;
  }
}

export async function operationPage(main: HTMLElement, [idText]: string[]): Promise<() => void> {
  const id = Number(idText);
  const operation = await api<OperationView>("GET", `/api/operations/${id}`);
  const state = h("span", {}, badge(operation.state));
  const stop = h("button", { class: "danger", type: "button" }, "Stop");
  // Runs the script again on the machines that failed, timed out or were interrupted.
  const retry = h("button", { type: "button" }, "Retry failed machines");
  const operator = session()?.role !== "viewer";
  const panels = new Map<string, HostPanel>();
  const hosts = h("div", { class: "hosts" });
  for (const host of operation.hosts) {
    const panel = new HostPanel(host.machine_id);
    panel.setState(host.state);
    panels.set(host.machine_id, panel);
    hosts.append(panel.element);
  }
  const retried = new Set(["failed", "timeout", "interrupted"]);
  const finished = (value: OperationState) => {
    state.replaceChildren(badge(value));
    stop.hidden = !operator || FINISHED.includes(value);
    retry.hidden = !operator || !FINISHED.includes(value) || ![...panels.values()].some((p) => retried.has(p.state));
  };
  retry.addEventListener("click", async () => {
    retry.disabled = true;
    const again = await api<OperationView>("POST", `/api/operations/${id}/retry`);
    location.hash = `#/operations/${again.id}`;
  });
  stop.addEventListener("click", async () => {
    stop.disabled = true;
    await api("POST", `/api/operations/${id}/stop`).catch(() => undefined);
  });
  main.append(
    h("h1", {}, `Operation #${id}: ${operation.script}`),
    h("div", { class: "row" }, h("span", { role: "status", "aria-live": "polite" }, state), stop, retry,
      h("span", { class: "muted" }, `started ${when(operation.created_at)}`),
      operation.retry_of ? h("a", { href: `#/operations/${operation.retry_of}` }, `retry of #${operation.retry_of}`) : null),
    hosts);
  finished(operation.state);

  // The log replays from the start, then streams; after a network drop EventSource resumes after the last id.
  const events = operationEvents(id);
  events.on("output", (event) => {
    const data = JSON.parse(event) as OutputChunk;
    const text = "text" in data ? data.text : atob(data.base64);
    panels.get(data.machine)?.append(data.stream, text);
  });
  events.on("host", (event) => {
    const data = JSON.parse(event) as HostEvent;
    panels.get(data.machine)?.setState(data.state);
  });
  const stateOf = (event: string) => (JSON.parse(event) as StateEvent).state;
  events.on("operation", (event) => finished(stateOf(event)));
  events.on("end", (event) => {
    finished(stateOf(event));
    events.close();
  });
  return () => events.close();
}

/** Who asked for an operation, in a few words. */
function requester(by: Requester): string {
  switch (by.kind) {
    case "user": return by.name;
    case "state": return `state ${by.id}`;
    case "run_request": return `run-request ${by.id}`;
    case "schedule": return `schedule ${by.name}`;
    case "trigger": return by.alert ? `trigger ${by.name} (alert ${by.alert})` : `trigger ${by.name}`;
  }
}

// Terminal workspaces: layouts of panes, a machine per pane, connect-all, broadcast input,
// resize with the window, reconnect with scrollback replay (src/terminal/protocol.md).

import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import { api, ApiError, workspaceSocket } from "../api";
import type {
  ClientMessage, CreateBody, Layout, MachineView, PanesBody, PaneStatus, ServerMessage, SocketCloseCode, WorkspaceView as Workspace,
} from "../contract";
import { badge, h, table, when } from "../dom";

/** Closes after which reconnecting cannot help (the rest, a daemon restarting, are retried). */
const FINAL: ReadonlySet<number> = new Set<SocketCloseCode>([4001, 4002, 4003]);

const LAYOUTS: [Layout, string][] = [["single", "1 pane"], ["grid2x1", "2 side by side"], ["grid1x3", "3 side by side"], ["grid2x2", "2 × 2"]];

export async function terminalsPage(main: HTMLElement): Promise<void> {
  const workspaces = await api<Workspace[]>("GET", "/api/terminal/workspaces");
  const name = h("input", { name: "name", placeholder: "name (optional)", "aria-label": "Workspace name" });
  const layout = h("select", { name: "layout", "aria-label": "Layout" }, ...LAYOUTS.map(([value, label]) => h("option", { value }, label)));
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "row" }, name, layout, h("button", { class: "primary", type: "submit" }, "New workspace"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const created = await api<Workspace>("POST", "/api/terminal/workspaces", { name: name.value || undefined, layout: layout.value as Layout } satisfies CreateBody);
      location.hash = `#/terminals/${created.id}`;
    } catch (failure) {
      error.textContent = failure instanceof ApiError ? failure.message : String(failure);
    }
  });
  main.append(h("h1", {}, "Terminals"), form,
    table(["Workspace", "Layout", "Machines", "Owner", "Created"], workspaces.map((w) => [
      h("a", { href: `#/terminals/${w.id}` }, w.name), w.layout,
      w.panes.map((p) => p.machine ?? "—").join(", "), w.owner, when(w.created_at)]), "Workspaces"));
}

/** One pane: its machine picker, its state, its terminal. */
class PaneView {
  readonly element: HTMLElement;
  readonly terminal = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13, scrollback: 5000 });
  readonly fit = new FitAddon();
  readonly state = h("span");
  readonly machine: HTMLSelectElement;

  constructor(readonly index: number, machines: MachineView[], assigned: string | null, onAssign: () => void) {
    this.machine = h("select", { "aria-label": `Machine of pane ${index + 1}` },
      h("option", { value: "" }, "— no machine —"),
      ...machines.map((m) => h("option", { value: m.id, selected: m.id === assigned }, `${m.id} (${m.enrollment.state})`)));
    this.machine.addEventListener("change", onAssign);
    const body = h("div", { class: "term", "data-pane": index });
    this.element = h("section", { class: "pane", "aria-label": `Pane ${index + 1}` },
      h("header", {}, h("strong", {}, `${index + 1}`), this.machine, this.state), body);
    this.terminal.loadAddon(this.fit);
    this.terminal.open(body);
  }

  show(status: PaneStatus): void {
    const detail = status.state === "error" ? `${status.reason}: ${status.message}`
      : status.end ? `${status.end.reason}${status.end.reason === "exited" && status.end.exit_code != null ? ` (exit ${status.end.exit_code})` : ""}` : "";
    this.state.replaceChildren(badge(status.state), detail ? ` ${detail}` : "");
    this.state.title = detail;
  }
}

export async function workspacePage(main: HTMLElement, [id]: string[]): Promise<() => void> {
  const [workspace, machines] = await Promise.all([
    api<Workspace>("GET", `/api/terminal/workspaces/${id}`), api<MachineView[]>("GET", "/api/links")]);
  const layout = h("select", { "aria-label": "Layout" }, ...LAYOUTS.map(([value, label]) => h("option", { value, selected: value === workspace.layout }, label)));
  const connect = h("button", { class: "primary", type: "button" }, "Connect all");
  const broadcast = h("input", { type: "checkbox", checked: workspace.broadcast });
  const connection = h("span", { role: "status", "aria-live": "polite" });
  const grid = h("div", { class: `grid ${workspace.layout}` });
  let panes: PaneView[] = [];
  let socket: WebSocket | null = null;
  let closed = false;
  let retry = 500;

  const send = (message: ClientMessage) => {
    if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  };
  const assign = async () => {
    const assigned = panes.map((p) => p.machine.value || null);
    await api("PUT", `/api/terminal/workspaces/${id}/panes`, { panes: assigned } satisfies PanesBody);
  };
  const build = (current: Workspace) => {
    panes.forEach((p) => p.terminal.dispose());
    grid.className = `grid ${current.layout}`;
    panes = current.panes.map((status) => {
      const pane = new PaneView(status.pane, machines, status.machine ?? null, () => void assign());
      pane.show(status);
      pane.terminal.onData((data) => send({ type: "input", pane: status.pane, data }));
      pane.terminal.onResize(({ cols, rows }) => send({ type: "resize", pane: status.pane, cols, rows }));
      return pane;
    });
    grid.replaceChildren(...panes.map((p) => p.element));
    requestAnimationFrame(fitAll);
  };
  const fitAll = () => panes.forEach((p) => { try { p.fit.fit(); } catch { /* hidden pane */ } });

  const open = () => {
    socket = workspaceSocket(id);
    socket.addEventListener("open", () => { connection.textContent = "live"; retry = 500; });
    socket.addEventListener("message", (event) => {
      if (event.data instanceof ArrayBuffer) {
        const bytes = new Uint8Array(event.data);
        panes[bytes[0]]?.terminal.write(bytes.subarray(1));
        return;
      }
      const message = JSON.parse(event.data) as ServerMessage;
      if (message.type === "hello") {
        broadcast.checked = message.broadcast;
        message.panes.forEach((status: PaneStatus) => panes[status.pane]?.show(status));
      } else if (message.type === "status") {
        const pane = panes[message.pane];
        pane?.show(message);
        // A session opens at the size its open asked for; each pane may have its own.
        if (pane && message.state === "connected") {
          send({ type: "resize", pane: pane.index, cols: pane.terminal.cols, rows: pane.terminal.rows });
        }
      } else if (message.type === "replay") {
        panes[message.pane]?.terminal.reset();
      } else if (message.type === "broadcast") {
        broadcast.checked = message.enabled;
      } else if (message.type === "error") {
        connection.textContent = message.message;
      }
    });
    socket.addEventListener("close", (event) => {
      socket = null;
      const final = FINAL.has(event.code);
      if (closed || final) {
        connection.textContent = final ? event.reason : "";
        return;
      }
      // Sessions wait for us (grace period); the server replays each pane's screen on reconnect.
      connection.textContent = "reconnecting…";
      setTimeout(open, retry);
      retry = Math.min(retry * 2, 10000);
    });
  };

  layout.addEventListener("change", async () => {
    const updated = await api<Workspace>("PUT", `/api/terminal/workspaces/${id}/panes`, { layout: layout.value as Layout } satisfies PanesBody);
    build(updated);
  });
  connect.addEventListener("click", async () => {
    connect.disabled = true;
    const first = panes[0]?.terminal;
    await api("POST", `/api/terminal/workspaces/${id}/connect-all`, first ? { cols: first.cols, rows: first.rows } : {})
      .finally(() => (connect.disabled = false));
  });
  broadcast.addEventListener("change", () => send({ type: "broadcast", enabled: broadcast.checked }));
  window.addEventListener("resize", fitAll);

  main.append(h("h1", {}, workspace.name),
    h("div", { class: "row" }, h("label", { class: "row" }, "Layout", layout), connect,
      h("label", { class: "row" }, broadcast, "Broadcast input to every pane"), connection),
    grid);
  build(workspace);
  open();
  return () => {
    closed = true;
    window.removeEventListener("resize", fitAll);
    socket?.close();
    panes.forEach((p) => p.terminal.dispose());
  };
}

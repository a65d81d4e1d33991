// The daemon's public API (the one /api/openapi.json describes): requests with the session's token.
// Every shape it exchanges is in ./contract.ts, generated from schemas/openapi.json by `npm run build`.

import type { ErrorBody, ErrorCode, FleetStreamEvent, Grant, OperationStreamEvent, Role } from "./contract";

/** `role` is what the console offers: the highest of the user's grants (the daemon decides each request). */
export interface Session { token: string; user: string; role: Role | null }

const RANK: Role[] = ["viewer", "operator", "admin"];

/** The highest role any grant gives; admin only over the whole fleet (what admin pages need). */
export function offeredRole(grants: Grant[]): Role | null {
  const reach = grants.map((grant) =>
    grant.role === "admin" && ((grant.tags ?? []).length > 0 || (grant.machines ?? []).length > 0) ? "operator" : grant.role);
  return reach.reduce<Role | null>((best, role) =>
    best === null || RANK.indexOf(role) > RANK.indexOf(best) ? role : best, null);
}

const KEY = "linkops.session";

export function session(): Session | null {
  const stored = sessionStorage.getItem(KEY);
  return stored ? (JSON.parse(stored) as Session) : null;
}

export function saveSession(value: Session | null): void {
  if (value) sessionStorage.setItem(KEY, JSON.stringify(value));
  else sessionStorage.removeItem(KEY);
}

/** An error answer: `{"error": {"code", "message", "details"?}}`. */
export class ApiError extends Error {
  /** `error` when the answer was not the API's (a proxy in between). */
  constructor(public status: number, public code: ErrorCode | "error", message: string,
    public details?: Record<string, string>) {
    super(message);
  }
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const text = await apiText(method, path, body);
  return (text ? JSON.parse(text) : null) as T;
}

/** A request whose answer is text (a recording), refusals still in the API's error shape.
 * Asked for a second factor, it asks the person in place, then tries once more. */
export async function apiText(method: string, path: string, body?: unknown): Promise<string> {
  try {
    return await request(method, path, body);
  } catch (error) {
    if (!(error instanceof ApiError) || error.code !== "step_up_required" || !(await stepUp(error))) throw error;
    return await request(method, path, body);
  }
}

/** Asks for the second factor a refusal names: a code of the app here, a sign-in again at the
 * provider (the page leaves), or — none enrolled — the way to the Account page. Whether to retry. */
async function stepUp(refusal: ApiError): Promise<boolean> {
  const how = refusal.details?.how ?? "";
  if (how.startsWith("sso:")) {
    location.href = `/api/auth/sso/${encodeURIComponent(how.slice(4))}/start?step_up=true`;
    return false;
  }
  if (how !== "totp") return false;
  const code = await askCode(refusal.message);
  if (!code) return false;
  const answer = JSON.parse(await request("POST", "/api/auth/step-up", { code })) as { token: string };
  const current = session();
  if (current) saveSession({ ...current, token: answer.token });
  return true;
}

/** A dialog asking for a code of the authenticator app; null when cancelled. */
function askCode(why: string): Promise<string | null> {
  return new Promise((resolve) => {
    const input = document.createElement("input");
    Object.assign(input, { name: "code", inputMode: "numeric", autocomplete: "one-time-code", required: true });
    input.setAttribute("aria-label", "Code of your authenticator app");
    const dialog = document.createElement("dialog");
    const form = document.createElement("form");
    form.method = "dialog";
    const ok = Object.assign(document.createElement("button"), { type: "submit", textContent: "Confirm", className: "primary" });
    const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
    cancel.addEventListener("click", () => dialog.close(""));
    form.append(Object.assign(document.createElement("p"), { textContent: why }), input, ok, cancel);
    form.addEventListener("submit", () => dialog.close(input.value.trim()));
    dialog.append(form);
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue || null);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

async function request(method: string, path: string, body?: unknown): Promise<string> {
  const headers: Record<string, string> = {};
  const current = session();
  if (current) headers.authorization = `Bearer ${current.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  if (!response.ok) {
    const data = text.startsWith("{") ? (JSON.parse(text) as ErrorBody) : null;
    if (response.status === 401 && path !== "/api/auth/login") {
      saveSession(null);
      location.hash = "#/login";
    }
    throw new ApiError(response.status, data?.error?.code ?? "error", data?.error?.message ?? response.statusText,
      data?.error?.details as Record<string, string> | undefined);
  }
  return text;
}

/** A stream of Server-Sent Events whose event names are the contract's `E`. */
export interface Stream<E extends string> {
  on(name: E, listener: (data: string) => void): void;
  close(): void;
}

function stream<E extends string>(path: string): Stream<E> {
  const separator = path.includes("?") ? "&" : "?";
  const source = new EventSource(`${path}${separator}access_token=${encodeURIComponent(session()?.token ?? "")}`);
  return {
    on: (name, listener) => source.addEventListener(name, (event) => listener((event as MessageEvent<string>).data)),
    close: () => source.close(),
  };
}

/** Server-Sent Events of an operation; EventSource resumes with Last-Event-ID after a drop. */
export function operationEvents(id: number): Stream<OperationStreamEvent> {
  return stream(`/api/operations/${id}/events`);
}

/** The fleet live, a row per machine: a `snapshot` event (FleetRows), then `changes` (FleetRowChanges). */
export function fleetRows(): Stream<FleetStreamEvent> {
  return stream("/api/fleet/events?shape=rows");
}

/** A workspace's WebSocket; the token travels as a subprotocol, never in a log line. */
export function workspaceSocket(id: string): WebSocket {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/terminal/workspaces/${id}/ws`,
    ["linkops.v1", `linkops.token.${session()?.token ?? ""}`]);
  socket.binaryType = "arraybuffer";
  return socket;
}

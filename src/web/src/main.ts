// The console's shell: hash routes to pages, the navigation, the signed-in user.

import { api, offeredRole, saveSession, session } from "./api";
import type { Me } from "./contract";
import { h } from "./dom";
import { accountPage } from "./pages/account";
import { certificatesPage } from "./pages/certificates";
import { fleetPage, machinePage } from "./pages/fleet";
import { gitPage } from "./pages/git";
import { loginPage } from "./pages/login";
import { overviewPage } from "./pages/overview";
import { historyPage, operationPage } from "./pages/operations";
import { recordingsPage } from "./pages/recordings";
import { runPage } from "./pages/run";
import { approvalPage, approvalsPage } from "./pages/approvals";
import { schedulePage, schedulesPage } from "./pages/schedules";
import { statePage, statesPage } from "./pages/states";
import { terminalsPage, workspacePage } from "./pages/terminals";
import { usersPage } from "./pages/users";

/** A page draws itself into `main`; what it returns is called when the user leaves it. */
export type Page = (main: HTMLElement, params: string[]) => Promise<void | (() => void)>;

const routes: [RegExp, Page, string][] = [
  [/^\/login$/, loginPage, "Sign in"],
  [/^\/fleet$/, fleetPage, "Fleet"],
  [/^\/overview$/, overviewPage, "Overview"],
  [/^\/machines\/([^/]+)$/, machinePage, "Machine"],
  [/^\/states$/, statesPage, "States"],
  [/^\/states\/([^/]+)$/, statePage, "State"],
  [/^\/schedules$/, schedulesPage, "Schedules"],
  [/^\/schedules\/([^/]+)$/, schedulePage, "Schedule"],
  [/^\/run$/, runPage, "Run a script"],
  [/^\/approvals$/, approvalsPage, "Approvals"],
  [/^\/approvals\/(\d+)$/, approvalPage, "Approval"],
  [/^\/operations$/, historyPage, "Operations"],
  [/^\/operations\/(\d+)$/, operationPage, "Operation"],
  [/^\/git$/, gitPage, "Git"],
  [/^\/terminals$/, terminalsPage, "Terminals"],
  [/^\/terminals\/([^/]+)$/, workspacePage, "Workspace"],
  [/^\/recordings$/, recordingsPage, "Recordings"],
  [/^\/users$/, usersPage, "Users"],
  [/^\/certificates$/, certificatesPage, "Certificates"],
  [/^\/account$/, accountPage, "Account"],
];

const NAV: [string, string, string?][] = [
  ["#/fleet", "Fleet"],
  ["#/overview", "Overview"],
  ["#/states", "States"],
  ["#/schedules", "Schedules"],
  ["#/run", "Run"],
  ["#/approvals", "Approvals"],
  ["#/operations", "Operations"],
  ["#/terminals", "Terminals"],
  ["#/recordings", "Recordings"],
  ["#/git", "Git"],
  ["#/certificates", "Certificates"],
  ["#/users", "Users", "admin"],
  ["#/account", "Account"],
];

let leave: void | (() => void);

async function show(): Promise<void> {
  const [path, query] = (location.hash.replace(/^#/, "") || "/fleet").split("?", 2);
  if (path === "/signed-in") return signedIn(new URLSearchParams(query ?? ""));
  const current = session();
  if (!current && path !== "/login") {
    location.hash = "#/login";
    return;
  }
  drawNav(path);
  if (typeof leave === "function") leave();
  leave = undefined;
  const main = document.getElementById("main")!;
  main.replaceChildren();
  const route = routes.find(([pattern]) => pattern.test(path));
  if (!route) {
    main.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/fleet" }, "Back to the fleet")));
    return;
  }
  const [pattern, page, title] = route;
  document.title = `${title} · LinkOps`;
  try {
    leave = await page(main, pattern.exec(path)!.slice(1).map(decodeURIComponent));
  } catch (error) {
    main.append(h("p", { class: "error", role: "alert" }, String((error as Error).message ?? error)));
  }
}

/** Back from an identity provider with a session: kept, then what the grants offer. */
async function signedIn(back: URLSearchParams): Promise<void> {
  const token = back.get("token");
  const user = back.get("user");
  if (!token || !user) {
    location.hash = "#/login";
    return;
  }
  saveSession({ token, user, role: null });
  // The session must not linger in the address (history, screen shares).
  history.replaceState(null, "", "#/fleet");
  const me = await api<Me>("GET", "/api/auth/me");
  saveSession({ token, user, role: offeredRole(me.grants) });
  await show();
}

function drawNav(path: string): void {
  const current = session();
  const nav = document.getElementById("nav")!;
  const who = document.getElementById("who")!;
  if (!current) {
    nav.replaceChildren();
    who.replaceChildren();
    return;
  }
  nav.replaceChildren(...NAV.filter(([, , role]) => !role || current.role === role).map(([href, label]) =>
    h("a", { href, "aria-current": path.startsWith(href.slice(1)) ? "page" : undefined }, label)));
  who.replaceChildren(`${current.user} (${current.role ?? "no role"})`,
    h("button", { type: "button", onclick: () => { saveSession(null); location.hash = "#/login"; } }, "Sign out"));
}

window.addEventListener("hashchange", () => void show());
void show();

// Users (admin): the accounts, new ones, password resets (a generated password is shown once),
// role changes and deletion. The daemon keeps the last admin; its refusal is shown as it says it.

import { api, ApiError, saveSession, session } from "../api";
import type { Credentials, Disabling, NewUser, Role, RoleChange, UserView } from "../contract";
import { h, table, when } from "../dom";

// "none": no role over the whole fleet, only what access.yaml gives.
const ROLES = ["none", "viewer", "operator", "admin"] as const;
const chosen = (value: string): Role | null => (value === "none" ? null : (value as Role));

export async function usersPage(main: HTMLElement): Promise<void> {
  const users = await api<UserView[]>("GET", "/api/users");
  const shown = h("div", { role: "status", "aria-live": "polite" });
  const error = h("p", { class: "error", role: "alert" });
  const reveal = (credentials: Credentials, what: string) => shown.replaceChildren(h("p", { class: "card" },
    `${what} ${credentials.username}. Password, shown only now: `, h("code", { "data-password": "" }, credentials.password)));
  const say = (text: string) => shown.replaceChildren(h("p", {}, text));
  /** Runs an account change; a refusal (the last admin, say) is shown and `undo` puts the row back. */
  const attempt = async (change: () => Promise<void>, undo?: () => void) => {
    error.textContent = "";
    try {
      await change();
    } catch (failure) {
      error.textContent = failure instanceof ApiError ? failure.message : String(failure);
      undo?.();
    }
  };

  const roleSelect = (user: UserView) => {
    const select = h("select", { "aria-label": `Role of ${user.username}` },
      ...ROLES.map((r) => h("option", { value: r, selected: r === (user.role ?? "none") }, r)));
    select.addEventListener("change", () => void attempt(async () => {
      const changed = await api<UserView>("PATCH", `/api/users/${encodeURIComponent(user.username)}`, { role: chosen(select.value) } satisfies RoleChange);
      user.role = changed.role;
      say(`${changed.username} is now ${changed.role ?? "without a role (access.yaml only)"}.`);
      const me = session();
      if (me && me.user === changed.username && changed.role !== "admin") {
        // Stepped down: this page is for admins only.
        saveSession({ ...me, role: changed.role ?? null });
        location.hash = "#/fleet";
      }
    }, () => (select.value = user.role ?? "none")));
    return select;
  };
  const actions = (user: UserView) => {
    const reset = h("button", { type: "button" }, "Reset password");
    reset.addEventListener("click", () => void attempt(async () => {
      reveal(await api<Credentials>("POST", `/api/users/${encodeURIComponent(user.username)}/password`), "New password for");
    }));
    const remove = h("button", { type: "button", "aria-label": `Delete ${user.username}` }, "Delete");
    remove.addEventListener("click", () => {
      if (!confirm(`Delete ${user.username}? Their sessions and open terminals end now.`)) return;
      void attempt(async () => {
        await api("DELETE", `/api/users/${encodeURIComponent(user.username)}`);
        remove.closest("tr")?.remove();
        say(`${user.username} was deleted.`);
      });
    });
    const factor = user.second_factor ? h("button", { type: "button" }, "Remove second factor") : null;
    factor?.addEventListener("click", () => void attempt(async () => {
      await api<UserView>("DELETE", `/api/users/${encodeURIComponent(user.username)}/second-factor`);
      factor.remove();
      say(`${user.username}'s second factor is removed: they enrol again.`);
    }));
    return h("span", { class: "row" }, reset, factor, remove);
  };
  const toggle = (user: UserView) => {
    const button = h("button", { type: "button" }, user.disabled ? "Enable" : "Disable");
    button.addEventListener("click", () => void attempt(async () => {
      const changed = await api<UserView>("PUT", `/api/users/${encodeURIComponent(user.username)}/disabled`, { disabled: !user.disabled } satisfies Disabling);
      user.disabled = changed.disabled;
      button.textContent = changed.disabled ? "Enable" : "Disable";
      say(`${changed.username} is ${changed.disabled ? "disabled: their sessions ended" : "enabled again"}.`);
    }));
    return button;
  };
  const who = (user: UserView) => user.sso
    ? h("span", {}, user.username, h("small", {}, ` (${user.sso.provider}: ${user.sso.groups.join(", ") || "no groups"})`))
    : user.username;
  const row = (user: UserView) => [who(user), roleSelect(user), when(user.created_at), h("span", { class: "row" }, actions(user), toggle(user))];

  const name = h("input", { name: "username", required: true, autocomplete: "off", pattern: "[A-Za-z0-9._-]{1,64}" });
  const role = h("select", { name: "role" }, ...ROLES.map((r) => h("option", { value: r, selected: r === "viewer" }, r)));
  const form = h("form", { class: "row" }, h("label", {}, "New user", name), h("label", {}, "Role", role),
    h("button", { class: "primary", type: "submit" }, "Create"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void attempt(async () => {
      const created = await api<Credentials>("POST", "/api/users", { username: name.value, role: chosen(role.value) } satisfies NewUser);
      const user: UserView = { username: created.username, role: chosen(role.value), created_at: new Date().toISOString(), disabled: false, second_factor: false };
      list.querySelector("tbody")!.append(h("tr", {}, ...row(user).map((cell) => h("td", {}, cell))));
      reveal(created, "Created");
      form.reset();
    });
  });
  const list = table(["User", "Role", "Created", ""], users.map(row), "Users");
  main.append(h("h1", {}, "Users"), form, error, shown, list);
}

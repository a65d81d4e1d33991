// Users (admin): the accounts, new ones and password resets — a generated password is shown once.

import { api, ApiError } from "../api";
import { h, table, when } from "../dom";

interface UserView { username: string; role: string; created_at: string }
interface Credentials { username: string; password: string }

export async function usersPage(main: HTMLElement): Promise<void> {
  const users = await api<UserView[]>("GET", "/api/users");
  const shown = h("div", { role: "status", "aria-live": "polite" });
  const reveal = (credentials: Credentials, what: string) => shown.replaceChildren(h("p", { class: "card" },
    `${what} ${credentials.username}. Password, shown only now: `, h("code", { "data-password": "" }, credentials.password)));
  const error = h("p", { class: "error", role: "alert" });
  const name = h("input", { name: "username", required: true, autocomplete: "off", pattern: "[A-Za-z0-9._-]{1,64}" });
  const role = h("select", { name: "role" }, ...["viewer", "operator", "admin"].map((r) => h("option", { value: r }, r)));
  const form = h("form", { class: "row" }, h("label", {}, "New user", name), h("label", {}, "Role", role),
    h("button", { class: "primary", type: "submit" }, "Create"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      const created = await api<Credentials>("POST", "/api/users", { username: name.value, role: role.value });
      list.querySelector("tbody")!.append(h("tr", {}, ...[created.username, role.value, when(new Date().toISOString()),
        reset(created.username)].map((cell) => h("td", {}, cell))));
      reveal(created, "Created");
      form.reset();
    } catch (failure) {
      error.textContent = failure instanceof ApiError ? failure.message : String(failure);
    }
  });
  const reset = (user: string) => {
    const button = h("button", { type: "button" }, "Reset password");
    button.addEventListener("click", async () => {
      reveal(await api<Credentials>("POST", `/api/users/${encodeURIComponent(user)}/password`), "New password for");
    });
    return button;
  };
  const list = table(["User", "Role", "Created", ""],
    users.map((u) => [u.username, u.role, when(u.created_at), reset(u.username)]), "Users");
  main.append(h("h1", {}, "Users"), form, error, shown, list);
}

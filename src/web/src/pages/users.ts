import { api } from "../api";
import { h, table, when } from "../dom";

export async function usersPage(main: HTMLElement): Promise<void> {
  const users = await api<{ username: string; role: string; created_at: string }[]>("GET", "/api/users");
  main.append(h("h1", {}, "Users"),
    table(["User", "Role", "Created"], users.map((u) => [u.username, u.role, when(u.created_at)]), "Users"),
    h("p", { class: "muted" }, "Add users and reset passwords with `linkops user add` and `linkops user passwd`."));
}

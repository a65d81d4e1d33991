import { api, ApiError, offeredRole, saveSession } from "../api";
import type { LoginRequest, LoginResponse, Me, SignInOptions } from "../contract";
import { h } from "../dom";

export async function loginPage(main: HTMLElement): Promise<void> {
  const error = h("p", { class: "error", role: "alert" });
  const user = h("input", { name: "username", autocomplete: "username", required: true, value: "admin" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "stack card login" },
    h("h1", {}, "Sign in to LinkOps"),
    h("label", {}, "User", user),
    h("label", {}, "Password", password),
    h("button", { class: "primary", type: "submit" }, "Sign in"),
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      const answer = await api<LoginResponse>("POST", "/api/auth/login",
        { username: user.value, password: password.value } satisfies LoginRequest);
      saveSession({ token: answer.token, user: user.value, role: answer.role ?? null });
      // What access.yaml gives counts too: the console offers the highest.
      const me = await api<Me>("GET", "/api/auth/me");
      saveSession({ token: answer.token, user: user.value, role: offeredRole(me.grants) });
      location.hash = "#/fleet";
    } catch (failure) {
      error.textContent = failure instanceof ApiError ? failure.message : String(failure);
    }
  });
  main.append(form);
  // Back from an identity provider that refused: say why.
  const refused = new URLSearchParams(location.hash.split("?", 2)[1] ?? "").get("error");
  if (refused) error.textContent = refused;
  const options = await api<SignInOptions>("GET", "/api/auth/providers");
  if (options.providers.length > 0) {
    form.prepend(...options.providers.map((provider) =>
      h("a", { class: "button primary", href: provider.start }, `Sign in with ${provider.display_name}`)),
    h("p", {}, options.passwords_for_admins_only ? "Or, for local admin accounts, with a password:" : "Or with a password:"));
  }
  password.focus();
}

// Your account: a second factor (TOTP, enrolled with a QR code; recovery codes shown once) and
// your API tokens (made with a grant within yours, shown once; revoked here).

import { api, ApiError } from "../api";
import type { CreatedToken, Me, NewToken, RecoveryCodes, Role, SecondFactorEnrolment, TokenView } from "../contract";
import { h, table, when } from "../dom";

export async function accountPage(main: HTMLElement): Promise<void> {
  const me = await api<Me>("GET", "/api/auth/me");
  const error = h("p", { class: "error", role: "alert" });
  const shown = h("div", { role: "status", "aria-live": "polite" });
  const attempt = async (work: () => Promise<void>) => {
    error.textContent = "";
    try {
      await work();
    } catch (failure) {
      error.textContent = failure instanceof ApiError ? failure.message : String(failure);
    }
  };
  main.append(h("h1", {}, "Account"), error, shown);

  // The second factor.
  const factor = h("section", { class: "stack" }, h("h2", {}, "Second factor"));
  if (me.second_factor) {
    factor.append(h("p", {}, "A TOTP second factor is enrolled. Terminals, protected machines and admin actions ask for a code."));
  } else {
    const begin = h("button", { type: "button", class: "primary" }, "Set up an authenticator app");
    begin.addEventListener("click", () => void attempt(async () => {
      const enrolment = await api<SecondFactorEnrolment>("POST", "/api/auth/second-factor");
      // The daemon's own SVG, parsed as an image document: no script runs in it.
      const svg = new DOMParser().parseFromString(enrolment.qr_svg, "image/svg+xml").documentElement;
      svg.setAttribute("role", "img");
      svg.setAttribute("aria-label", "QR code of the second factor");
      const code = h("input", { name: "code", inputmode: "numeric", autocomplete: "one-time-code", required: true });
      const confirm = h("form", { class: "row" }, h("label", {}, "First code of the app", code),
        h("button", { class: "primary", type: "submit" }, "Confirm"));
      confirm.addEventListener("submit", (event) => {
        event.preventDefault();
        void attempt(async () => {
          const codes = await api<RecoveryCodes>("POST", "/api/auth/second-factor/confirm", { code: code.value.trim() });
          factor.replaceChildren(h("h2", {}, "Second factor"),
            h("p", {}, "Enrolled. Keep these recovery codes somewhere safe: each works once in place of a code, and they are shown only now."),
            h("ul", {}, ...codes.recovery_codes.map((c) => h("li", {}, h("code", {}, c)))));
        });
      });
      factor.replaceChildren(h("h2", {}, "Second factor"),
        h("p", {}, "Scan this with your authenticator app, or type the secret:"), svg,
        h("p", {}, h("code", {}, enrolment.secret)), confirm);
    }));
    factor.append(h("p", {}, me.second_factor_at ? "" : "None yet: terminals, protected machines and admin actions will ask for one."), begin);
  }
  main.append(factor);

  // API tokens.
  const tokens = await api<TokenView[]>("GET", "/api/tokens");
  const scope = (token: TokenView) => {
    const g = token.grant;
    const parts = [g.role, ...(g.tags ?? []).map((t) => `tag ${t}`), ...(g.machines ?? []).map((m) => `machine ${m}`)];
    if ((g.scripts ?? []).length > 0) parts.push(`scripts ${(g.scripts ?? []).join(", ")}`);
    return parts.join(", ");
  };
  const revoke = (token: TokenView) => {
    const button = h("button", { type: "button", "aria-label": `Revoke ${token.name}` }, "Revoke");
    button.addEventListener("click", () => void attempt(async () => {
      await api("DELETE", `/api/tokens/${encodeURIComponent(token.id)}`);
      button.closest("tr")?.remove();
      shown.textContent = `${token.name} is revoked.`;
    }));
    return button;
  };
  const row = (token: TokenView) => [token.name, token.owner ?? "service", scope(token), when(token.expires_at),
    token.last_used_at ? when(token.last_used_at) : "never", revoke(token)];
  const list = table(["Name", "For", "Grant", "Expires", "Last used", ""], tokens.map(row), "API tokens");
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9._-]{1,64}", autocomplete: "off" });
  const role = h("select", { name: "role" }, ...["viewer", "operator"].map((r) => h("option", { value: r }, r)));
  const tags = h("input", { name: "tags", placeholder: "web db" });
  const scripts = h("input", { name: "scripts", placeholder: "deploy" });
  const days = h("input", { name: "days", type: "number", min: 1, max: 90, value: 30, required: true });
  const make = h("form", { class: "row" }, h("label", {}, "Name", name), h("label", {}, "Role", role),
    h("label", {}, "Tags", tags), h("label", {}, "Scripts", scripts), h("label", {}, "Days", days),
    h("button", { class: "primary", type: "submit" }, "Make a token"));
  const words = (input: HTMLInputElement) => input.value.split(/[\s,]+/).filter(Boolean);
  make.addEventListener("submit", (event) => {
    event.preventDefault();
    void attempt(async () => {
      const expires = new Date(Date.now() + Number(days.value) * 86_400_000).toISOString();
      const body: NewToken = { name: name.value, expires_at: expires, service: false,
        grant: { role: role.value as Role, tags: words(tags), machines: [], scripts: words(scripts) } };
      const made = await api<CreatedToken>("POST", "/api/tokens", body);
      list.querySelector("tbody")!.append(h("tr", {}, ...row(made).map((cell) => h("td", {}, cell))));
      shown.replaceChildren(h("p", {}, `Token ${made.name} — copy it now, it is shown only once: `), h("code", {}, made.token));
      make.reset();
    });
  });
  main.append(h("section", { class: "stack" }, h("h2", {}, "API tokens"),
    h("p", {}, "For automation: set LINKOPS_TOKEN for the CLI, or send it as Authorization: Bearer."), list, make));
}

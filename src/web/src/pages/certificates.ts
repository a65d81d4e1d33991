// Certificates: adding a machine (a form that writes the `linkops enroll` command to run where the
// operator's own SSH access is), the SSH certificate authority's fingerprints and the user CA's age,
// its rotation (admin), the host certificates signed, and revocations (revoking: admin).

import { api, ApiError, session } from "../api";
import type { CaView, Revocation, RevokeRequest, RotateRequest } from "../contract";
import { h, put, table, when } from "../dom";

/** What the "Add machine" form asks. */
export interface Enrollment {
  server: string;
  host: string;
  port: string;
  id: string;
  tags: string[];
  user: string;
  login: string;
  credential: "agent" | "identity" | "password";
  identity: string;
  fingerprint: string;
  repo: string;
  push: boolean;
}

/** A word as a POSIX shell reads it back unchanged. */
export function shellWord(word: string): string {
  return /^[A-Za-z0-9@%+=:,./_-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}

/** The `linkops enroll` command the form describes; defaults are left out. */
export function enrollCommand(e: Enrollment): string {
  const words = ["linkops", "--server", e.server, "enroll", e.host];
  const option = (name: string, value: string, otherwise = "") => {
    if (value.trim() && value.trim() !== otherwise) words.push(name, value.trim());
  };
  option("--port", e.port, "22");
  option("--id", e.id);
  for (const tag of e.tags) option("--tag", tag);
  option("--user", e.user, "root");
  option("--login", e.login, "root");
  if (e.credential === "identity") option("--identity", e.identity);
  if (e.credential === "password") words.push("--password");
  option("--host-key-fingerprint", e.fingerprint);
  if (e.repo.trim()) {
    option("--repo", e.repo);
    if (e.push) words.push("--push");
  } else {
    words.push("--print");
  }
  return words.map(shellWord).join(" ");
}

export async function certificatesPage(main: HTMLElement): Promise<void> {
  const ca = await api<CaView>("GET", "/api/ca");
  const admin = session()?.role === "admin";
  main.append(h("h1", {}, "Certificates"), addMachine(), authority(ca, admin, main));
  main.append(h("h2", {}, "Host certificates signed"),
    ca.host_certificates.length
      ? table(["Machine", "Serial", "Names", "Host key", "By", "Valid until"], ca.host_certificates.map((c) =>
        [c.machine, h("code", {}, c.serial), c.principals.join(", "), h("code", {}, c.host_key), c.issued_by,
          when(new Date(c.valid_before_ms).toISOString())]), "Host certificates")
      : h("p", { class: "muted" }, "None yet: enrolling a machine asks for one."));
  main.append(revocations(ca.revocations, admin));
}

/** The form that writes the enroll command, and the command. */
function addMachine(): HTMLElement {
  const field = (label: string, attrs: Record<string, string | boolean>) =>
    h("label", {}, label, h("input", { autocomplete: "off", ...attrs }));
  const credential = h("select", { name: "credential" },
    h("option", { value: "agent" }, "your ssh-agent's keys"),
    h("option", { value: "identity" }, "a key file"),
    h("option", { value: "password" }, "your password, typed once"));
  const form = h("form", { class: "stack", "aria-label": "Add machine" },
    field("Host name or address", { name: "host", required: true, placeholder: "web-3.lan" }),
    field("Port", { name: "port", value: "22", inputmode: "numeric" }),
    field("Machine id (default: the host name's first label)", { name: "id" }),
    field("Tags (comma-separated)", { name: "tags" }),
    field("Login the daemon will use", { name: "user", value: "root" }),
    field("Your login on it (writes /etc/ssh)", { name: "login", value: "root" }),
    h("label", {}, "Log in with", credential),
    field("Key file", { name: "identity", placeholder: "~/.ssh/id_ed25519" }),
    field("Host key fingerprint (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on it)", { name: "fingerprint", placeholder: "SHA256:…" }),
    field("Your checkout of the config repository (empty: print the entry)", { name: "repo", placeholder: "~/fleet-config" }),
    h("label", { class: "row" }, h("input", { type: "checkbox", name: "push" }), "push the branch enroll/<id>"));
  const command = h("code", { "data-enroll-command": "" });
  const draw = () => {
    const data = new FormData(form);
    const text = (name: string) => String(data.get(name) ?? "");
    const host = text("host").trim();
    command.textContent = host ? enrollCommand({
      server: location.origin, host, port: text("port"), id: text("id"),
      tags: text("tags").split(",").map((t) => t.trim()).filter(Boolean),
      user: text("user"), login: text("login"), credential: text("credential") as Enrollment["credential"],
      identity: text("identity"), fingerprint: text("fingerprint"), repo: text("repo"), push: data.get("push") === "on",
    }) : "(a host first)";
  };
  form.addEventListener("input", draw);
  form.addEventListener("change", draw);
  form.addEventListener("submit", (event) => event.preventDefault());
  draw();
  return h("section", { class: "card", "aria-label": "Add machine" },
    h("h2", {}, "Add machine"),
    h("p", { class: "muted" }, "Run this where you can ssh to the machine as your login, signed in with `linkops login` (admin). ",
      "Over your access, once, it installs the trust in the daemon's certificates, a host certificate and the enrollment id, ",
      "then proposes the machine's entry for links.yaml: merged, the daemon reaches it with certificates alone."),
    form, h("p", {}, "Command:"), h("pre", { class: "command" }, command));
}

/** The CAs, the user CA's age, its rotation. */
function authority(ca: CaView, admin: boolean, main: HTMLElement): HTMLElement {
  const due = ca.user_ca_rotation_due_days;
  const section = h("section", { class: "card", "aria-label": "Certificate authority" },
    h("h2", {}, "Certificate authority"),
    h("dl", {},
      h("dt", {}, "User CA (machines trust it for the daemon's logins)"), h("dd", {}, h("code", { "data-user-ca": "" }, ca.user_ca_fingerprint),
        ` signing since ${when(ca.user_ca_since)}`, due == null ? "" : due < 0 ? `, rotation overdue by ${-due} days` : `, rotation due in ${due} days`),
      h("dt", {}, "Host CA (proves machines' host keys)"), h("dd", {}, h("code", {}, ca.host_ca_fingerprint))));
  const message = h("p", { role: "status", "aria-live": "polite" });
  const step = async (request: RotateRequest) => {
    try {
      await api<CaView>("POST", "/api/ca/rotation", request);
      main.replaceChildren();
      await certificatesPage(main);
    } catch (failure) {
      message.textContent = failure instanceof ApiError ? failure.message : String(failure);
    }
  };
  const rotation = ca.rotation;
  if (rotation) {
    put(section, h("h3", {}, "Rotation under way"),
      h("p", {}, "Next user CA ", h("code", {}, rotation.next_user_ca_fingerprint), ", trusted beside the current one, which still signs."),
      rotation.waiting_for.length
        ? table(["Machine", "Waiting for"], rotation.waiting_for.map((w) => [w.machine, w.reason]), "Machines the rotation waits for")
        : h("p", {}, "Every machine on certificates trusts it: the rotation may finish."));
  }
  if (admin) {
    const button = rotation
      ? h("button", { type: "button", disabled: rotation.waiting_for.length > 0 }, "Finish rotation")
      : h("button", { type: "button" }, "Begin rotation");
    button.addEventListener("click", () => void step(rotation ? { finish: true, force: false } : { finish: false, force: false }));
    put(section, h("div", { class: "row" }, button, message));
  }
  return section;
}

/** The revocations, and (admin) the form that revokes. */
function revocations(revoked: Revocation[], admin: boolean): HTMLElement {
  const list = table(["Serial", "Kind", "Machine", "Reason", "By", "When"], revoked.map((r) =>
    [h("code", {}, r.serial), r.kind, r.machine ?? "—", r.reason, r.revoked_by, when(new Date(r.revoked_at_ms).toISOString())]), "Revocations");
  const section = h("section", { "aria-label": "Revocations" }, h("h2", {}, "Revoked"), list);
  if (!admin) return section;
  const what = h("input", { name: "what", required: true, autocomplete: "off" });
  const reason = h("input", { name: "reason", required: true, autocomplete: "off" });
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "row", "aria-label": "Revoke" },
    h("label", {}, "Serial or machine id", what), h("label", {}, "Reason", reason),
    h("button", { type: "submit" }, "Revoke"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const value = what.value.trim();
    const body: RevokeRequest = /^\d+$/.test(value)
      ? { serial: value, reason: reason.value }
      : { machine: value, reason: reason.value };
    try {
      const added = await api<Revocation[]>("POST", "/api/ca/revocations", body);
      const rows = list.querySelector("tbody")!;
      for (const r of added) {
        rows.append(h("tr", {}, ...[h("code", {}, r.serial), r.kind, r.machine ?? "—", r.reason, r.revoked_by,
          when(new Date(r.revoked_at_ms).toISOString())].map((cell) => h("td", {}, cell))));
      }
      form.reset();
    } catch (failure) {
      error.textContent = failure instanceof ApiError ? failure.message : String(failure);
    }
  });
  put(section, form);
  return section;
}

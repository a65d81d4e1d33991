// Run a script: a form generated from the catalog's typed parameters, targets by machine or tag.

import { api, ApiError } from "../api";
import type { ApprovalView, DesiredState, MachineView, OperationView, ParamSpec, RunBody } from "../contract";
import { h } from "../dom";

export async function runPage(main: HTMLElement): Promise<void> {
  const [desired, machines] = await Promise.all([api<DesiredState>("GET", "/api/desired"), api<MachineView[]>("GET", "/api/links")]);
  const scripts = Object.values(desired.scripts);
  const select = h("select", { name: "script", required: true }, ...scripts.map((s) => h("option", { value: s.id }, s.name)));
  const description = h("p", { class: "muted" });
  const params = h("fieldset", { class: "stack" });
  const tags = [...new Set(machines.flatMap((m) => m.tags))].sort();
  const targets = h("fieldset", { class: "stack" },
    h("legend", {}, "Targets (none: the script's defaults)"),
    h("div", { class: "row" }, ...tags.map((tag) => h("label", { class: "row" }, h("input", { type: "checkbox", name: "tag", value: tag }), `tag ${tag}`))),
    h("div", { class: "row" }, ...machines.map((m) => h("label", { class: "row" },
      h("input", { type: "checkbox", name: "machine", value: m.id }), m.id, m.enrollment.state === "enrolled" ? "" : h("small", {}, ` (${m.enrollment.state})`)))));
  const error = h("p", { class: "error", role: "alert" });
  const drawParams = () => {
    const script = desired.scripts[select.value];
    description.textContent = script?.description ?? "";
    params.replaceChildren(h("legend", {}, "Parameters"), ...(script?.params ?? []).map((spec) => paramInput(spec, secretsFor(desired, select.value))));
    if (!script?.params.length) params.append(h("p", { class: "muted" }, "This script takes no parameters."));
  };
  select.addEventListener("change", drawParams);
  drawParams();
  const form = h("form", { class: "stack" }, h("label", {}, "Script", select), description, params, targets,
    h("button", { class: "primary", type: "submit" }, "Run"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const data = new FormData(form);
    const values: Record<string, string | number | boolean> = {};
    for (const spec of desired.scripts[select.value].params) {
      const raw = data.get(`param.${spec.name}`);
      if (spec.kind === "bool") values[spec.name] = raw === "on";
      else if (raw !== null && raw !== "") values[spec.name] = spec.kind === "int" ? Number(raw) : String(raw);
    }
    try {
      const body: RunBody = {
        script: select.value,
        targets: { machines: data.getAll("machine").map(String), tags: data.getAll("tag").map(String) },
        params: values,
      };
      // Started, or — under an approval rule — waiting for approvers.
      const answer = await api<OperationView | ApprovalView>("POST", "/api/operations/run", body);
      location.hash = "request" in answer ? `#/approvals/${answer.request.id}` : `#/operations/${answer.id}`;
    } catch (failure) {
      error.textContent = failure instanceof ApiError ? failure.message : String(failure);
    }
  });
  main.append(h("h1", {}, "Run a script"), scripts.length ? form : h("p", {}, "The catalog has no scripts."));
}

/// The secrets `script` may use (their names; values stay sealed in Git).
function secretsFor(desired: DesiredState, script: string): string[] {
  return Object.values(desired.secrets ?? {})
    .filter((secret) => !secret.scripts?.length || secret.scripts.includes(script))
    .map((secret) => secret.name);
}

function paramInput(spec: ParamSpec, secrets: string[]): HTMLElement {
  const name = `param.${spec.name}`;
  const hint = spec.description ? h("small", {}, spec.description) : null;
  if (spec.kind === "secret") {
    // A secret is chosen by name; the daemon opens it on each machine.
    return h("label", {}, spec.name, h("select", { name, "aria-label": spec.name, required: spec.required && spec.default == null },
      h("option", { value: "" }, "(choose a secret)"),
      ...secrets.map((v) => h("option", { value: v, selected: v === spec.default }, `secret ${v}`))), hint);
  }
  if (spec.kind === "bool") {
    return h("label", { class: "row" }, h("input", { type: "checkbox", name, checked: spec.default === true }), spec.name, hint);
  }
  if (spec.kind === "enum") {
    return h("label", {}, spec.name, h("select", { name }, ...spec.values.map((v) => h("option", { value: v, selected: v === spec.default }, v))), hint);
  }
  return h("label", {}, spec.name, h("input", {
    name, type: spec.kind === "int" ? "number" : "text", required: spec.required && spec.default == null,
    value: spec.default == null ? undefined : String(spec.default), pattern: spec.pattern ?? undefined,
  }), hint);
}

// Approvals: runs waiting for a second pair of eyes (access.yaml's approvals), and each one's page
// to approve or reject it — by someone other than who asked, holding the rule's role.

import { api, ApiError } from "../api";
import type { ApprovalView } from "../contract";
import { badge, h, table, when } from "../dom";

export async function approvalsPage(main: HTMLElement): Promise<void> {
  const views = await api<ApprovalView[]>("GET", "/api/approvals");
  main.append(h("h1", {}, "Approvals"));
  if (views.length === 0) {
    main.append(h("p", {}, "No run has waited for approval (access.yaml's approvals name the runs that do)."));
    return;
  }
  main.append(table(["Request", "State", "Script", "Machines", "Asked by", "Approvals", "Expires"],
    views.map((view) => [
      h("a", { href: `#/approvals/${view.request.id}` }, `#${view.request.id}`),
      badge(view.state.state),
      view.request.content.script,
      view.request.content.machines.join(", "),
      label(view),
      `${view.approvals} of ${view.request.approvers}`,
      when(new Date(view.request.expires_at_ms).toISOString()),
    ]), "Approval requests"));
}

export async function approvalPage(main: HTMLElement, [id]: string[]): Promise<void> {
  const view = await api<ApprovalView>("GET", `/api/approvals/${id}`);
  const request = view.request;
  const content = request.content;
  const params = Object.entries(content.params ?? {}).map(([name, value]) => `${name}=${String(value)}`).join(" ");
  main.append(
    h("h1", {}, `Approval request #${request.id}`),
    h("p", {}, badge(view.state.state), " ",
      `${label(view)} asks to run ${content.script}${params ? ` (${params})` : ""} on ${content.machines.join(", ")}.`),
    h("p", { class: "muted" }, `Rules ${request.rules.join(", ")}: ${request.approvers} approval(s) by others holding ${request.role} ` +
      `over its machines; ${view.approvals} so far; expires ${when(new Date(request.expires_at_ms).toISOString())}.`),
  );
  if (view.state.state === "started") {
    main.append(h("p", {}, "Approved: ", h("a", { href: `#/operations/${view.state.operation_id}` }, `operation #${view.state.operation_id}`)));
  }
  if ("reason" in view.state) main.append(h("p", {}, view.state.reason));
  if (request.votes.length) {
    main.append(table(["By", "Vote", "Comment", "When"], request.votes.map((vote) => [
      vote.by, vote.approve ? "approved" : "rejected", vote.comment ?? "", when(new Date(vote.at_ms).toISOString()),
    ]), "Votes"));
  }
  if (view.state.state !== "awaiting_approval") return;
  const comment = h("input", { name: "comment", maxlength: "500" });
  const error = h("p", { class: "error", role: "alert" });
  const vote = (verb: "approve" | "reject") => async () => {
    try {
      await api<ApprovalView>("POST", `/api/approvals/${request.id}/${verb}`, { comment: comment.value });
      location.reload();
    } catch (failure) {
      error.textContent = failure instanceof ApiError ? failure.message : String(failure);
    }
  };
  const approve = h("button", { type: "button" }, "Approve");
  const reject = h("button", { type: "button", class: "danger" }, "Reject");
  approve.addEventListener("click", vote("approve"));
  reject.addEventListener("click", vote("reject"));
  main.append(h("div", { class: "stack" }, h("label", { class: "stack" }, "Comment", comment), h("div", { class: "row" }, approve, reject), error));
}

/** Who asked, in a word. */
function label(view: ApprovalView): string {
  const by = view.request.requested_by;
  switch (by.kind) {
    case "user": return by.name;
    case "run_request": return `run-request ${by.id}`;
    case "state": return `state ${by.id}`;
    case "schedule": return `schedule ${by.name}`;
    case "trigger": return `trigger ${by.name}`;
  }
}

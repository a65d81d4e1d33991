// Git: the revision in force, the last attempt, its problems as file:line:col, a sync button,
// the forge's commit statuses, and the outbox (what waits to be told, what was given up on).

import { api, ApiError, session } from "../api";
import type { GitStatus, Message, OutboxView, Queued, SyncView } from "../contract";
import { badge, h, put, table, when } from "../dom";

export async function gitPage(main: HTMLElement): Promise<void> {
  const status = await api<GitStatus>("GET", "/api/git/status");
  const message = h("p", { role: "status", "aria-live": "polite" });
  const sync = h("button", { class: "primary", type: "button" }, "Sync now");
  sync.addEventListener("click", async () => {
    sync.disabled = true;
    message.textContent = "Syncing…";
    try {
      const record = await api<SyncView>("POST", "/api/git/sync");
      message.textContent = `Sync: ${record.result}`;
      main.replaceChildren();
      await gitPage(main);
    } catch (failure) {
      message.textContent = failure instanceof ApiError ? failure.message : String(failure);
      sync.disabled = false;
    }
  });
  const attempt = status.last_attempt;
  put(main,
    h("h1", {}, "Git"),
    h("dl", { class: "card" },
      h("dt", {}, "Repository"), h("dd", {}, status.url ?? "(none configured)", ` @ ${status.branch}`),
      h("dt", {}, "Revision in force"), h("dd", {}, h("code", {}, status.applied_revision ?? "none"), ` applied ${when(status.applied_at)}`),
      h("dt", {}, "Last attempt"), h("dd", {}, attempt ? badge(attempt.result) : "none",
        attempt ? ` ${attempt.revision?.slice(0, 12) ?? ""} by ${attempt.trigger}, ${when(attempt.started_at)}` : "")),
    status.last_error.length
      ? h("section", { class: "card", "aria-label": "Problems" },
        h("h2", {}, "The last revision was refused; the one in force stays"),
        h("ul", { class: "error" }, ...status.last_error.map((problem) => h("li", {}, h("code", {}, problem)))))
      : null,
    session()?.role === "admin" ? h("div", { class: "row" }, sync, message) : null,
  );
  if (status.statuses.length) {
    main.append(h("h2", {}, "On the forge"), table(["Context", "State", "Description", "Posted"],
      status.statuses.map((posted) => [posted.status.context, badge(posted.status.state), posted.status.description,
        when(posted.posted_at)]), "Commit statuses"));
  }
  // The outbox holds what the forge and sinks answered: admins only.
  if (session()?.role !== "admin") return;
  const outbox = await api<OutboxView>("GET", "/api/notifications");
  main.append(h("h2", {}, "Outbox"));
  if (!outbox.queued.length && !outbox.dead.length) {
    main.append(h("p", { class: "muted" }, "Nothing waits to be told; nothing was given up on."));
    return;
  }
  const rows = (messages: Queued[]) => messages.map((queued) => [
    `#${queued.seq}`, queued.channel, describe(queued.message), queued.attempts, queued.last_error ?? "—",
  ]);
  const headers = ["Message", "Channel", "What", "Attempts", "Last error"];
  if (outbox.queued.length) main.append(table(headers, rows(outbox.queued), "Waiting for delivery"));
  if (outbox.dead.length) {
    main.append(h("h3", {}, "Given up on"), table(headers, rows(outbox.dead), "Dead letters"));
  }
}

function describe(message: Message): string {
  return message.type === "commit_status"
    ? `${message.context} ${message.state} on ${message.sha.slice(0, 12)}`
    : `${message.kind}: ${message.title}`;
}

// Git: the revision in force, the last attempt, its problems as file:line:col, and a sync button.

import { api, ApiError, session } from "../api";
import type { GitStatus, SyncView } from "../contract";
import { badge, h, put, when } from "../dom";

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
}

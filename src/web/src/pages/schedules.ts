// Schedules: each one's cron expression and zone, its next fire as its zone reads it and as the
// browser's does, and what became of its fires.

import { api } from "../api";
import type { ScheduleDetail, ScheduleView } from "../contract";
import { badge, h, table, when } from "../dom";

export async function schedulesPage(main: HTMLElement): Promise<void> {
  const schedules = await api<ScheduleView[]>("GET", "/api/schedules");
  main.append(h("h1", {}, "Schedules"));
  if (schedules.length === 0) {
    main.append(h("p", {}, "No schedules: commit one under schedules/ (see the README's “Work on a schedule”)."));
    return;
  }
  main.append(table(["Schedule", "Runs", "When", "Next (its zone)", "Next (yours)", "Last fire"],
    schedules.map((view) => [
      h("a", { href: `#/schedules/${encodeURIComponent(view.schedule.name)}` }, view.schedule.name),
      view.schedule.state ? `state ${view.schedule.state}` : view.schedule.script,
      `${view.schedule.cron} (${view.schedule.zone})`,
      view.schedule.suspend ? badge("suspended") : view.held ? h("span", {}, badge("held"), " ", view.held) : view.next_fire_in_zone ?? "—",
      when(view.next_fire),
      view.last_fire ? badge(view.last_fire.outcome.outcome) : "—",
    ]), "Schedules"));
}

export async function schedulePage(main: HTMLElement, [name]: string[]): Promise<void> {
  const detail = await api<ScheduleDetail>("GET", `/api/schedules/${encodeURIComponent(name)}`);
  const schedule = detail.schedule;
  main.append(
    h("h1", {}, `Schedule ${schedule.name}`),
    h("p", {}, schedule.description || "", " ",
      h("span", { class: "muted" }, `${schedule.state ? `applies state ${schedule.state} (script ${schedule.script})` : `script ${schedule.script}`} · ${schedule.cron} in ${schedule.zone} · catch-up ${schedule.catch_up} · concurrency ${schedule.concurrency}`)),
    h("p", {}, "Next fire: ", detail.next_fire_in_zone ?? "none", detail.next_fire ? ` (${when(detail.next_fire)} here)` : "",
      detail.held ? `, held: ${detail.held}` : ""),
    table(["Due", "Result", "What"], detail.fires.map((fire) => [
      when(new Date(fire.due_ms).toISOString()), badge(fire.outcome.outcome),
      fire.outcome.outcome === "started" ? h("a", { href: `#/operations/${fire.outcome.operation_id}` }, `operation #${fire.outcome.operation_id}`)
        : fire.outcome.outcome === "awaiting_approval" ? h("a", { href: `#/approvals/${fire.outcome.approval}` }, `approval request #${fire.outcome.approval}`)
        : fire.outcome.reason,
    ]), `Fires of ${schedule.name}`),
  );
}

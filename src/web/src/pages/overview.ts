// The fleet at a glance, drawn: availability and each declared state's compliance over a day or a
// week, operation durations per script, what the machines are (facts). The daemon aggregates; a
// fleet of 10,000 machines is a few hundred numbers here.

import { api } from "../api";
import { bars, type Category, stackedColumns } from "../charts";
import type { FleetPicture, ScheduleView } from "../contract";
import { h, table, when } from "../dom";

const HEALTH: Category[] = [
  { key: "reachable", name: "reachable", tone: "ok" },
  { key: "unreachable", name: "unreachable", tone: "bad" },
  { key: "unknown", name: "unknown", tone: "muted" },
];

/** A state's machines by standing, as its compliance is drawn. */
export const STANDINGS: Category[] = [
  { key: "in_sync", name: "in sync", tone: "ok" },
  { key: "drifted", name: "drifted", tone: "warn" },
  { key: "applying", name: "applying", tone: "accent" },
  { key: "failed", name: "failed", tone: "bad" },
  { key: "check_error", name: "check error", tone: "dark" },
  { key: "held", name: "held", tone: "purple" },
  { key: "pending", name: "pending", tone: "muted" },
];

/** How many of the nearest scheduled fires the Overview lists. */
const COMING_UP = 5;

const FACT_NAMES: Record<string, string> = {
  os: "Operating systems", kernel: "Kernels", arch: "Architectures", updates: "Pending updates",
  security_updates: "Pending security updates", reboot_required: "Reboot required",
};

export async function overviewPage(main: HTMLElement): Promise<void> {
  const span = new URLSearchParams(location.hash.split("?")[1] ?? "").get("span") === "week" ? "week" : "day";
  const started = performance.now();
  const [picture, schedules] = await Promise.all([
    api<FleetPicture>("GET", `/api/pictures/fleet?span=${span}`),
    api<ScheduleView[]>("GET", "/api/schedules"),
  ]);
  const choice = h("div", { class: "row span-choice", role: "group", "aria-label": "Span" },
    ...(["day", "week"] as const).map((each) => {
      const button = h("button", { type: "button", "aria-pressed": String(each === span) }, each === "day" ? "Last day" : "Last week");
      button.addEventListener("click", () => { location.hash = `#/overview?span=${each}`; });
      return button;
    }));
  const hour = 3_600_000;
  const columns = (points: FleetPicture["compliance"][number]["points"]) =>
    points.map((p) => ({ at: p.at_ms, values: p.values ?? null }));
  main.append(h("h1", {}, "Overview"), h("p", { class: "muted" }, `${picture.machines} machines you can see.`), choice);

  main.append(h("h2", {}, "Availability"));
  main.append(picture.availability
    ? stackedColumns("Machines by health, hourly", columns(picture.availability), HEALTH, hour)
    : h("p", { class: "muted" }, "Availability and compliance over time count every machine: they are shown to those who see the whole fleet."));

  if (picture.compliance.length) {
    main.append(h("h2", {}, "Compliance of each declared state"));
    main.append(h("div", { class: "pictures" }, ...picture.compliance.map((state) =>
      stackedColumns(`State ${state.state}: machines by standing, hourly`, columns(state.points), STANDINGS, hour))));
  }

  // What runs by itself next: the schedules' nearest fires.
  const next = schedules.filter((view) => view.next_fire && !view.schedule.suspend)
    .sort((a, b) => (a.next_fire ?? "").localeCompare(b.next_fire ?? "")).slice(0, COMING_UP);
  if (next.length) {
    main.append(h("h2", {}, "Coming up"), table(["Schedule", "Runs", "Next (its zone)", "Next (yours)"],
      next.map((view) => [
        h("a", { href: `#/schedules/${encodeURIComponent(view.schedule.name)}` }, view.schedule.name),
        view.schedule.state ? `state ${view.schedule.state}` : view.schedule.script,
        view.next_fire_in_zone ?? "—", when(view.next_fire),
      ]), "The next scheduled fires"));
  }

  main.append(h("h2", {}, "Operations: how long each script takes"));
  if (picture.durations.length) {
    // Seconds for long scripts, milliseconds when every median is under ten seconds.
    const inSeconds = picture.durations.some((d) => d.median_ms >= 10_000);
    const unit = inSeconds ? "s" : "ms";
    const shown = (ms: number) => (inSeconds ? Math.round(ms / 100) / 10 : ms);
    main.append(bars(`Median duration per script (${unit})`, picture.durations.map((d) => [d.script, shown(d.median_ms)]), ` ${unit}`),
      table(["Script", "Operations", "Not all succeeded", "Median", "90th percentile", "Longest"],
        picture.durations.map((d) => [d.script, d.operations, d.failed, `${shown(d.median_ms)} ${unit}`, `${shown(d.p90_ms)} ${unit}`,
          `${shown(d.max_ms)} ${unit}`]),
        "Operation durations per script"));
  } else {
    main.append(h("p", { class: "muted" }, `No operation finished in the last ${span}.`));
  }

  main.append(h("h2", {}, "What the machines are"));
  main.append(h("div", { class: "pictures" }, ...picture.facts.map((distribution) =>
    bars(FACT_NAMES[distribution.fact] ?? distribution.fact, distribution.values.map(([value, count]) => [value, count]),
      "", distribution.fact === "reboot_required" ? "warn" : "accent"))));
  // What the browser tests read: how long the page took from the request to drawn.
  main.dataset.drawnMs = String(Math.round(performance.now() - started));
}

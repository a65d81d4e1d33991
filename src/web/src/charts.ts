// Charts in plain SVG: the daemon sends a few hundred numbers per picture, so
// drawing them needs no charting library — no dependency to keep, nothing
// that breaks the console's strict CSP (colours are classes in app.css), and
// each chart is an image with a name and a description, its numbers one
// click away in a table that screen readers can read.

import { h, table } from "./dom";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 720;
const HEIGHT = 180;
const PAD = { left: 44, right: 8, top: 8, bottom: 22 };

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>, ...children: (SVGElement | string)[]): SVGElementTagNameMap[K] {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  element.append(...children);
  return element;
}

/** One category of a stacked chart: its key in each point's values, how it is named, its colour class. */
export type Category = { key: string; name: string; tone: Tone };

export type Tone = "ok" | "bad" | "warn" | "muted" | "accent" | "purple" | "dark";

/** One bar of a stacked chart: where it starts, and each category's value (none: a gap). */
export type Column = { at: number; values: Record<string, number> | null };

function frame(label: string, description: string, ...children: SVGElement[]): SVGSVGElement {
  const title = svg("title", {}, label);
  const desc = svg("desc", {}, description);
  return svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label, class: "chart" }, title, desc, ...children);
}

function axisLabels(max: number, unit: string): SVGElement[] {
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  return [0, 0.5, 1].map((fraction) => {
    const y = PAD.top + plotHeight * (1 - fraction);
    const value = max * fraction;
    const shown = value >= 100 || value === 0 ? Math.round(value) : value.toFixed(1);
    return svg("g", {},
      svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y, y2: y, class: "grid" }),
      svg("text", { x: PAD.left - 4, y: y + 4, "text-anchor": "end", class: "tick" }, `${shown}${unit}`));
  });
}

function timeLabel(at: number, withDay: boolean): string {
  const date = new Date(at);
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return withDay ? `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}` : time;
}

/**
 * Stacked columns over time (machines by health, a state's machines by standing): each column
 * the mean counts of its bucket, a gap where nothing was sampled.
 */
export function stackedColumns(label: string, columns: Column[], categories: Category[], bucketMs: number): HTMLElement {
  const totals = columns.map((c) => (c.values ? categories.reduce((sum, k) => sum + (c.values![k.key] ?? 0), 0) : 0));
  const max = Math.max(1, ...totals);
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const step = plotWidth / Math.max(1, columns.length);
  const bars: SVGElement[] = [];
  columns.forEach((column, index) => {
    if (!column.values) return;
    let y = PAD.top + plotHeight;
    for (const category of categories) {
      const value = column.values[category.key] ?? 0;
      if (value <= 0) continue;
      const height = (value / max) * plotHeight;
      y -= height;
      bars.push(svg("rect", { x: PAD.left + index * step + 0.5, y, width: Math.max(1, step - 1), height, class: `fill-${category.tone}` },
        svg("title", {}, `${timeLabel(column.at, bucketMs >= 3_600_000 * 2)}: ${category.name} ${value.toFixed(1)}`)));
    }
  });
  const days = columns.length > 0 && columns[columns.length - 1].at - columns[0].at > 86_400_000;
  const ticks = [0, Math.floor(columns.length / 2), columns.length - 1].filter((i) => columns[i]).map((i) =>
    svg("text", { x: PAD.left + i * step, y: HEIGHT - 6, class: "tick" }, timeLabel(columns[i].at, days)));
  const sampled = columns.filter((c) => c.values);
  const last = sampled[sampled.length - 1];
  const description = last
    ? `${sampled.length} of ${columns.length} buckets sampled; the latest: ${categories.map((k) => `${k.name} ${(last.values![k.key] ?? 0).toFixed(1)}`).join(", ")}`
    : "Nothing sampled in this span yet.";
  const chart = frame(label, description, ...axisLabels(max, ""), ...bars, ...ticks);
  return figure(label, chart, categories,
    table(["From", ...categories.map((k) => k.name)], sampled.map((c) => [timeLabel(c.at, true),
      ...categories.map((k) => (c.values![k.key] ?? 0).toFixed(1))]), `${label}: data`));
}

/** A line over time with its gaps (a machine's SSH latency), and a second, fainter line (its highest). */
export function lines(label: string, points: { at: number; value: number | null; high?: number | null }[], unit: string): HTMLElement {
  const max = Math.max(1, ...points.map((p) => p.high ?? p.value ?? 0));
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const x = (index: number) => PAD.left + (index + 0.5) * (plotWidth / Math.max(1, points.length));
  const y = (value: number) => PAD.top + plotHeight * (1 - value / max);
  const path = (pick: (p: (typeof points)[number]) => number | null | undefined) => {
    let d = "";
    let pen = false;
    points.forEach((point, index) => {
      const value = pick(point);
      if (value === null || value === undefined) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(index).toFixed(1)},${y(value).toFixed(1)}`;
      pen = true;
    });
    return d;
  };
  const dots = points.flatMap((point, index) => point.value === null ? [] : [
    svg("circle", { cx: x(index), cy: y(point.value), r: 2.5, class: "fill-accent" },
      svg("title", {}, `${timeLabel(point.at, true)}: ${point.value.toFixed(1)}${unit}${point.high != null ? ` (highest ${point.high}${unit})` : ""}`))]);
  const answered = points.filter((p) => p.value !== null);
  const description = answered.length
    ? `${answered.length} of ${points.length} buckets with answers; mean ${(answered.reduce((s, p) => s + p.value!, 0) / answered.length).toFixed(1)}${unit}, highest ${max}${unit}`
    : "No answer in this span.";
  const days = points.length > 0 && points[points.length - 1].at - points[0].at > 86_400_000;
  const ticks = [0, Math.floor(points.length / 2), points.length - 1].filter((i) => points[i]).map((i) =>
    svg("text", { x: x(i), y: HEIGHT - 6, class: "tick", "text-anchor": "middle" }, timeLabel(points[i].at, days)));
  const chart = frame(label, description, ...axisLabels(max, unit),
    svg("path", { d: path((p) => p.high), class: "line faint" }),
    svg("path", { d: path((p) => p.value), class: "line" }), ...dots, ...ticks);
  return figure(label, chart, [],
    table(["From", `Mean${unit ? ` (${unit.trim()})` : ""}`, "Highest"], answered.map((p) => [timeLabel(p.at, true),
      p.value!.toFixed(1), String(p.high ?? "—")]), `${label}: data`));
}

/** Horizontal bars, one per value (a fact's distribution, durations per script). */
export function bars(label: string, rows: [string, number][], unit = "", tone: Tone = "accent"): HTMLElement {
  const max = Math.max(1, ...rows.map(([, n]) => n));
  // Narrower than the time charts: bar charts sit two abreast, and their labels must stay readable.
  const width = 480;
  const rowHeight = 22;
  const labelWidth = 150;
  const height = Math.max(1, rows.length) * rowHeight + 4;
  const plotWidth = width - labelWidth - 60;
  const drawn = rows.map(([name, value], index) => svg("g", {},
    svg("text", { x: labelWidth - 6, y: index * rowHeight + 15, "text-anchor": "end", class: "tick" }, name.length > 24 ? `${name.slice(0, 23)}…` : name),
    svg("rect", { x: labelWidth, y: index * rowHeight + 3, width: Math.max(1, (value / max) * plotWidth), height: rowHeight - 6, class: `fill-${tone}` },
      svg("title", {}, `${name}: ${value}${unit}`)),
    svg("text", { x: labelWidth + (value / max) * plotWidth + 6, y: index * rowHeight + 15, class: "tick" }, `${value}${unit}`)));
  const description = rows.length ? rows.slice(0, 5).map(([name, value]) => `${name} ${value}${unit}`).join(", ") + (rows.length > 5 ? ", …" : "") : "None.";
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "chart bars" },
    svg("title", {}, label), svg("desc", {}, description), ...drawn);
  return figure(label, chart, [], table(["", "Value"], rows.map(([name, value]) => [name, `${value}${unit}`]), `${label}: data`));
}

function figure(label: string, chart: SVGSVGElement, categories: Category[], data: HTMLElement): HTMLElement {
  const legend = categories.length
    ? h("ul", { class: "legend" }, ...categories.map((k) => h("li", {}, h("span", { class: `swatch fill-${k.tone}`, "aria-hidden": "true" }), k.name)))
    : null;
  return h("figure", { class: "picture" }, h("figcaption", {}, label), chart as unknown as HTMLElement, legend,
    h("details", {}, h("summary", {}, "Numbers"), data));
}

/** A thin bar split by shares (a state's machines on one tag by standing); decoration beside its text. */
export function shareBar(parts: [Tone, number][]): HTMLElement {
  const all = parts.reduce((sum, [, n]) => sum + n, 0) || 1;
  let x = 0;
  const rects = parts.map(([tone, n]) => {
    const width = (n / all) * 100;
    const rect = svg("rect", { x, y: 0, width, height: 8, class: `fill-${tone}` });
    x += width;
    return rect;
  });
  return svg("svg", { viewBox: "0 0 100 8", class: "sharebar", "aria-hidden": "true", preserveAspectRatio: "none" }, ...rects) as unknown as HTMLElement;
}

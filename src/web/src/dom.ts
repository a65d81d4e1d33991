// Tiny DOM helpers: elements from tag, attributes and children.

export type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") element.addEventListener(name.replace(/^on/, ""), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  put(element, ...children);
  return element;
}

/** Appends children to a parent, skipping the absent ones. */
export function put(parent: HTMLElement, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(typeof child === "object" ? child : String(child));
  }
}

/** A badge coloured by what a state means. */
export function badge(text: string | null | undefined): HTMLElement {
  const value = text ?? "unknown";
  const good = ["reachable", "enrolled", "succeeded", "True", "connected", "applied", "unchanged", "success",
    "in_sync", "holds"];
  const bad = ["unreachable", "mismatch", "missing_file", "host_key_mismatch", "failed", "partially_failed",
    "False", "error", "invalid", "timeout", "interrupted", "denied", "failure", "revoked", "check_error", "halted"];
  const warn = ["running", "pending", "stopped", "connecting", "unknown", "skipped", "waiting", "suspended",
    "drifted", "applying", "held", "missed"];
  const kind = good.includes(value) ? "ok" : bad.includes(value) ? "bad" : warn.includes(value) ? "warn" : "";
  return h("span", { class: `badge ${kind}` }, value);
}

export function table(headers: string[], rows: Child[][], label: string): HTMLElement {
  return h("div", { class: "scroll" },
    h("table", { "aria-label": label },
      h("thead", {}, h("tr", {}, ...headers.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, ...rows.map((row) => h("tr", {}, ...row.map((cell) => h("td", {}, cell)))))));
}

export function when(time: string | null | undefined): string {
  if (!time) return "—";
  return new Date(time).toLocaleString();
}

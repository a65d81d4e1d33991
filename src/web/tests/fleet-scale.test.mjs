// The fleet page at 10,000 machines, in Debian's Chromium against a real `linkops serve` whose
// inventory holds 10,000 machines nobody listens for (each check fails at once: the first minute
// is 10,000 changes). It checks what the page shows and prints how long it took to first render
// and to show one change; the figures are reported in the README, not asserted (timings belong
// in benchmarks).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createInterface } from "node:readline";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

// Not LINKOPS_…: the daemon refuses environment settings it does not know.
const BINARY = process.env.CONSOLE_TEST_BINARY ?? new URL("../../../target/debug/linkops", import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const MACHINES = 10_000;
const WAIT = 120_000;

let dir, daemon, url, token, browser, page;

/** 10,000 machines on 127.200.x.y port 1: a connection there is refused at once. */
function inventory() {
  const lines = ["machines:"];
  for (let i = 0; i < MACHINES; i++) {
    const id = `m${String(i).padStart(5, "0")}`;
    const host = `127.200.${Math.floor(i / 250)}.${(i % 250) + 1}`;
    const uuid = `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`;
    lines.push(`  - {id: ${id}, name: ${id}, host: ${host}, port: 1, uuid: ${uuid}, tags: [${i % 2 ? "odd" : "even"}]}`);
  }
  return lines.join("\n") + "\n";
}

/** Starts the daemon; its address and the first admin's password, from its log. */
async function serve(config) {
  const child = spawn(BINARY, ["serve", "--listen", "127.0.0.1:0", "--config", config],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, LINKOPS_LOG: "info" } });
  let password, address;
  const lines = createInterface({ input: child.stderr });
  for await (const line of lines) {
    if (/^\s*[A-Za-z0-9]{20}\s*$/.test(line)) password = line.trim();
    const serving = /linkops serving.*address=(\S+)/.exec(line);
    if (serving) { address = serving[1]; break; }
  }
  // Keep reading, so the daemon never blocks on a full pipe.
  lines.on("line", () => {});
  assert.ok(address && password, "the daemon serves and prints the first admin's password");
  return { child, url: `http://${address}`, password };
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "linkops-fleet-scale-"));
  const repo = join(dir, "config");
  mkdirSync(repo);
  writeFileSync(join(repo, "links.yaml"), inventory());
  writeFileSync(join(repo, "scripts.yaml"), "scripts:\n  - {id: present, name: Present, body: 'true', check: 'true'}\n");
  mkdirSync(join(repo, "states"));
  writeFileSync(join(repo, "states", "present.yaml"), "id: present\nscript: present\ntargets: {tags: [even, odd]}\n");
  const git = (...args) => execFileSync("git", ["-C", repo, ...args]);
  git("init", "-q", "-b", "main");
  git("add", "-A");
  git("-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "10,000 machines");
  const data = join(dir, "data");
  mkdirSync(data, { mode: 0o700 });
  chmodSync(data, 0o700);
  const config = join(dir, "config.toml");
  // Its admin suspends a machine without a second factor: this measures the page, not the step-up.
  writeFileSync(config, `data_dir = ${JSON.stringify(data)}\n[git]\nurl = ${JSON.stringify(repo)}\n[reconcile]\nconcurrency = 64\n[auth]\nstep_up = false\n[pictures]\ninterval = "1s"\n`);
  daemon = await serve(config);
  url = daemon.url;
  const login = await fetch(`${url}/api/auth/login`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: "admin", password: daemon.password }),
  }).then((r) => r.json());
  token = login.token;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(WAIT);
  // Signed in as the login page would leave it.
  await page.goto(`${url}/#/login`);
  await page.evaluate((session) => sessionStorage.setItem("linkops.session", JSON.stringify(session)),
    { token, user: "admin", role: "admin" });
});

after(async () => {
  await browser?.close();
  if (daemon?.child) {
    const exited = new Promise((resolve) => daemon.child.once("exit", resolve));
    daemon.child.kill("SIGTERM");
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("the fleet page shows 10,000 machines: counts at a glance, a page of rows, live changes", async () => {
  const started = performance.now();
  await page.goto(`${url}/#/fleet`);
  const summary = page.getByLabel("Fleet summary");
  await summary.getByText(`${MACHINES} machines:`).waitFor();
  await page.getByText(`1–100 of ${MACHINES}`).waitFor();
  const firstRender = performance.now() - started;
  // One page of rows in the DOM, not the fleet.
  assert.equal(await page.getByRole("row").count(), 101);

  // Every check fails at once (nothing listens): the counts follow the stream to 10,000 unreachable.
  await page.waitForFunction((count) => document.querySelector("[aria-label='Fleet summary']")?.textContent
    ?.includes(`unreachable ${count}`), MACHINES, { timeout: WAIT });

  // One change, end to end: a suspension through the API, shown on the open page.
  const changed = performance.now();
  const suspended = await fetch(`${url}/api/reconcile/suspend`, {
    method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ machine: "m00000" }),
  });
  assert.equal(suspended.status, 200);
  const row = page.getByRole("row").filter({ has: page.getByRole("link", { name: "m00000", exact: true }) });
  await row.getByText("suspended", { exact: true }).waitFor();
  const oneChange = performance.now() - changed;

  // The search narrows 10,000 to one, and the pages move.
  await page.getByLabel("Search machines").fill("m09999");
  await page.getByText("1–1 of 1").waitFor();
  await page.getByLabel("Search machines").fill("");
  await page.getByRole("button", { name: "Next" }).click();
  await page.getByText(`101–200 of ${MACHINES}`).waitFor();
  // What of the first render is the daemon's: its snapshot, read as the page reads it.
  const asked = performance.now();
  const stream = await fetch(`${url}/api/fleet/events?shape=rows&access_token=${encodeURIComponent(token)}`);
  const reader = stream.body.getReader();
  const decoder = new TextDecoder();
  const chunks = [];
  let bytes = 0;
  let last = "";
  // Until the blank line that ends the first event (looked for in each new chunk only).
  for (;;) {
    const { value, done } = await reader.read();
    assert.ok(!done, "the stream sends a snapshot");
    bytes += value.length;
    const text = decoder.decode(value, { stream: true });
    chunks.push(text);
    if ((last + text).includes("\n\n")) break;
    last = text.slice(-1);
  }
  const received = chunks.join("");
  const snapshot = performance.now() - asked;
  await reader.cancel();
  assert.match(received, /^(id: .*\n)?event: snapshot\n/m);
  console.log(`fleet page at ${MACHINES} machines: first render ${firstRender.toFixed(0)} ms (the daemon's snapshot alone: ${snapshot.toFixed(0)} ms, ${(bytes / 1e6).toFixed(1)} MB), one change shown ${oneChange.toFixed(0)} ms after the API call`);
});

test("the fleet's pictures at 10,000 machines: aggregated by the daemon, drawn at once", async () => {
  // The leader samples every second (the hour's mean of its samples is drawn): wait until the
  // samples saw machines unreachable — every check fails, none answers.
  const deadline = Date.now() + WAIT;
  let answer;
  for (;;) {
    const response = await fetch(`${url}/api/pictures/fleet`, { headers: { authorization: `Bearer ${token}` } });
    answer = await response.text();
    const latest = JSON.parse(answer).availability.findLast((point) => point.values);
    if (latest?.values.unreachable > 0) {
      const sum = Object.values(latest.values).reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(sum - MACHINES) < 1e-6, `each sample counts every machine: ${JSON.stringify(latest)}`);
      assert.equal(latest.values.reachable, 0);
      break;
    }
    assert.ok(Date.now() < deadline, "a sample sees machines unreachable");
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  const asked = performance.now();
  await fetch(`${url}/api/pictures/fleet`, { headers: { authorization: `Bearer ${token}` } }).then((r) => r.text());
  const daemonMs = performance.now() - asked;

  const started = performance.now();
  await page.goto(`${url}/#/overview`);
  const figure = (name) => page.getByRole("img", { name, exact: true });
  await figure("Machines by health, hourly").waitFor();
  await figure("Operating systems").waitFor();
  const overview = performance.now() - started;
  assert.match(await figure("Machines by health, hourly").locator("desc").textContent(), /reachable 0\.0, unreachable [1-9]/);
  // Never gathered from (nobody listens): every machine's OS is unknown.
  assert.match(await figure("Operating systems").locator("desc").textContent(), /^unknown 10000$/);
  assert.ok(await page.locator("svg rect").count() < 2_000, "the page draws buckets, not machines");

  // The states grid at fleet size: one row per state, a column per tag, drilled down by tag.
  const states = performance.now();
  await page.goto(`${url}/#/states`);
  const grid = page.getByRole("table", { name: "States by tag" });
  await grid.getByRole("link", { name: /^present on even: / }).waitFor();
  const statesMs = performance.now() - states;
  assert.equal(await grid.getByRole("row").count(), 2);
  await grid.getByRole("link", { name: /^present on odd: / }).click();
  await page.getByRole("heading", { name: "State present on odd" }).waitFor();
  console.log(`pictures at ${MACHINES} machines: the Overview drawn ${overview.toFixed(0)} ms after navigating (the daemon's answer ${daemonMs.toFixed(0)} ms, ${(answer.length / 1e3).toFixed(1)} kB), the states grid by tag ${statesMs.toFixed(0)} ms`);
});

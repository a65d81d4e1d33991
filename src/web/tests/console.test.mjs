// The console end to end in Debian's Chromium (playwright-core), against `linkops demo`:
// a real daemon, real sshd machines and a real Git repository. Screenshots go to test-results/.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

// Not LINKOPS_…: the daemon refuses environment settings it does not know.
const BINARY = process.env.CONSOLE_TEST_BINARY ?? new URL("../../../target/debug/linkops", import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = new URL("../test-results/", import.meta.url).pathname;
const WAIT = 30_000;

const AXE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

let demo, banner, browser, page, uuids, adminToken;

/** Runs axe-core on the page: no serious or critical WCAG 2 A/AA violations. */
async function assertAccessible(name) {
  // Evaluated over the DevTools protocol: the console's CSP (script-src 'self')
  // rightly refuses inline scripts, and axe-core is the test's, not the page's.
  await page.evaluate(AXE);
  const { passes, violations } = await page.evaluate(async () => {
    const result = await window.axe.run(document, { runOnly: ["wcag2a", "wcag2aa"] });
    return {
      passes: result.passes.length,
      violations: result.violations
        .filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`),
    };
  });
  assert.ok(passes > 5, `axe checked ${name}`);
  assert.deepEqual(violations, [], `${name} has accessibility violations`);
}

/** Starts `linkops demo` and reads its banner. */
async function startDemo() {
  const child = spawn(BINARY, ["demo", "--listen", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "inherit"] });
  const fields = {};
  for await (const line of createInterface({ input: child.stdout })) {
    const match = /^\s*(console|api|password|config):\s+(\S+)/.exec(line);
    if (match) fields[match[1]] = match[2];
    if (line.startsWith("Ctrl-C stops")) break;
  }
  assert.ok(fields.console?.startsWith("http"), `the demo serves a console: ${JSON.stringify(fields)}`);
  return { child, ...fields };
}

async function apiGet(path, token) {
  const response = await fetch(`${banner.api}${path}`, { headers: { authorization: `Bearer ${token}` } });
  return response.json();
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  demo = await startDemo();
  banner = demo;
  const login = await fetch(`${banner.api}/api/auth/login`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: "admin", password: banner.password }),
  }).then((r) => r.json());
  adminToken = login.token;
  const desired = await apiGet("/api/desired", login.token);
  uuids = Object.fromEntries(desired.machines.map((m) => [m.id, m.uuid]));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(WAIT);
});

after(async () => {
  await browser?.close();
  if (demo?.child) {
    const exited = new Promise((resolve) => demo.child.once("exit", resolve));
    demo.child.kill("SIGINT");
    await exited;
  }
});

test("sign in, and the fleet shows four machines online and the unenrolled one flagged", async () => {
  await page.goto(banner.console);
  await page.waitForURL(/#\/login$/);
  await assertAccessible("the login page");
  await page.getByLabel("User").fill("admin");
  await page.getByLabel("Password").fill(banner.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/#\/fleet$/);
  const row = (id) => page.getByRole("row").filter({ has: page.getByRole("link", { name: id, exact: true }) });
  for (const id of ["host1", "host2", "host3", "host4"]) {
    await row(id).getByText("enrolled", { exact: true }).waitFor();
    await row(id).getByText("reachable", { exact: true }).waitFor();
  }
  await row("host5").getByText("mismatch", { exact: true }).waitFor();
  // Counts by state at a glance, and a search that narrows the table.
  const summary = page.getByLabel("Fleet summary");
  await summary.getByText("5 machines:").waitFor();
  assert.match(await summary.innerText(), /reachable\s+5/);
  await page.getByLabel("Search machines").fill("HOST5");
  await row("host1").waitFor({ state: "detached" });
  await row("host5").waitFor();
  assert.equal(await page.getByText("1–1 of 1").count(), 1);
  await page.getByLabel("Search machines").fill("");
  await row("host1").waitFor();
  // Live: suspending a machine elsewhere shows on the open page, no reload.
  const suspend = (verb) => fetch(`${banner.api}/api/reconcile/${verb}`, {
    method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${adminToken}` },
    body: JSON.stringify({ machine: "host2" }),
  });
  assert.equal((await suspend("suspend")).status, 200);
  await row("host2").getByText("suspended", { exact: true }).waitFor();
  assert.equal((await suspend("resume")).status, 200);
  await row("host2").getByText("suspended", { exact: true }).waitFor({ state: "detached" });
  await page.screenshot({ path: `${SHOTS}fleet.png`, fullPage: true });
  await assertAccessible("the fleet page");
  // A narrow window still shows the fleet.
  await page.setViewportSize({ width: 420, height: 800 });
  await page.screenshot({ path: `${SHOTS}fleet-narrow.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });
});

test("a machine's page shows what it is: its facts as gathered", async () => {
  await page.goto(`${banner.console}#/machines/host1`);
  const facts = page.getByRole("table", { name: "Facts", exact: true });
  const row = (name) => facts.getByRole("row").filter({ has: page.getByRole("cell", { name, exact: true }) });
  // Gathered at enrollment: the kernel is this computer's (the demo's machines share it).
  const kernel = execFileSync("uname", ["-r"], { encoding: "utf8" }).trim();
  await row("kernel").getByRole("cell", { name: kernel, exact: true }).waitFor();
  await row("package_manager").getByRole("cell", { name: "apt", exact: true }).waitFor();
  await page.screenshot({ path: `${SHOTS}machine.png`, fullPage: true });
  await assertAccessible("a machine's page");
});

test("run a script from the catalog's form and see each host's output appear live", async () => {
  await page.goto(`${banner.console}#/run`);
  await assertAccessible("the run page");
  await page.getByLabel("Script").selectOption("greet");
  await page.getByLabel("name", { exact: true }).fill("browser");
  await page.getByLabel("tag web").check();
  await page.getByRole("button", { name: "Run" }).click();
  await page.waitForURL(/#\/operations\/\d+$/);
  for (const id of ["host1", "host3"]) {
    const panel = page.getByRole("region", { name: `Output of ${id}` });
    await panel.getByText("hello, browser (3/3)").waitFor();
    await panel.getByText("succeeded").waitFor();
  }
  await page.getByRole("status").getByText("succeeded").waitFor();
  await page.screenshot({ path: `${SHOTS}operation.png`, fullPage: true });
  await assertAccessible("the operation page");
});

test("a secret's value never reaches the page: the script's output shows ***", async () => {
  await page.goto(`${banner.console}#/run`);
  await page.getByLabel("Script").selectOption("use-token");
  // Chosen by name; the daemon opens it on each machine.
  await page.getByLabel("token", { exact: true }).selectOption("demo-token");
  await page.getByLabel("tag web").check();
  await page.getByRole("button", { name: "Run" }).click();
  await page.waitForURL(/#\/operations\/\d+$/);
  const panel = page.getByRole("region", { name: "Output of host1" });
  await panel.getByText("calling the API with token ***").waitFor();
  await page.getByRole("status").getByText("succeeded").waitFor();
  // The demo's value (src/demo.rs DEMO_TOKEN), and its base64 inside the Basic header.
  const shown = await page.content();
  assert.ok(!shown.includes("demo-t0ken/s3cret"), "the value is on the page");
  assert.ok(!shown.includes(Buffer.from("demo:demo-t0ken/s3cret").toString("base64").slice(8, 24)), "its base64 is on the page");
  await assertAccessible("an operation with a secret");
});

test("the States page shows the declared state on its machines, and each check's output", async () => {
  // The daemon converges the demo's state on its own; wait for it through the API.
  const deadline = Date.now() + WAIT;
  while ((await apiGet("/api/states/motd", adminToken)).state?.counts?.in_sync !== 2) {
    assert.ok(Date.now() < deadline, "the motd state converges on both web machines");
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await page.goto(`${banner.console}#/states`);
  const states = page.getByRole("table", { name: "Declared states" });
  // The in-sync cell exactly ("2/2" is also in a date such as 12/2/2026).
  await states.getByRole("row").filter({ hasText: "motd" }).getByRole("cell", { name: "2/2", exact: true }).waitFor();
  const grid = page.getByRole("table", { name: "States by machine" });
  assert.equal(await grid.getByText("in_sync", { exact: true }).count(), 2);
  await page.screenshot({ path: `${SHOTS}states.png`, fullPage: true });
  await assertAccessible("the States page");
  await states.getByRole("link", { name: "motd" }).click();
  await page.waitForURL(/#\/states\/motd$/);
  const machines = page.getByRole("table", { name: "Machines of motd" });
  for (const id of ["host1", "host3"]) {
    const row = machines.getByRole("row").filter({ has: page.getByRole("link", { name: id, exact: true }) });
    await row.getByText("in_sync", { exact: true }).waitFor();
    // The first apply's operation is linked; the check's output opens in place.
    await row.getByRole("link", { name: /^#\d+$/ }).waitFor();
    await row.getByText("holds", { exact: true }).click();
    await row.getByText("(no output)").waitFor();
  }
  await page.screenshot({ path: `${SHOTS}state.png`, fullPage: true });
  await assertAccessible("a state's page");
});

test("the Overview draws availability, each state's compliance, durations and facts, accessibly", async () => {
  // The demo's operations have run and its state converged by now (the tests before waited for
  // them); the leader samples every ten seconds: wait until a sample saw the state in sync.
  const deadline = Date.now() + WAIT;
  for (;;) {
    const picture = await apiGet("/api/pictures/fleet", adminToken);
    const motd = picture.compliance.find((state) => state.state === "motd");
    if (motd?.points.some((point) => point.values?.in_sync > 0)) break;
    assert.ok(Date.now() < deadline, "a sample sees the motd state in sync");
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await page.goto(`${banner.console}#/overview`);
  const figure = (name) => page.getByRole("img", { name, exact: true });
  await figure("Machines by health, hourly").waitFor();
  await figure("State motd: machines by standing, hourly").waitFor();
  await figure("Operating systems").waitFor();
  await page.getByRole("img", { name: /^Median duration per script/ }).waitFor();
  // What runs by itself next: the demo's morning greeting, at 09:00 Berlin time.
  await page.getByRole("table", { name: "The next scheduled fires" }).getByRole("row")
    .filter({ has: page.getByRole("link", { name: "morning-hello", exact: true }) })
    .getByText(/ 09:00 CES?T$/).waitFor();
  // Each picture names its latest numbers, for those who cannot see it.
  const described = await figure("Machines by health, hourly").locator("desc").textContent();
  assert.match(described, /the latest: reachable \d/);
  const os = await figure("Operating systems").locator("desc").textContent();
  assert.match(os, / 4, unknown 1$/, "four enrolled demo machines run this computer's OS; the fifth is not enrolled");
  await page.screenshot({ path: `${SHOTS}overview.png`, fullPage: true });
  await assertAccessible("the Overview");
  await page.getByRole("button", { name: "Last week" }).click();
  await page.waitForURL(/span=week$/);
  await page.getByRole("button", { name: "Last week", pressed: true }).waitFor();
  await figure("Machines by health, hourly").waitFor();
  // A machine's page draws its checks and latency over the last day.
  await page.goto(`${banner.console}#/machines/host1`);
  await figure("SSH latency per half hour (mean; dashed: highest)").waitFor();
  const checks = await figure("Checks per half hour").locator("desc").textContent();
  assert.match(checks, /the latest: answered [1-9]/);
  await assertAccessible("a machine's pictures");
});

test("Schedules lists the demo's morning greeting, next at 09:00 Berlin time, in winter or summer", async () => {
  await page.goto(`${banner.console}#/schedules`);
  const row = page.getByRole("table", { name: "Schedules" }).getByRole("row")
    .filter({ has: page.getByRole("link", { name: "morning-hello", exact: true }) });
  await row.getByText(/ 09:00 CES?T$/).waitFor();
  await row.getByText("0 9 * * * (Europe/Berlin)").waitFor();
  await assertAccessible("the Schedules page");
  await row.getByRole("link", { name: "morning-hello" }).click();
  await page.getByRole("heading", { name: "Schedule morning-hello" }).waitFor();
  await page.getByRole("table", { name: "Fires of morning-hello" }).waitFor();
  await assertAccessible("a schedule's page");
});

test("stop a long script", async () => {
  await page.goto(`${banner.console}#/run`);
  await page.getByLabel("Script").selectOption("countdown");
  await page.getByLabel("tag db").check();
  await page.getByRole("button", { name: "Run" }).click();
  await page.waitForURL(/#\/operations\/\d+$/);
  await page.getByRole("region", { name: "Output of host2" }).getByText("59").waitFor();
  await page.getByRole("button", { name: "Stop" }).click();
  await page.getByRole("status").getByText("stopped").waitFor();
  assert.equal(await page.getByRole("region", { name: "Output of host2" }).getByText("liftoff").count(), 0);
});

test("a grid2x2 workspace shows each host's own client id in its own pane", async () => {
  await page.goto(`${banner.console}#/terminals`);
  await page.getByLabel("Layout").selectOption("grid2x2");
  await page.getByRole("button", { name: "New workspace" }).click();
  await page.waitForURL(/#\/terminals\/[0-9a-f-]+$/);
  const machines = ["host1", "host2", "host3", "host4"];
  for (const [index, id] of machines.entries()) {
    const assigned = page.waitForResponse((r) => r.url().endsWith("/panes") && r.request().method() === "PUT");
    await page.getByLabel(`Machine of pane ${index + 1}`).selectOption(id);
    await assigned;
  }
  await page.getByRole("button", { name: "Connect all" }).click();
  for (const [index, id] of machines.entries()) {
    const pane = page.getByRole("region", { name: `Pane ${index + 1}` });
    await pane.getByText("connected").waitFor();
    await pane.locator(".xterm").click();
    await page.keyboard.type("cat /etc/linkops/client_id\n");
    await pane.locator(".xterm-rows").getByText(`LINKOPS-${uuids[id]}`).waitFor();
    for (const other of machines.filter((m) => m !== id)) {
      assert.equal(await pane.locator(".xterm-rows").getByText(`LINKOPS-${uuids[other]}`).count(), 0);
    }
  }
  await page.screenshot({ path: `${SHOTS}terminals.png` });
  await assertAccessible("a terminal workspace");

  // A reload is a new socket: the same sessions, each screen replayed from its scrollback.
  await page.reload();
  for (const [index, id] of machines.entries()) {
    const pane = page.getByRole("region", { name: `Pane ${index + 1}` });
    await pane.getByText("connected").waitFor();
    await pane.locator(".xterm-rows").getByText(`LINKOPS-${uuids[id]}`).waitFor();
  }
});

test("a recording plays back what its pane showed", async () => {
  await page.goto(`${banner.console}#/recordings`);
  await page.getByRole("button", { name: "Play" }).first().click();
  const player = page.getByLabel(/^Playback of session \d+$/);
  await player.locator(".xterm-rows").getByText(/LINKOPS-[0-9a-f-]{36}/).waitFor();
});

test("a pane without a machine is no trouble for the one beside it", async () => {
  await page.goto(`${banner.console}#/terminals`);
  await page.getByLabel("Layout").selectOption("grid2x1");
  await page.getByRole("button", { name: "New workspace" }).click();
  await page.waitForURL(/#\/terminals\/[0-9a-f-]+$/);
  const assigned = page.waitForResponse((r) => r.url().endsWith("/panes") && r.request().method() === "PUT");
  await page.getByLabel("Machine of pane 1").selectOption("host1");
  await assigned;
  await page.getByRole("button", { name: "Connect all" }).click();
  const pane = page.getByRole("region", { name: "Pane 1" });
  await pane.getByText("connected").waitFor();
  await pane.locator(".xterm").click();
  await page.keyboard.type("echo pane-one-$((6*7))\n");
  await pane.locator(".xterm-rows").getByText("pane-one-42").waitFor();
  // Every pane is fitted and sized, the empty one too: no error for either.
  await page.setViewportSize({ width: 1100, height: 700 });
  await page.keyboard.type("echo resized\n");
  await pane.locator(".xterm-rows").getByText("resized", { exact: true }).waitFor();
  assert.equal(await page.getByRole("status").textContent(), "live");
  await page.setViewportSize({ width: 1280, height: 800 });
});

test("an admin creates a user, whose generated password is shown once and works", async () => {
  await page.goto(`${banner.console}#/users`);
  await page.getByLabel("New user").fill("carol");
  await page.locator("form").getByLabel("Role").selectOption("operator");
  await page.getByRole("button", { name: "Create" }).click();
  const password = await page.locator("[data-password]").textContent();
  assert.equal(password.length, 20);
  assert.equal(await page.getByLabel("Role of carol").inputValue(), "operator");
  const login = await fetch(`${banner.api}/api/auth/login`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: "carol", password }),
  });
  assert.equal(login.status, 200);
  await assertAccessible("the users page");

  // Demoted to viewer, then deleted: each takes effect on carol's next request.
  const { token } = await login.json();
  const me = () => fetch(`${banner.api}/api/auth/me`, { headers: { authorization: `Bearer ${token}` } });
  await page.getByLabel("Role of carol").selectOption("viewer");
  await page.getByRole("status").getByText("carol is now viewer.").waitFor();
  assert.equal((await (await me()).json()).role, "viewer");
  // The last admin stays one: the daemon refuses, the page says why and shows the role unchanged.
  await page.getByLabel("Role of admin").selectOption("operator");
  await page.getByRole("alert").getByText(/last admin/).waitFor();
  assert.equal(await page.getByLabel("Role of admin").inputValue(), "admin");
  page.once("dialog", (dialog) => dialog.accept());
  await page.getByRole("button", { name: "Delete carol" }).click();
  await page.getByRole("status").getByText("carol was deleted.").waitFor();
  assert.equal(await page.getByRole("row").filter({ hasText: "carol" }).count(), 0);
  assert.equal((await me()).status, 401);
});

test("a run that needs approval waits, and another operator approves it in the console", async () => {
  // Dora, an operator, asks to restart the app on the web machines: it waits (access.yaml's approvals).
  const made = await fetch(`${banner.api}/api/users`, {
    method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${adminToken}` },
    body: JSON.stringify({ username: "dora", role: "operator" }),
  }).then((r) => r.json());
  const dora = await fetch(`${banner.api}/api/auth/login`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: "dora", password: made.password }),
  }).then((r) => r.json());
  const asked = await fetch(`${banner.api}/api/operations/run`, {
    method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${dora.token}` },
    body: JSON.stringify({ script: "restart-app", targets: { tags: ["web"] } }),
  });
  assert.equal(asked.status, 201);
  const { request } = await asked.json();
  await page.goto(`${banner.console}#/approvals`);
  const row = page.getByRole("table", { name: "Approval requests" }).getByRole("row")
    .filter({ has: page.getByRole("link", { name: `#${request.id}`, exact: true }) });
  await row.getByText("awaiting_approval").waitFor();
  await assertAccessible("the Approvals page");
  await row.getByRole("link", { name: `#${request.id}` }).click();
  await page.getByRole("heading", { name: `Approval request #${request.id}` }).waitFor();
  await assertAccessible("an approval request's page");
  await page.getByLabel("Comment").fill("looks fine");
  await page.getByRole("button", { name: "Approve" }).click();
  await page.getByRole("link", { name: /^operation #\d+$/ }).click();
  await page.getByRole("heading", { name: /^Operation #\d+/ }).waitFor();
});

test("a bad commit shows its error, file:line:col, on the Git page", async () => {
  writeFileSync(`${banner.config}/links.yaml`, "machines:\n  - id: broken\n    host: [not, a, host]\n");
  execFileSync("git", ["-C", banner.config, "commit", "-qam", "a broken inventory"]);
  await page.goto(`${banner.console}#/git`);
  await page.getByRole("button", { name: "Sync now" }).click();
  const problems = page.getByRole("region", { name: "Problems" });
  await problems.getByText(/links\.yaml:\d+:\d+/).first().waitFor();
  // The outbox: the demo has no forge or sinks, so nothing waits.
  await page.getByText("Nothing waits to be told; nothing was given up on.").waitFor();
  await page.screenshot({ path: `${SHOTS}git.png`, fullPage: true });
  await assertAccessible("the Git page");
});

test("Certificates: Add machine writes the enroll command; the CAs shown; an admin revokes a serial", async () => {
  const ca = await apiGet("/api/ca", adminToken);
  await page.goto(`${banner.console}#/certificates`);
  await page.locator("[data-user-ca]").getByText(ca.user_ca_fingerprint).waitFor();
  const form = page.getByRole("form", { name: "Add machine" });
  await form.getByLabel("Host name or address").fill("web-3.lan");
  await form.getByLabel("Tags (comma-separated)").fill("web, eu");
  await form.getByLabel("Log in with").selectOption("password");
  await form.getByLabel(/Host key fingerprint/).fill("SHA256:abc+/x");
  await form.getByLabel(/Your checkout/).fill("/home/me/fleet config");
  await form.getByLabel(/push the branch/).check();
  const origin = new URL(banner.console).origin;
  assert.equal(await page.locator("[data-enroll-command]").textContent(),
    `linkops --server ${origin} enroll web-3.lan --tag web --tag eu --password --host-key-fingerprint SHA256:abc+/x --repo '/home/me/fleet config' --push`);
  await page.screenshot({ path: `${SHOTS}certificates.png`, fullPage: true });
  await assertAccessible("the Certificates page");

  const revoke = page.getByRole("form", { name: "Revoke" });
  await revoke.getByLabel("Serial or machine id").fill("4242");
  await revoke.getByLabel("Reason").fill("leaked in a paste");
  await revoke.getByRole("button", { name: "Revoke" }).click();
  await page.getByRole("table", { name: "Revocations" }).getByText("leaked in a paste").waitFor();
  const after = await apiGet("/api/ca", adminToken);
  assert.ok(after.revocations.some((r) => r.serial === "4242" && r.kind === "user"), JSON.stringify(after.revocations));
});

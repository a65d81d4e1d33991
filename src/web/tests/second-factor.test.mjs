// The second factor in Debian's Chromium, against `linkops demo --step-up`: the Account page
// enrols an authenticator app from its QR code's secret, and an admin action asks for a code
// in place, then goes on. The codes are computed here as the app would (RFC 6238).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const BINARY = process.env.CONSOLE_TEST_BINARY ?? new URL("../../../target/debug/linkops", import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = new URL("../test-results/", import.meta.url).pathname;

let demo, browser, page;

/** The code an authenticator app shows for `secret` (base32) `ahead` seconds from now. */
function totp(secret, ahead = 0) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const bits = [...secret.replace(/=+$/, "")].map((c) => alphabet.indexOf(c).toString(2).padStart(5, "0")).join("");
  const key = Buffer.from(bits.match(/.{8}/g).map((byte) => parseInt(byte, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor((Date.now() / 1000 + ahead) / 30)));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = mac[19] & 15;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  const child = spawn(BINARY, ["demo", "--listen", "127.0.0.1:0", "--step-up"], { stdio: ["ignore", "pipe", "inherit"] });
  const fields = {};
  for await (const line of createInterface({ input: child.stdout })) {
    const match = /^\s*(console|api|password):\s+(\S+)/.exec(line);
    if (match) fields[match[1]] = match[2];
    if (line.startsWith("Ctrl-C stops")) break;
  }
  demo = { child, ...fields };
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu", "--no-first-run"] });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(30_000);
});

after(async () => {
  await browser?.close();
  if (demo?.child) {
    const exited = new Promise((resolve) => demo.child.once("exit", resolve));
    demo.child.kill("SIGINT");
    await exited;
  }
});

test("enrol an authenticator app, and an admin page asks for its code in place", async () => {
  await page.goto(demo.console);
  await page.getByLabel("User").fill("admin");
  await page.getByLabel("Password").fill(demo.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/#\/fleet$/);

  await page.goto(`${demo.console}#/account`);
  await page.getByRole("button", { name: "Set up an authenticator app" }).click();
  await page.getByRole("img", { name: "QR code of the second factor" }).waitFor();
  const secret = (await page.locator("section code").first().innerText()).trim();
  assert.match(secret, /^[A-Z2-7]{16,}=*$/);
  await page.getByLabel("First code of the app").fill(totp(secret));
  await page.getByRole("button", { name: "Confirm" }).click();
  await page.getByText("Keep these recovery codes somewhere safe").waitFor();
  assert.equal(await page.locator("section li code").count(), 10);
  await page.screenshot({ path: `${SHOTS}account.png`, fullPage: true });

  // An admin page: the console asks for a code in place, then shows it; what follows needs none.
  await page.goto(`${demo.console}#/users`);
  const dialog = page.getByRole("dialog");
  await dialog.getByText("asks for a second factor").waitFor();
  // The enrolment took this step's code: the app's next one.
  await dialog.getByLabel("Code of your authenticator app").fill(totp(secret, 30));
  await dialog.getByRole("button", { name: "Confirm" }).click();
  await page.getByLabel("New user").fill("stepped");
  await page.getByRole("button", { name: "Create" }).click();
  await page.getByRole("cell", { name: "stepped", exact: true }).waitFor();
  assert.equal(await page.getByRole("dialog").count(), 0);
  await page.screenshot({ path: `${SHOTS}step-up.png`, fullPage: true });
});

// Real-browser CORS check: a page served from an allowed and from a disallowed origin each send a
// credentialed, preflighted POST to the API, and we report what the browser let the page see.
// Usage: node browser-cors.mjs --api URL --page-port ALLOWED_PORT --other-port DISALLOWED_PORT
// Prints one JSON line: {"allowed": RESULT, "disallowed": RESULT}, where RESULT is
//   {"ok": fetch resolved (i.e. the browser's CORS checks passed), "status": N|null,
//    "body": response text|null, "error": "Name: message" if fetch threw|null}
// Exit 0 whenever both results were printed, whatever they say. Otherwise the runner itself failed
// (reason on stderr): 1 = setup or browser error, 2 = bad usage, 3 = the 30 s global timeout.
// Chromium: CHROMIUM env var, else /usr/bin/chromium (Debian's package; no browser download needed).
import { accessSync, constants } from "node:fs";
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const TIMEOUT_MS = 30_000; // the whole run; nothing below may make it hang past this
const STEP_MS = 10_000; // one page load or one fetch

const { values: opts } = parseArgs({
  options: { api: { type: "string" }, "page-port": { type: "string" }, "other-port": { type: "string" } },
});
if (!opts.api || !opts["page-port"] || !opts["other-port"]) {
  console.error("usage: node browser-cors.mjs --api URL --page-port PORT --other-port PORT");
  process.exit(2);
}

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const PAGE = "<!doctype html><meta charset=utf-8><title>edge-warden CORS e2e</title><p>CORS e2e page</p>";

const servers = [];
let browser;

// Chromium may resolve "localhost" to ::1 before 127.0.0.1, so serve the page on both loopback
// addresses. A host without IPv6 just lacks ::1, which is fine: Chromium then uses 127.0.0.1.
async function servePage(port) {
  for (const host of ["127.0.0.1", "::1"]) {
    const server = createServer((req, res) => {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      res.end(PAGE);
    });
    try {
      await new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, resolve);
      });
      servers.push(server);
    } catch (err) {
      if (host === "::1" && ["EADDRNOTAVAIL", "EAFNOSUPPORT"].includes(err.code)) continue;
      throw new Error(`cannot listen on ${host}:${port}: ${err.message}`);
    }
  }
}

// Runs in the page: the custom header and the JSON content type make this a non-simple request,
// so the browser must send an OPTIONS preflight first; credentials: "include" additionally needs
// Access-Control-Allow-Credentials and a non-wildcard Allow-Origin. A CORS refusal is a TypeError.
async function fetchFromPage({ api, stepMs }) {
  let res;
  try {
    res = await fetch(api, {
      method: "POST",
      credentials: "include",
      headers: { "Content-Type": "application/json", "X-Client-Trace": "e2e" },
      body: '{"hello":"browser"}',
      signal: AbortSignal.timeout(stepMs),
    });
  } catch (err) {
    return { ok: false, status: null, body: null, error: `${err.name}: ${err.message}` };
  }
  let body = null;
  try {
    body = await res.text();
  } catch {} // body unreadable: keep null, the status is still meaningful
  return { ok: true, status: res.status, body, error: null };
}

async function runFrom(port) {
  // A fresh context per origin: nothing (cookies, preflight cache) is shared between the two runs.
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    // Chromium prints the CORS reason to the console; pass it on to stderr to ease debugging.
    page.on("console", (msg) => console.error(`[page localhost:${port}] ${msg.type()}: ${msg.text()}`));
    await page.goto(`http://localhost:${port}/`, { timeout: STEP_MS });
    return await page.evaluate(fetchFromPage, { api: opts.api, stepMs: STEP_MS });
  } finally {
    await context.close();
  }
}

async function main() {
  // Checked here because a launch of a missing binary leaves playwright's temp dirs behind.
  try {
    accessSync(CHROMIUM, constants.X_OK);
  } catch {
    throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  }
  await servePage(Number(opts["page-port"]));
  await servePage(Number(opts["other-port"]));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: STEP_MS,
    // The background-networking flags stop Chromium's own calls to the internet, which this
    // closed network refuses; --no-sandbox because we run as root.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const allowed = await runFrom(opts["page-port"]);
  const disallowed = await runFrom(opts["other-port"]);
  process.stdout.write(JSON.stringify({ allowed, disallowed }) + "\n");
}

// Browser first (playwright also removes its temporary profile), then the page servers.
async function cleanup() {
  if (browser) await Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 5_000))]);
  for (const server of servers) {
    server.closeAllConnections();
    server.close();
  }
}

let timedOut = false;
const watchdog = setTimeout(() => {
  timedOut = true;
  console.error(`browser-cors: gave up after ${TIMEOUT_MS / 1000} s`);
  cleanup().finally(() => process.exit(3));
}, TIMEOUT_MS);

let code = 0;
try {
  await main();
} catch (err) {
  // After the watchdog fired, main() fails only because cleanup() closed the browser under it.
  if (!timedOut) console.error(`browser-cors: ${err.message || err}`);
  code = 1;
}
if (!timedOut) {
  clearTimeout(watchdog);
  await cleanup();
  process.exit(code);
}

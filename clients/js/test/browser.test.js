// Checks the library in a real browser: test/browser/page.js logs in, requests, publishes text
// and bytes, meets NotTrusted, Timeout, LoginRefused and ClientClosed, survives a broker
// restart on the same port (reconnect), and shows each step on the page.
// How: a real broker, a Node service on the library, a loopback file server for clients/js, and
// Debian's headless Chromium driven by playwright-core; the test reads what the page shows.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { connect } from "../middleman.js";
import { Broker, CLIENT_KEY, SERVICE_KEY } from "./broker.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8" };

/** Serves files of clients/js (not node_modules, no dot files) on 127.0.0.1; resolves with
 * the server once listening. */
function serveFiles(root) {
  const server = createServer(async (request, response) => {
    const name = decodeURIComponent(new URL(request.url, "http://x").pathname).slice(1);
    const parts = name.split("/");
    const type = TYPES[path.extname(name)];
    if (!type || parts.some((p) => p === "" || p.startsWith(".") || p === "node_modules")) {
      response.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(path.join(root, ...parts));
      response.writeHead(200, { "Content-Type": type, "Cache-Control": "no-store" }).end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

let broker;
let service;
let files;
let browser;

before(async () => {
  assert.ok(
    existsSync(CHROMIUM),
    `this test needs headless Chromium at ${CHROMIUM}: apt-get install -y chromium (CI installs it)`,
  );
  broker = await Broker.start();
  service = await connect(broker.url, SERVICE_KEY, { reconnect: true, backoff: 50, maxBackoff: 500 });
  await service.enablePublish("Chat");
  await service.enableSubscribe("Chat");
  await service.serve("Echo", (request) => request.text.toUpperCase());
  await service.serve("Never", () => new Promise(() => {}));
  files = await serveFiles(ROOT);
  // Never a browser download: Debian's binary, given by path.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
});

after(async () => {
  await browser?.close();
  files?.close();
  await service?.close();
  await broker?.stop();
});

test("the page runs the client scenario in Chromium and shows each step", { timeout: 60000 }, async () => {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  const query = new URLSearchParams({ url: broker.url, key: CLIENT_KEY, service: service.cid });
  await page.goto(`http://127.0.0.1:${files.address().port}/test/browser/page.html?${query}`);
  const logShows = (pattern) =>
    page.waitForFunction((source) => new RegExp(source, "m").test(document.getElementById("log").textContent), pattern, {
      timeout: 30000,
    });
  await logShows("^(restart the broker now|status: .*)$");
  if (!(await page.textContent("#log")).includes("status: ")) {
    await broker.stop();
    broker = await broker.restart();
  }
  await logShows("^status: ");
  const lines = (await page.textContent("#log")).trimEnd().split("\n");
  const context = `page shows:\n${lines.join("\n")}\n${problems.join("\n")}\nbroker:\n${broker.log()}`;

  assert.match(lines[0], /^cid: [0-9a-v]{20}$/, context);
  assert.deepEqual(
    lines.slice(1),
    [
      String.raw`echo: ".DOT\r\nLINE\n.\nEND" from the service`,
      String.raw`chat: text text "..text\n." from me`,
      "chat: binary binary bytes [46,10,46,255,0] from me",
      "subscribe Secret: NotTrusted: not-trusted: Not trusted: SUB Secret",
      "publish Secret: NotTrusted: not-trusted: Not trusted PUB Secret",
      "request Secret: NotTrusted: not-trusted: Not trusted REQ Secret",
      "request Never: Timeout: timeout: no answer to REQ Never within 200 ms (client side)",
      "bad key: LoginRefused: login refused: bad key (1008)",
      "after close: ClientClosed: the client was closed",
      "chat after close: ended",
      "restart the broker now",
      "in flight at the restart: ConnectionLost: the connection to " + broker.url + " ended: going away (1001)",
      "reconnected: true",
      'echo after the restart: "AGAIN"',
      'chat after the restart: "back" from me',
      "status: ok",
    ],
    context,
  );
  await page.close();
});

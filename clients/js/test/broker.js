// Checks nothing by itself: starts real middleman brokers for the tests.
// How: the release binary (MIDDLEMAN_BIN, else <repo>/target/release/middleman, built with
// cargo when missing) on 127.0.0.1 with two shards; the port is read from its stdout.

import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const SERVICE_KEY = "js-test-service-key";
export const CLIENT_KEY = "js-test-client-key";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const STARTUP_TIMEOUT_MS = 15000;

/** The broker binary, built first if it is not there. */
export function brokerBinary() {
  if (process.env.MIDDLEMAN_BIN) return process.env.MIDDLEMAN_BIN;
  const binary = path.join(REPO, "target/release/middleman");
  if (!existsSync(binary)) {
    const built = spawnSync("cargo", ["build", "--release", "--bin", "middleman"], {
      cwd: REPO,
      stdio: "inherit",
    });
    if (built.status !== 0) throw new Error(`cargo build of the broker failed (${built.status})`);
  }
  return binary;
}

/** A running broker: `url`, `port`, `stop()`, `log()`. */
export class Broker {
  static async start({ port = 0, args = [] } = {}) {
    const broker = new Broker();
    await broker._start(port, args);
    return broker;
  }

  async _start(port, args) {
    const argv = [
      "--listen", `127.0.0.1:${port}`,
      "--shards", "2",
      "--service-key", SERVICE_KEY,
      "--client-key", CLIENT_KEY,
      ...args,
    ];
    const env = { ...process.env };
    // Keys come only from the flags above.
    delete env.MIDDLEMAN_SERVICE_KEYS;
    delete env.MIDDLEMAN_CLIENT_KEYS;
    this.args = args;
    this.stderr = "";
    this.child = spawn(brokerBinary(), argv, { env, stdio: ["ignore", "pipe", "pipe"] });
    this.child.stderr.on("data", (chunk) => (this.stderr += chunk));
    this.exited = new Promise((resolve) => this.child.on("exit", resolve));
    let stdout = "";
    await new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the broker printed no listening line in ${STARTUP_TIMEOUT_MS} ms\n${this.stderr}`)),
        STARTUP_TIMEOUT_MS,
      );
      this.child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`the broker exited (${code}) before listening\n${this.stderr}`));
      });
      this.child.stdout.on("data", (chunk) => {
        stdout += chunk;
        const found = /listening on ws:\/\/(127\.0\.0\.1:(\d+))/.exec(stdout);
        if (found) {
          clearTimeout(timer);
          this.port = Number(found[2]);
          this.url = `ws://${found[1]}/`;
          resolve();
        }
      });
    });
    this.child.stdout.resume();
  }

  log() {
    return this.stderr;
  }

  /** SIGTERM, then SIGKILL if it has not exited in 5 s; resolves once it exited. */
  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  /** The same broker again, on the same port (after `stop`). */
  restart() {
    return Broker.start({ port: this.port, args: this.args });
  }
}

/** Resolves with the first value `condition()` returns truthy; rejects after `ms`. */
export async function eventually(condition, ms = 5000, what = "the condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} did not hold within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The next message of an async iterator, or a rejection after `ms`. */
export async function nextWithin(iterator, ms = 3000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no message within ${ms} ms`)), ms);
  });
  try {
    const { value, done } = await Promise.race([iterator.next(), timeout]);
    if (done) throw new Error("the subscription ended");
    return value;
  } finally {
    clearTimeout(timer);
  }
}

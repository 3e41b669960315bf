// middleman-client: the JavaScript client of the middleman broker, one ES module for browsers
// and Node >= 20.
//
// What it is: `connect(url, key)` logs in and gives a `Client` that publishes, subscribes
// (async iterators), makes requests (Promises matched to their answers by `ReqID`) and, with a
// service key, grants topics to clients and answers requests (`serve`). The wire format is
// docs/PROTOCOL.md; `encode` and `decode` are exported for tests and tools. The API is the
// Python client's (clients/python), in camelCase, with milliseconds for times.
//
// What it is not: a queue. Delivery is at most once, as the broker's; nothing is stored while
// the connection is down, and calls made then reject with `ConnectionLost`.
//
// Invariants:
// - Bodies are byte-exact: `decode(encode(m))` gives back the body that was passed, as a
//   string when it was a string (sent in a text frame) and as a Uint8Array when it was bytes
//   (sent in a binary frame), whatever its line endings and dots.
// - Every protocol message goes out in a WebSocket message of its own, so that a malformed
//   one can only cost itself (the broker skips the rest of a WebSocket message after an error).
// - Errors reach the call that caused them. A request carries a `ReqID`, which the broker puts
//   on its errors. A command without an id is followed by a probe (see `sync`); the broker
//   handles a connection's messages in order and answers in that order, so an error that
//   arrives before the probe's answer belongs to the oldest waiting call whose command word
//   and topic the error text names (a `malformed` one, which names none, to the oldest
//   waiting call). When the probe's answer comes, every call before it succeeded.
// - A call that waits for the broker settles exactly once: with its answer, with the broker's
//   error, or with `ConnectionLost` when the connection ends first. Nothing hangs on a dead
//   connection, and every queue has a bound (`maxQueue`, `maxHandlers`).

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** Base class of every error this library raises for the broker or the connection. `code` is
 * the broker's `Code` header (`not-trusted`, ...), undefined for errors of the connection. */
export class MiddlemanError extends Error {
  constructor(text, { code = new.target.code, command, topic } = {}) {
    super(code ? `${code}: ${text}` : text);
    this.name = new.target.name;
    this.code = code;
    /** The broker's error text (`Not trusted PUB T`), or the library's message. */
    this.text = text;
    /** The command word and topic the error is about, when its text names them. */
    this.command = command;
    this.topic = topic;
  }
}

// One class per wire code (docs/PROTOCOL.md §6), which is its static `code`.
/** `not-trusted`: a client used a topic no service granted, or a service-only command. */
export class NotTrusted extends MiddlemanError {
  static code = "not-trusted";
}
/** `no-responder`: nobody has registered (`serve`, `EREQ`) for the request's topic. */
export class NoResponder extends MiddlemanError {
  static code = "no-responder";
}
/** `responder-lost`: the responder went away (or fell behind) before answering. */
export class ResponderLost extends MiddlemanError {
  static code = "responder-lost";
}
/** `timeout`: no answer within the broker's `--request-timeout`, or the call's `timeout`. */
export class Timeout extends MiddlemanError {
  static code = "timeout";
}
/** `no-request`: a response for a request the broker does not (or no longer) know. */
export class NoRequest extends MiddlemanError {
  static code = "no-request";
}
/** `no-connection`: `setUid` for a connection id the broker does not know. */
export class NoConnection extends MiddlemanError {
  static code = "no-connection";
}
/** `unknown-command`: a command word the broker does not know (only via `command`). */
export class UnknownCommand extends MiddlemanError {
  static code = "unknown-command";
}
/** `malformed`: the broker could not parse a message (a topic over `--max-topic-bytes`, more
 * headers than `--max-headers`, ...). */
export class Malformed extends MiddlemanError {
  static code = "malformed";
}
/** `limit`: a per-connection limit (subscriptions, pending requests) was reached. */
export class Limit extends MiddlemanError {
  static code = "limit";
}

/** The connection ended while the call was in flight, or is down (reconnecting). `closeCode`
 * and `reason` are the WebSocket close code and reason. */
export class ConnectionLost extends MiddlemanError {
  constructor(text, { closeCode, reason } = {}) {
    super(text);
    this.closeCode = closeCode;
    this.reason = reason;
  }
}
/** The client was closed with `close()`. */
export class ClientClosed extends ConnectionLost {}
/** The broker refused the key (close 1008 `bad key`) or did not answer the login. */
export class LoginRefused extends MiddlemanError {
  constructor(text, { closeCode, reason } = {}) {
    super(text);
    this.closeCode = closeCode;
    this.reason = reason;
  }
}
/** What the broker sent is not a middleman message (a bug on one side or the other). */
export class ProtocolError extends MiddlemanError {}

/** The error class of each wire code (docs/PROTOCOL.md §6). */
export const WIRE_ERRORS = Object.freeze({
  "not-trusted": NotTrusted,
  "no-responder": NoResponder,
  "responder-lost": ResponderLost,
  timeout: Timeout,
  "no-request": NoRequest,
  "no-connection": NoConnection,
  "unknown-command": UnknownCommand,
  malformed: Malformed,
  limit: Limit,
});

// The command word and topic in a broker error text, where the text has them.
const ERROR_SUBJECTS = [
  /^Not trusted:? (\S+) (.*)$/s,
  /^No responder for (REQ) (.*)$/s,
  /^Responder lost for (REQ) (.*)$/s,
  /^Request timed out (REQ) (.*)$/s,
  /^No client for request ID {2}(RES) (.*)$/s,
  /^No client for (INT) (.*)$/s,
  /^Unknown command (\S+) (.*)$/s,
  /^Limit reached: (?:subscriptions|pending requests) (\S+) (.*)$/s,
];

/** The error object for a `PUB ERROR` message from the broker; an unknown code (a newer
 * broker's) gives a plain `MiddlemanError` with that code. */
export function wireError(message) {
  const code = message.header("Code");
  const text = message.text;
  let command;
  let topic;
  for (const pattern of ERROR_SUBJECTS) {
    const found = pattern.exec(text);
    if (found) {
      [, command, topic] = found;
      break;
    }
  }
  const Class = WIRE_ERRORS[code] ?? MiddlemanError;
  return new Class(text, { code, command, topic });
}

// Encoding (docs/PROTOCOL.md §3)
// ---------------------------------------------------------------------------------------------

const utf8 = new TextEncoder();
// Invalid bytes become U+FFFD, as in the broker's own error texts; only headers and topics of
// binary frames can have them (a text frame is valid UTF-8, and bodies of binary frames stay
// bytes).
const fromUtf8 = new TextDecoder("utf-8");

const CR = 13;
const LF = 10;
const DOT = 46;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** One received (or encodable) middleman message. */
export class Message {
  constructor({ command, topic, headers = [], body = "", binary = typeof body !== "string" }) {
    this.command = command;
    this.topic = topic;
    /** Every header line as the sender wrote it, in order, then the broker's (`Cid`, `Uid`,
     * and `ReqID` on a response): `[name, value]` pairs. */
    this.headers = headers;
    /** A string for a text frame, a Uint8Array for a binary one. */
    this.body = body;
    this.binary = binary;
  }

  /** The last header called `name` (compared case-insensitively, as the broker does): the
   * last, because the broker puts the headers it vouches for (`Cid`, `Uid`, `Rid`, `ReqID` on
   * a response) after the sender's. */
  header(name) {
    const wanted = name.toLowerCase();
    for (let i = this.headers.length - 1; i >= 0; i--) {
      if (this.headers[i][0].toLowerCase() === wanted) return this.headers[i][1];
    }
    return undefined;
  }

  /** The sender's connection id (the broker's `Cid` header). */
  get cid() {
    return this.header("Cid");
  }

  /** The sender's user id, set by a service with `setUid`; "" when none. */
  get uid() {
    return this.header("Uid");
  }

  /** The body as text (a binary body decoded as UTF-8, bad bytes replaced). */
  get text() {
    return typeof this.body === "string" ? this.body : fromUtf8.decode(this.body);
  }
}

function checkLine(what, value) {
  if (typeof value !== "string") throw new TypeError(`${what} must be a string`);
  if (/[\r\n\0]/.test(value)) throw new TypeError(`${what} may not contain CR, LF or NUL`);
}

/** A Uint8Array of `body`'s bytes (a string is UTF-8 encoded). */
function bodyBytes(body) {
  if (typeof body === "string") return utf8.encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  throw new TypeError("a body is a string, a Uint8Array, an ArrayBuffer or a typed array");
}

/**
 * The bytes of one message: `COMMAND topic`, the header lines, a blank line, the body with
 * every line that starts with "." given one more ".", a CRLF, and the `.` line. Lines the
 * library writes end in CRLF; the body's own line endings are kept as they are, so a body is
 * byte-exact. An empty body has no lines at all.
 */
export function encode(command, topic, headers = [], body = "") {
  checkLine("a command", command);
  if (!/^[A-Z]+$/.test(command)) throw new TypeError(`not a command word: ${command}`);
  checkLine("a topic", topic);
  if (topic === "") throw new TypeError("a topic may not be empty");
  let head = `${command} ${topic}\r\n`;
  for (const [name, value] of headers) {
    if (!TOKEN.test(name)) throw new TypeError(`not a header name: ${JSON.stringify(name)}`);
    checkLine(`header ${name}`, String(value));
    head += `${name}: ${value}\r\n`;
  }
  head += "\r\n";
  const bytes = bodyBytes(body);
  const start = utf8.encode(head);
  // Each stuffed dot adds one byte; count them first so that one buffer is written once.
  let dots = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === DOT && (i === 0 || bytes[i - 1] === LF)) dots++;
  }
  const tail = bytes.length > 0 ? 5 : 3; // "\r\n.\r\n" after a body, ".\r\n" alone
  const out = new Uint8Array(start.length + bytes.length + dots + tail);
  out.set(start, 0);
  let at = start.length;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === DOT && (i === 0 || bytes[i - 1] === LF)) out[at++] = DOT;
    out[at++] = bytes[i];
  }
  if (bytes.length > 0) {
    out[at++] = CR;
    out[at++] = LF;
  }
  out[at++] = DOT;
  out[at++] = CR;
  out[at++] = LF;
  return out;
}

/**
 * Every message in one WebSocket message (several may come back to back, with blank lines
 * between them). `data` is the frame's string (a text frame) or bytes (a binary frame); bodies
 * come back in the same kind. Lines may end in LF or CRLF; every body line that starts with "."
 * loses one; the line ending before the `.` line belongs to the framing, not to the body.
 * Throws `ProtocolError` on anything else.
 */
export function decode(data) {
  const binary = typeof data !== "string";
  const bytes = binary ? bodyBytes(data) : utf8.encode(data);
  const messages = [];
  let at = 0;
  // The end of the line starting at `from`: the index of its LF, or bytes.length.
  const lineEnd = (from) => {
    const lf = bytes.indexOf(LF, from);
    return lf < 0 ? bytes.length : lf;
  };
  // The text of a line without its CR LF.
  const lineText = (from, end) =>
    fromUtf8.decode(bytes.subarray(from, end > from && bytes[end - 1] === CR ? end - 1 : end));
  while (at < bytes.length) {
    let end = lineEnd(at);
    const first = lineText(at, end);
    at = end + 1;
    if (first === "") continue; // a blank line between messages
    const space = first.indexOf(" ");
    if (space < 0) throw new ProtocolError(`no space in the first line ${JSON.stringify(first)}`);
    const command = first.slice(0, space);
    const topic = first.slice(space + 1);
    const headers = [];
    for (;;) {
      if (at >= bytes.length) throw new ProtocolError(`no blank line after the headers of ${first}`);
      end = lineEnd(at);
      const line = lineText(at, end);
      at = end + 1;
      if (line === "") break;
      const colon = line.indexOf(":");
      if (colon < 0) throw new ProtocolError(`header line without a colon: ${JSON.stringify(line)}`);
      headers.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()]);
    }
    // The body: the raw lines (with their endings) up to the `.` line, each unstuffed.
    const parts = [];
    let size = 0;
    for (;;) {
      if (at >= bytes.length) throw new ProtocolError(`no terminating dot line in ${first}`);
      end = lineEnd(at);
      const contentEnd = end > at && bytes[end - 1] === CR ? end - 1 : end;
      if (contentEnd - at === 1 && bytes[at] === DOT) {
        at = end + 1;
        break;
      }
      const from = bytes[at] === DOT ? at + 1 : at;
      const part = bytes.subarray(from, Math.min(end + 1, bytes.length));
      parts.push(part);
      size += part.length;
      at = end + 1;
    }
    let body = new Uint8Array(size);
    let offset = 0;
    for (const part of parts) {
      body.set(part, offset);
      offset += part.length;
    }
    // The last body line's ending is the one before the `.` line: part of the framing.
    let cut = body.length;
    if (cut > 0 && body[cut - 1] === LF) cut--;
    if (cut > 0 && cut < body.length && body[cut - 1] === CR) cut--;
    body = body.subarray(0, cut);
    messages.push(
      new Message({ command, topic, headers, body: binary ? body : fromUtf8.decode(body), binary }),
    );
  }
  return messages;
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

/**
 * The messages of one `subscribe` (or of `inbox`), as an async iterator. At most `maxQueue`
 * unread messages wait; newer ones are dropped and counted in `dropped` (the broker likewise
 * drops or disconnects a slow consumer rather than let it hold anyone up). It ends after
 * `close()`, `unsubscribe` or `Client.close()`, and rejects with `ConnectionLost` once the
 * connection dropped for good; with `reconnect` it lives on across reconnections.
 */
export class Subscription {
  constructor(client, topic, maxQueue, inbox = false) {
    this.client = client;
    this.topic = topic;
    this.dropped = 0;
    this._inbox = inbox;
    this._max = maxQueue;
    this._queue = [];
    this._waiters = [];
    this._done = false;
    this._error = undefined;
  }

  _push(message) {
    if (this._done) return;
    const waiter = this._waiters.shift();
    if (waiter) return waiter.resolve({ value: message, done: false });
    if (this._queue.length >= this._max) {
      this.dropped++;
      return;
    }
    this._queue.push(message);
  }

  /** Ends the iterator: after the queued messages, with `error` if given, else normally. */
  _end(error) {
    if (this._done) return;
    this._done = true;
    this._error = error;
    for (const waiter of this._waiters.splice(0)) {
      if (error) waiter.reject(error);
      else waiter.resolve({ value: undefined, done: true });
    }
  }

  next() {
    if (this._queue.length > 0) return Promise.resolve({ value: this._queue.shift(), done: false });
    if (this._done) {
      // Every later call ends the same way.
      return this._error ? Promise.reject(this._error) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  /** The next message, or a `Timeout` rejection after `timeout` ms. */
  async get(timeout) {
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Timeout(`no message on ${this.topic} within ${timeout} ms`)), timeout);
    });
    try {
      const { value, done } = await (timeout === undefined ? this.next() : Promise.race([this.next(), late]));
      if (done) throw new MiddlemanError(`the subscription to ${this.topic} has ended`);
      return value;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends this subscription; the last one of the client for its topic also sends `UNS`. */
  async close() {
    if (this._done) return;
    this._end();
    this._queue.length = 0;
    try {
      await this.client._dropSubscription(this);
    } catch (error) {
      // A connection that is gone has no subscription left to undo.
      if (!(error instanceof ConnectionLost)) throw error;
    }
  }

  async return() {
    await this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/** The WebSocket constructor: the platform's, else the `ws` package (Node without one). */
async function webSocketClass(given) {
  if (given) return given;
  if (typeof globalThis.WebSocket === "function") return globalThis.WebSocket;
  // A variable specifier keeps bundlers from pulling `ws` into browser builds.
  const name = "ws";
  try {
    const module = await import(name);
    return module.WebSocket ?? module.default;
  } catch (error) {
    throw new MiddlemanError(
      `no global WebSocket here and the "ws" package cannot be loaded (npm install ws): ${error.message}`,
    );
  }
}

/**
 * Opens a WebSocket to `url`, sends `key`, and resolves with the logged-in `Client` once the
 * broker has answered `MM OK` and the connection id. Rejects with `LoginRefused` (reason
 * `bad key` for a refused key) when the login fails, `ConnectionLost` when the broker cannot
 * be reached.
 */
export async function connect(url, key, options = {}) {
  const WebSocketClass = await webSocketClass(options.WebSocket);
  const client = new Client(url, key, options, WebSocketClass);
  await client._open();
  return client;
}

const CID_DIGITS = "0123456789abcdefghijklmnopqrstuv";

/** A connection id on the same shard as `cid` whose sequence number the broker never reaches
 * (2^52 - 1: src/ids.rs), or undefined if `cid` is not a connection id at all. */
function impossibleNeighbour(cid) {
  if (!/^[0-9a-v]{20}$/.test(cid)) return undefined;
  let bits = 0n;
  for (const c of cid) bits = (bits << 5n) | BigInt(CID_DIGITS.indexOf(c));
  bits |= (1n << 52n) - 1n;
  let out = "";
  for (let i = 19; i >= 0; i--) out += CID_DIGITS[Number((bits >> BigInt(5 * i)) & 31n)];
  return out;
}

const closeText = (event) => (event.reason ? `${event.reason} (${event.code})` : `close code ${event.code}`);

export class Client {
  constructor(url, key, options, WebSocketClass) {
    this.url = url;
    /** This connection's id; a new one after each reconnection. */
    this.cid = undefined;
    /** Called with every broker error no call is waiting for (default: console.warn). */
    this.onError = options.onError ?? ((error) => console.warn(`middleman: ${error.message}`));
    /** Called after a reconnection has re-granted, re-registered and re-subscribed. */
    this.onReconnect = options.onReconnect ?? null;
    /** Called once when the client is closed for good (with the error, unless `close()`). */
    this.onClose = options.onClose ?? null;
    this._key = key;
    this._WebSocket = WebSocketClass;
    this._reconnect = options.reconnect ?? false;
    this._backoff = options.backoff ?? 100;
    this._maxBackoff = options.maxBackoff ?? 5000;
    this._maxQueue = options.maxQueue ?? 1000;
    this._maxHandlers = options.maxHandlers ?? 64;
    this._loginTimeout = options.loginTimeout ?? 10000;
    this._ws = null;
    this._open_ = false; // logged in and usable
    this._closing = false; // close() was called, or the client gave up
    this._generation = 0; // one more per connection, so that late answers can tell
    this._ids = 0;
    this._idPrefix = `js${Math.floor(Math.random() * 0x100000000).toString(36)}`;
    this._requests = new Map(); // ReqID -> {resolve, reject, timer}
    // In send order: calls waiting for the broker ({command, topic, resolve, reject}), sync()
    // waiters ({resolve, reject}) and the probes sent for them ({probe, command, topic}).
    this._waiting = [];
    this._subscriptions = new Map(); // topic -> Set<Subscription>
    this._inboxes = new Set(); // Subscriptions of inbox()
    this._handlers = new Map(); // topic -> handler of `serve`
    this._running = 0; // handlers running now (at most maxHandlers)
    this._queued = []; // requests waiting for a handler slot (at most maxQueue)
    this._controls = new Map(); // "EPUB topic" -> [command, topic], replayed on reconnection
    this.closed = new Promise((resolve) => (this._closedResolve = resolve));
  }

  /** Whether the client is logged in now (false while reconnecting and after close). */
  get connected() {
    return this._open_;
  }

  /** Resolves once the client is closed for good: with the error that ended it, or with
   * undefined after `close()`. */
  waitClosed() {
    return this.closed;
  }

  // ------------------------------------------------------------------------------- lifecycle

  /** Opens the socket and logs in; resolves with the cid. */
  _open() {
    return new Promise((resolve, reject) => {
      let stage = "key";
      let settled = false;
      let ws;
      const fail = (error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        try {
          ws.close();
        } catch {
          // already closed
        }
        reject(error);
      };
      const timer = setTimeout(
        () => fail(new LoginRefused(`no answer to the key within ${this._loginTimeout} ms`)),
        this._loginTimeout,
      );
      try {
        ws = new this._WebSocket(this.url);
      } catch (error) {
        clearTimeout(timer);
        reject(new LoginRefused(`cannot open ${this.url}: ${error.message}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      this._ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        ws.send(this._key);
      };
      ws.onerror = () => {}; // the close event that follows says what happened
      ws.onmessage = (event) => {
        if (stage === "open") return this._receive(event.data);
        const text = typeof event.data === "string" ? event.data : fromUtf8.decode(event.data);
        if (stage === "key") {
          if (text !== "MM OK") fail(new LoginRefused(`expected "MM OK" after the key, got ${JSON.stringify(text)}`));
          stage = "cid";
        } else if (stage === "cid") {
          stage = "open";
          settled = true;
          clearTimeout(timer);
          this.cid = text;
          this._generation++;
          this._open_ = true;
          resolve(text);
        }
      };
      ws.onclose = (event) => {
        if (stage !== "open") {
          const { code: closeCode, reason } = event;
          if (!opened) fail(new ConnectionLost(`cannot reach ${this.url}: ${closeText(event)}`, { closeCode, reason }));
          else fail(new LoginRefused(`login refused: ${closeText(event)}`, { closeCode, reason }));
        } else if (this._ws === ws) {
          this._lost(event);
        }
      };
    });
  }

  /** The connection ended under us: fail what waits, then reconnect or close for good. */
  _lost(event) {
    this._open_ = false;
    const { code: closeCode, reason } = event;
    const error = this._closing
      ? new ClientClosed("the client was closed", { closeCode, reason })
      : new ConnectionLost(`the connection to ${this.url} ended: ${closeText(event)}`, { closeCode, reason });
    this._failWaiting(error);
    if (this._closing || !this._reconnect) return this._finish(this._closing ? undefined : error);
    this._reconnectLoop();
  }

  _failWaiting(error) {
    for (const request of this._requests.values()) {
      clearTimeout(request.timer);
      request.reject(error);
    }
    this._requests.clear();
    for (const entry of this._waiting.splice(0)) entry.reject(error);
    this._queued.length = 0; // their requesters get responder-lost from the broker
  }

  _finish(error) {
    this._closing = true;
    for (const subscription of [...this._inboxes, ...[...this._subscriptions.values()].flatMap((s) => [...s])]) {
      subscription._end(error);
    }
    this._subscriptions.clear();
    this._inboxes.clear();
    if (this.onClose) this.onClose(error);
    this._closedResolve(error);
  }

  async _reconnectLoop() {
    let delay = this._backoff;
    while (!this._closing) {
      // Jitter spreads the reconnections of many clients after a broker restart.
      await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random() / 2)));
      if (this._closing) return;
      try {
        await this._open();
      } catch {
        delay = Math.min(delay * 2, this._maxBackoff);
        continue;
      }
      if (this._closing) {
        this._ws.close(1000); // close() came while this attempt was logging in
        return;
      }
      const generation = this._generation;
      try {
        await this._restore(generation);
      } catch (error) {
        if (!(error instanceof ConnectionLost)) this.onError(error);
        return; // lost again while restoring: that loss reconnects anew
      }
      if (generation === this._generation && this.onReconnect) this.onReconnect(this);
      return;
    }
  }

  /**
   * After a reconnection: the grants and responder registrations, then the subscriptions,
   * each confirmed. What the broker refuses is retried with the backoff until it works: a
   * restarted broker has forgotten the grants that a client's subscriptions need until their
   * service has made them again.
   */
  async _restore(generation) {
    let wanted = [...this._controls.values(), ...[...this._subscriptions.keys()].map((t) => ["SUB", t])];
    let delay = this._backoff;
    while (wanted.length > 0) {
      const results = await Promise.allSettled(
        wanted.map(([command, topic]) => this._send(command, topic, [], "", { confirm: true })),
      );
      const lost = results.find((r) => r.status === "rejected" && r.reason instanceof ConnectionLost);
      if (lost) throw lost.reason;
      // Retry the refused ones that are still wanted (a subscription may have been closed).
      wanted = wanted.filter(
        ([command, topic], i) =>
          results[i].status === "rejected" &&
          (command === "SUB" ? this._subscriptions.has(topic) : this._controls.has(`${command} ${topic}`)),
      );
      if (wanted.length === 0) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, this._maxBackoff);
      if (generation !== this._generation || !this._open_) {
        throw new ConnectionLost(`the connection to ${this.url} ended while restoring`);
      }
    }
  }

  /** Closes the connection (and stops reconnecting). Waiting calls reject with `ClientClosed`;
   * subscriptions end. Resolves once closed. */
  async close() {
    if (this._closing) return this.closed;
    this._closing = true;
    if (this._open_) {
      this._ws.close(1000);
    } else {
      this._failWaiting(new ClientClosed("the client was closed"));
      this._finish(undefined);
    }
    return this.closed;
  }

  // --------------------------------------------------------------------------------- sending

  _checkOpen() {
    if (this._open_) return;
    if (this._closing) throw new ClientClosed("the client was closed");
    throw new ConnectionLost(`not connected to ${this.url} (reconnecting)`);
  }

  /** Encodes and sends one message, in a WebSocket message of its own; throws when it cannot. */
  _write(command, topic, headers, body, binary) {
    const bytes = encode(command, topic, headers, body);
    this._checkOpen();
    // A text frame carries the same bytes as a string: valid UTF-8, as encode() made them
    // from strings (or the caller asked for a text frame).
    this._ws.send((binary ?? typeof body !== "string") ? bytes : fromUtf8.decode(bytes));
  }

  /** Sends one message; with `confirm`, resolves once the broker has handled it, or rejects
   * with its error for it. Every failure is a rejection. `via`: see `_probe`. */
  async _send(command, topic, headers, body, { binary, confirm, via } = {}) {
    this._write(command, topic, headers, body, binary);
    if (!confirm) return;
    await new Promise((resolve, reject) => {
      this._waiting.push({ command, topic, resolve, reject });
      this._probe(via);
    });
  }

  /**
   * A round trip: resolves once the broker has handled everything sent before, which is then
   * in effect on every shard (docs/PROTOCOL.md §4).
   */
  async sync() {
    this._checkOpen();
    await new Promise((resolve, reject) => {
      this._waiting.push({ resolve, reject });
      this._probe();
    });
  }

  /**
   * Sends a probe behind the last waiting call: a `PUB` to this connection's own `MSG:<cid>`
   * with an `Mm-Sync` header. A service gets it back, a client gets `not-trusted` for it;
   * either answer comes after the broker's replies to everything sent earlier. One probe per
   * call, so that between two probe answers at most one call can have caused an error.
   *
   * `INT UID` is carried out on the shard of the connection it names, after this shard has
   * moved on, so its probe (`via` that cid) must pass there too: a `REQ` with the probe's
   * `ReqID` to the private topic of a connection that cannot exist on that shard (the broker
   * places `MSG:<cid>` on the cid's shard). It follows the `INT UID` there and comes back as
   * `no-responder`, behind the `no-connection` error if there was one.
   */
  _probe(via) {
    const token = this._nextId();
    const neighbour = via === undefined ? undefined : impossibleNeighbour(via);
    if (neighbour !== undefined) {
      const topic = `MSG:${neighbour}`;
      this._waiting.push({ command: "REQ", topic, probe: token, resolve() {}, reject() {} });
      this._write("REQ", topic, [["ReqID", token]], "", false);
      return;
    }
    const topic = `MSG:${this.cid}`;
    this._waiting.push({ command: "PUB", topic, probe: token, resolve() {}, reject() {} });
    this._write("PUB", topic, [["Mm-Sync", token]], "", false);
  }

  _nextId() {
    return `${this._idPrefix}-${++this._ids}`;
  }

  /**
   * `PUB topic`: a string body goes in a text frame, bytes in a binary one (or `binary: true`).
   * Resolves once the broker has handled it, rejecting with its error (`NotTrusted` for a
   * client without the grant, `Malformed`); with `confirm: false`, once sent, and an error
   * goes to `onError`.
   */
  publish(topic, body = "", { headers = [], binary, confirm = true } = {}) {
    return this._send("PUB", topic, headers, body, { binary, confirm });
  }

  /** Publishes to the connection `cid` alone (its private topic `MSG:<cid>`). */
  sendTo(cid, body = "", options = {}) {
    return this.publish(`MSG:${cid}`, body, options);
  }

  /**
   * `SUB topic`; resolves with a `Subscription` once it is in effect (a later `PUB` by anyone
   * reaches it), or rejects with `NotTrusted` (a client without `enableSubscribe`) or `Limit`.
   */
  async subscribe(topic) {
    // Registered before the SUB goes out: messages may arrive before the probe's answer.
    const subscription = new Subscription(this, topic, this._maxQueue);
    let set = this._subscriptions.get(topic);
    if (set === undefined) {
      set = new Set();
      this._subscriptions.set(topic, set);
    }
    set.add(subscription);
    try {
      await this._send("SUB", topic, [], "", { confirm: true }); // SUB is idempotent
    } catch (error) {
      set.delete(subscription);
      if (set.size === 0 && this._subscriptions.get(topic) === set) this._subscriptions.delete(topic);
      subscription._end();
      throw error;
    }
    return subscription;
  }

  /** The messages sent to this connection (`MSG:<cid>`, to which the broker subscribes every
   * connection), following the cid across reconnections. Sends nothing. */
  inbox() {
    const subscription = new Subscription(this, "MSG:", this._maxQueue, true);
    this._inboxes.add(subscription);
    return subscription;
  }

  /** `UNS topic`, and ends every subscription of this client to it. */
  async unsubscribe(topic) {
    const set = this._subscriptions.get(topic);
    this._subscriptions.delete(topic);
    for (const subscription of set ?? []) subscription._end();
    if (this._open_) await this._send("UNS", topic, [], "", { confirm: true });
  }

  async _dropSubscription(subscription) {
    if (subscription._inbox) {
      this._inboxes.delete(subscription);
      return;
    }
    const set = this._subscriptions.get(subscription.topic);
    if (!set || !set.delete(subscription)) return;
    if (set.size === 0) await this.unsubscribe(subscription.topic);
  }

  /**
   * `REQ topic` with a fresh `ReqID`; resolves with the response (`RES`) `Message`. Rejects
   * with the broker's error for it (`NoResponder`, `ResponderLost`, `Timeout`, `NotTrusted`,
   * `Limit`), with `Timeout` if `timeout` ms (60000) pass first, or with `ConnectionLost`.
   */
  request(topic, body = "", { headers = [], binary, timeout = 60000 } = {}) {
    const reqId = this._nextId();
    return new Promise((resolve, reject) => {
      this._write("REQ", topic, [["ReqID", reqId], ...headers], body, binary); // a throw rejects
      const request = { resolve, reject, timer: undefined };
      if (timeout !== null && timeout !== Infinity) {
        request.timer = setTimeout(() => {
          this._requests.delete(reqId);
          const text = `no answer to REQ ${topic} within ${timeout} ms (client side)`;
          reject(new Timeout(text, { command: "REQ", topic }));
        }, timeout);
      }
      this._requests.set(reqId, request);
    });
  }

  /** Sends any command, confirmed like `publish`: the escape hatch for what the API does not
   * cover (the broker answers words it does not know with `UnknownCommand`). */
  command(command, target, { headers = [], body = "", binary } = {}) {
    return this._send(command, target, headers, body, { binary, confirm: true });
  }

  /** Sends `data` as it is (a string as a text frame, bytes as a binary one), for tools and
   * tests; the broker's errors about it go to `onError`. Throws when not connected. */
  sendRaw(data) {
    this._checkOpen();
    this._ws.send(data);
  }

  // -------------------------------------------------------------------------------- services

  /** `EPUB topic` (service): once it resolves, clients may publish to `topic`. */
  enablePublish(topic) {
    return this._control("EPUB", topic);
  }

  /** `ESUB topic` (service): once it resolves, clients may subscribe to `topic`. */
  enableSubscribe(topic) {
    return this._control("ESUB", topic);
  }

  async _control(command, topic) {
    await this._send(command, topic, [], "", { confirm: true });
    this._controls.set(`${command} ${topic}`, [command, topic]);
  }

  /**
   * Answers every `REQ topic` with `handler(message)`: sends `EREQ topic` (clients may ask,
   * and this connection is one of its responders) and resolves once requests may come. The
   * handler returns (or resolves to) the response body (a string, or bytes for a binary
   * response), `{ body, headers }`, or nothing for an empty body; the response goes out as
   * `RES` with the request's `Rid`. A handler that throws answers with an `Error` header (the
   * error's name) and its message, so the requester is not left waiting. At most
   * `maxHandlers` run at once; up to `maxQueue` more requests wait, and past that a request is
   * answered at once with `Error: Busy`.
   */
  async serve(topic, handler) {
    const had = this._handlers.has(topic);
    this._handlers.set(topic, handler);
    try {
      await this._control("EREQ", topic);
    } catch (error) {
      if (!had) this._handlers.delete(topic);
      throw error;
    }
  }

  /** `INT UID` (service): later messages from connection `cid` carry `Uid: uid`. Rejects with
   * `NoConnection` when the broker knows no such connection. */
  setUid(cid, uid) {
    return this._send("INT", "UID", [["forcid", cid], ["setuid", uid]], "", { confirm: true, via: cid });
  }

  _request(message) {
    if (this._running < this._maxHandlers) return this._answer(message);
    if (this._queued.length < this._maxQueue) return this._queued.push(message);
    this._respond(message, [["Error", "Busy"]], `${this.cid} has ${this._maxQueue} requests waiting`);
  }

  async _answer(request) {
    this._running++;
    const generation = this._generation;
    let headers = [];
    let body = "";
    try {
      const handler = this._handlers.get(request.topic);
      if (!handler) throw new Error(`no handler for REQ ${request.topic}`);
      const result = await handler(request);
      if (result === undefined || result === null) body = "";
      else if (typeof result === "string" || ArrayBuffer.isView(result) || result instanceof ArrayBuffer) body = result;
      else {
        body = result.body ?? "";
        headers = [...(result.headers ?? [])];
      }
    } catch (error) {
      headers = [["Error", error?.name ?? "Error"]];
      body = String(error?.message ?? error);
    }
    this._running--;
    // A request that came on an earlier connection has nobody to answer to any more.
    if (generation === this._generation) this._respond(request, headers, body);
    const next = this._queued.shift();
    if (next) this._answer(next);
  }

  _respond(request, headers, body) {
    // The broker routes the RES by the request's `Rid` and gives the requester its `ReqID`.
    const rid = request.header("Rid") ?? "";
    this._send("RES", request.topic, [...headers, ["Rid", rid]], body).catch((error) => {
      if (!(error instanceof ConnectionLost)) this.onError(error);
    });
  }

  // ------------------------------------------------------------------------------- receiving

  _receive(data) {
    let messages;
    try {
      messages = decode(data);
    } catch (error) {
      this.onError(error);
      return;
    }
    for (const message of messages) this._dispatch(message);
  }

  _dispatch(message) {
    const { command, topic } = message;
    if (command === "RES") {
      const reqId = message.header("ReqID");
      if (this._answerProbe(reqId)) return; // someone serves the impossible topic after all
      const request = this._requests.get(reqId);
      if (request) {
        this._requests.delete(reqId);
        clearTimeout(request.timer);
        request.resolve(message);
      }
      return; // a response after its client-side timeout: nobody waits for it any more
    }
    if (command === "REQ") return this._request(message);
    if (command !== "PUB") return;
    // The broker's own errors carry no Cid; a service's PUB to `ERROR` does.
    if (topic === "ERROR" && message.cid === undefined) return this._brokerError(message);
    if (topic === `MSG:${this.cid}`) {
      const token = message.header("Mm-Sync");
      if (token !== undefined && message.cid === this.cid && this._answerProbe(token)) return;
      for (const inbox of this._inboxes) inbox._push(message);
    }
    for (const subscription of this._subscriptions.get(topic) ?? []) subscription._push(message);
  }

  /** A probe came back: everything sent before it has been handled. */
  _answerProbe(token) {
    const index = this._waiting.findIndex((entry) => entry.probe === token);
    if (index < 0) return false;
    for (const entry of this._waiting.splice(0, index + 1)) entry.resolve();
    return true;
  }

  _brokerError(message) {
    const error = wireError(message);
    const reqId = message.header("ReqID");
    if (reqId !== undefined) {
      if (this._answerProbe(reqId)) return; // a setUid probe's no-responder
      const request = this._requests.get(reqId);
      if (request) {
        this._requests.delete(reqId);
        clearTimeout(request.timer);
        request.reject(error);
      } else {
        this.onError(error);
      }
      return;
    }
    // Without a ReqID the error belongs to the oldest waiting call it names (see the top of
    // this file); a `malformed` error names none and goes to the oldest waiting call.
    const index = this._waiting.findIndex((entry) =>
      error instanceof Malformed
        ? entry.command !== undefined && entry.probe === undefined
        : entry.command === error.command && entry.topic === error.topic,
    );
    if (index < 0) return this.onError(error);
    const entry = this._waiting[index];
    if (entry.probe !== undefined) {
      // A client's probe: `not-trusted` is its answer, as good as getting it back.
      this._answerProbe(entry.probe);
      return;
    }
    this._waiting.splice(index, 1);
    entry.reject(error);
  }
}

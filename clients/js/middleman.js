// middleman-client: the JavaScript client of the middleman broker, one ES module for browsers
// and Node >= 20.
//
// What it is: `connect(url, key)` logs in and gives a `Client` that publishes, subscribes
// (async iterators), makes requests (Promises matched to their answers by `ReqID`) and, with a
// service key, grants topics to clients and answers requests (`serve`). The wire format is
// docs/PROTOCOL.md; `encode` and `decode` are exported for tests and tools.
//
// What it is not: a queue. Delivery is at most once, as the broker's; nothing is stored while
// the connection is down, and calls made then reject with `ConnectionClosed`.
//
// Invariants:
// - Bodies are byte-exact: `decode(encode(m))` gives back the body that was passed, as a
//   string when it was a string (sent in a text frame) and as a Uint8Array when it was bytes
//   (sent in a binary frame), whatever its line endings and dots.
// - Every protocol message goes out in a WebSocket message of its own, so that a malformed
//   one can only cost itself (the broker skips the rest of a WebSocket message after an error).
// - A call that waits for the broker settles exactly once: with its answer, with the broker's
//   error, or with `ConnectionClosed` when the connection ends first. Nothing hangs on a dead
//   connection.

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** Base class of every error this library raises. `code` is the broker's `Code` header
 * (`not-trusted`, ...) or, for errors of the library itself, `connection-closed`. */
export class MiddlemanError extends Error {
  constructor(text, { code = "error", command, topic } = {}) {
    super(text);
    this.name = new.target.name;
    this.code = code;
    /** The broker's error text (`Not trusted PUB T`), or the library's message. */
    this.text = text;
    /** The command word and topic the error is about, when its text names them. */
    this.command = command;
    this.topic = topic;
  }
}

/** `not-trusted`: a client used a topic no service granted, or a service-only command. */
export class NotTrusted extends MiddlemanError {}
/** `no-responder`: nobody has registered (`serve`, `EREQ`) for the request's topic. */
export class NoResponder extends MiddlemanError {}
/** `responder-lost`: the responder went away before answering. */
export class ResponderLost extends MiddlemanError {}
/** `timeout`: no answer within the broker's `--request-timeout`, or the call's `timeout`. */
export class Timeout extends MiddlemanError {}
/** `no-request`: a response for a request the broker does not (or no longer) know. */
export class NoRequest extends MiddlemanError {}
/** `no-connection`: `setUid` for a connection id the broker does not know. */
export class NoConnection extends MiddlemanError {}
/** `unknown-command`: a command word the broker does not know. */
export class UnknownCommand extends MiddlemanError {}
/** `malformed`: the broker could not parse a message (a topic over `--max-topic-bytes`, ...). */
export class Malformed extends MiddlemanError {}
/** `limit`: a per-connection limit (subscriptions, pending requests) was reached. */
export class Limit extends MiddlemanError {}
/** The connection ended (or never logged in) before the call could complete. `closeCode` and
 * `reason` are the WebSocket close code and reason, when there was a close frame. */
export class ConnectionClosed extends MiddlemanError {
  constructor(text, { closeCode, reason } = {}) {
    super(text, { code: "connection-closed" });
    this.closeCode = closeCode;
    this.reason = reason;
  }
}
/** What the broker sent is not a middleman message (a bug on one side or the other). */
export class ProtocolError extends MiddlemanError {
  constructor(text) {
    super(text, { code: "protocol-error" });
  }
}

/** The error class of each wire code (docs/PROTOCOL.md §6). */
export const ERROR_CLASSES = Object.freeze({
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

/** The error object for a `PUB ERROR` message from the broker. */
export function errorFromMessage(message) {
  const code = message.header("Code") ?? "error";
  const text = bodyText(message.body).replace(/\r?\n$/, "");
  let command;
  let topic;
  for (const pattern of ERROR_SUBJECTS) {
    const found = pattern.exec(text);
    if (found) {
      [, command, topic] = found;
      break;
    }
  }
  const Class = ERROR_CLASSES[code] ?? MiddlemanError;
  return new Class(text, { code, command, topic });
}

// ---------------------------------------------------------------------------------------------
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

  /** The first header called `name` (compared case-insensitively, as the broker does). */
  header(name) {
    const wanted = name.toLowerCase();
    for (const [key, value] of this.headers) {
      if (key.toLowerCase() === wanted) return value;
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

  /** The body as text, decoding a binary body as UTF-8. */
  text() {
    return bodyText(this.body);
  }
}

function bodyText(body) {
  return typeof body === "string" ? body : fromUtf8.decode(body);
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
 * The messages of one `subscribe`, as an async iterator. Messages that arrive faster than the
 * loop takes them wait in a queue of at most `maxQueued`; past that the oldest is dropped and
 * counted in `dropped` (the broker itself drops or disconnects slow consumers the same way).
 */
export class Subscription {
  constructor(client, topic, maxQueued) {
    this.client = client;
    this.topic = topic;
    this.dropped = 0;
    this._maxQueued = maxQueued;
    this._queue = [];
    this._waiters = [];
    this._done = false;
    this._error = undefined;
  }

  _push(message) {
    if (this._done) return;
    const waiter = this._waiters.shift();
    if (waiter) return waiter.resolve({ value: message, done: false });
    if (this._queue.length >= this._maxQueued) {
      this._queue.shift();
      this.dropped++;
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
      if (this._error) {
        const error = this._error;
        this._error = undefined; // reported once; later calls just see the end
        return Promise.reject(error);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  /** Stops this subscription (`UNS` once no other subscription of the client has the topic). */
  async close() {
    if (this._done) return;
    this._end();
    this._queue.length = 0;
    try {
      await this.client._dropSubscription(this);
    } catch (error) {
      // A connection that is gone has no subscription left to undo.
      if (!(error instanceof ConnectionClosed)) throw error;
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

const DEFAULT_BACKOFF = { initialDelay: 100, maxDelay: 5000, factor: 2, maxAttempts: Infinity };

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
 * broker has answered `MM OK` and the connection id. Rejects with `ConnectionClosed` (reason
 * `bad key` for a refused key) when the login fails.
 */
export async function connect(url, key, options = {}) {
  const WebSocketClass = await webSocketClass(options.WebSocket);
  const client = new Client(url, key, options, WebSocketClass);
  await client._open();
  return client;
}

export class Client {
  constructor(url, key, options, WebSocketClass) {
    this.url = url;
    /** This connection's id; a reconnect gets a new one. */
    this.cid = undefined;
    /** Called with every broker error no call is waiting for (see docs/CLIENTS.md). */
    this.onError = options.onError ?? ((error) => console.warn(`middleman: ${error.message}`));
    /** Called after a reconnect has re-subscribed, re-granted and re-registered. */
    this.onReconnect = options.onReconnect ?? null;
    /** Called once when the client is closed for good (`error` unless `close()` did it). */
    this.onClose = options.onClose ?? null;
    this._key = key;
    this._WebSocket = WebSocketClass;
    this._loginTimeout = options.loginTimeout ?? 10000;
    this._maxQueued = options.maxQueued ?? 10000;
    this._backoff =
      options.reconnect === true
        ? { ...DEFAULT_BACKOFF }
        : options.reconnect
          ? { ...DEFAULT_BACKOFF, ...options.reconnect }
          : null;
    this._ws = null;
    this._open_ = false; // logged in and usable
    this._closing = false; // close() was called
    this._ids = 0;
    this._idPrefix = `js${Math.floor(Math.random() * 0x100000000).toString(36)}`;
    this._requests = new Map(); // ReqID -> {resolve, reject, timer, topic}
    // In send order: calls waiting for the broker ({command, topic, resolve, reject}), sync()
    // waiters ({resolve, reject}) and the probes sent for them ({probe, command, topic}).
    this._unconfirmed = [];
    this._subscriptions = new Map(); // topic -> Set<Subscription>
    this._handlers = new Map(); // topic -> handler of `serve`
    this._granted = { EPUB: new Set(), ESUB: new Set() }; // re-sent after a reconnect
    this._reconnecting = null;
    this.closed = new Promise((resolve) => (this._closedResolve = resolve));
  }

  // ------------------------------------------------------------------------------- lifecycle

  /** Opens the socket and logs in; resolves with the cid. */
  _open() {
    return new Promise((resolve, reject) => {
      let stage = "key";
      let settled = false;
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
      let ws;
      try {
        ws = new this._WebSocket(this.url);
      } catch (error) {
        reject(new ConnectionClosed(`cannot open ${this.url}: ${error.message}`));
        return;
      }
      const timer = setTimeout(
        () => fail(new ConnectionClosed(`no login answer within ${this._loginTimeout} ms`)),
        this._loginTimeout,
      );
      ws.binaryType = "arraybuffer";
      this._ws = ws;
      ws.onopen = () => ws.send(this._key);
      ws.onerror = () => {}; // the close event that follows says what happened
      ws.onmessage = (event) => {
        if (stage === "open") return this._receive(event.data);
        const text = typeof event.data === "string" ? event.data : fromUtf8.decode(event.data);
        if (stage === "key") {
          if (text !== "MM OK") fail(new ProtocolError(`expected "MM OK" after the key, got ${JSON.stringify(text)}`));
          stage = "cid";
        } else if (stage === "cid") {
          stage = "open";
          settled = true;
          clearTimeout(timer);
          this.cid = text;
          this._open_ = true;
          resolve(text);
        }
      };
      ws.onclose = (event) => {
        if (stage !== "open") {
          const why = event.reason ? `${event.reason} (${event.code})` : `close code ${event.code}`;
          fail(new ConnectionClosed(`login refused: ${why}`, { closeCode: event.code, reason: event.reason }));
          return;
        }
        if (this._ws === ws) this._lost(event);
      };
    });
  }

  /** The connection ended under us: fail what waits, then reconnect or close for good. */
  _lost(event) {
    this._open_ = false;
    const why = event.reason ? `${event.reason} (${event.code})` : `close code ${event.code}`;
    const error = new ConnectionClosed(
      this._closing ? "the client was closed" : `connection lost: ${why}`,
      { closeCode: event.code, reason: event.reason },
    );
    this._failWaiting(error);
    if (this._closing || !this._backoff) return this._finish(this._closing ? undefined : error);
    this._reconnecting = this._reconnect();
  }

  _failWaiting(error) {
    for (const request of this._requests.values()) {
      clearTimeout(request.timer);
      request.reject(error);
    }
    this._requests.clear();
    for (const entry of this._unconfirmed.splice(0)) {
      if (entry.reject) entry.reject(error);
    }
  }

  _finish(error) {
    this._closing = true;
    for (const subscriptions of this._subscriptions.values()) {
      for (const subscription of subscriptions) subscription._end(error);
    }
    this._subscriptions.clear();
    if (this.onClose) this.onClose(error);
    this._closedResolve(error);
  }

  async _reconnect() {
    const { initialDelay, maxDelay, factor, maxAttempts } = this._backoff;
    let delay = initialDelay;
    for (let attempt = 1; attempt <= maxAttempts && !this._closing; attempt++) {
      // Jitter spreads the reconnects of many clients after a broker restart.
      await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random() / 2)));
      if (this._closing) return;
      try {
        await this._open();
      } catch {
        delay = Math.min(delay * factor, maxDelay);
        continue;
      }
      if (this._closing) {
        this._ws.close(1000); // close() came while this attempt was logging in
        return;
      }
      try {
        await this._restore();
      } catch (error) {
        if (!this._open_) return; // lost again while restoring: that loss reconnects anew
        this.onError(error);
      }
      this._reconnecting = null;
      if (this.onReconnect) this.onReconnect(this);
      return;
    }
    if (!this._closing) this._finish(new ConnectionClosed(`could not reconnect to ${this.url}`));
  }

  /**
   * After a reconnect: the grants, the responder registrations and the subscriptions again.
   * A subscription the broker refuses with `NotTrusted` (its service has not granted it again
   * yet, after a broker restart) is retried with the backoff until it is in effect or closed.
   */
  async _restore() {
    for (const [command, topics] of Object.entries(this._granted)) {
      for (const topic of topics) this._sendNow(encode(command, topic), false);
    }
    for (const topic of this._handlers.keys()) this._sendNow(encode("EREQ", topic), false);
    await this.sync(); // errors of the above (none for a service) go to onError
    let topics = [...this._subscriptions.keys()];
    let delay = this._backoff.initialDelay;
    while (topics.length > 0) {
      const results = await Promise.allSettled(
        topics.map((topic) => this._send("SUB", topic, [], "", { confirm: true })),
      );
      const refused = [];
      results.forEach((result, i) => {
        if (result.status === "fulfilled" || !this._subscriptions.has(topics[i])) return;
        if (result.reason instanceof ConnectionClosed) throw result.reason;
        if (result.reason instanceof NotTrusted) refused.push(topics[i]);
        else this.onError(result.reason);
      });
      topics = refused;
      if (topics.length === 0) break;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * this._backoff.factor, this._backoff.maxDelay);
      this._checkOpen();
    }
  }

  /** Closes the connection (and stops reconnecting). Waiting calls reject with
   * `ConnectionClosed`; subscriptions end. Resolves once closed. */
  async close() {
    if (this._closing) return this.closed;
    this._closing = true;
    const ws = this._ws;
    if (this._open_ && ws) {
      ws.close(1000);
    } else {
      this._failWaiting(new ConnectionClosed("the client was closed"));
      this._finish(undefined);
    }
    return this.closed;
  }

  // --------------------------------------------------------------------------------- sending

  _checkOpen() {
    if (!this._open_) {
      const why = this._closing ? "the client was closed" : "not connected (reconnecting)";
      throw new ConnectionClosed(why);
    }
  }

  _sendNow(bytes, binary) {
    // A text frame carries the same bytes as a string (they are valid UTF-8: encode() made
    // them from strings, or the caller asked for text).
    this._ws.send(binary ? bytes : fromUtf8.decode(bytes));
  }

  /** Encodes and sends one message; throws when it cannot. */
  _write(command, topic, headers, body, binary) {
    const bytes = encode(command, topic, headers, body);
    this._checkOpen();
    this._sendNow(bytes, binary ?? typeof body !== "string");
  }

  /** Sends one message; with `confirm`, resolves once the broker has handled it (or rejects
   * with its error for it). Never throws: every failure is a rejection. */
  async _send(command, topic, headers, body, { binary, confirm } = {}) {
    this._write(command, topic, headers, body, binary);
    if (!confirm) return;
    await new Promise((resolve, reject) => {
      this._unconfirmed.push({ command, topic, resolve, reject });
      this._probe();
    });
  }

  /**
   * A round trip: resolves once the broker has handled everything sent before, so it is in
   * effect on every shard (docs/PROTOCOL.md §4). The probe is a `PUB` to this connection's own
   * `MSG:<cid>`: a service gets it back, a client gets `not-trusted` for it; either answer
   * comes after the broker's replies to everything sent earlier.
   */
  async sync() {
    this._checkOpen();
    await new Promise((resolve, reject) => {
      this._unconfirmed.push({ resolve, reject });
      this._probe();
    });
  }

  _probe() {
    // One probe answers every call sent before it: several calls in one tick share it.
    if (this._probeQueued) return;
    this._probeQueued = true;
    queueMicrotask(() => {
      this._probeQueued = false;
      const last = this._unconfirmed.at(-1);
      if (!this._open_ || !last || last.probe !== undefined) return;
      const token = this._nextId();
      const topic = `MSG:${this.cid}`;
      this._unconfirmed.push({ command: "PUB", topic, probe: token, resolve() {}, reject() {} });
      this._sendNow(encode("PUB", topic, [["Mm-Sync", token]]), false);
    });
  }

  _nextId() {
    return `${this._idPrefix}-${++this._ids}`;
  }

  /**
   * `PUB topic`. Resolves once sent; with `confirm: true`, once the broker has handled it,
   * rejecting with its error (`NotTrusted` for a client without the grant). Without `confirm`
   * such an error goes to `onError`.
   */
  publish(topic, body = "", options = {}) {
    return this._send("PUB", topic, options.headers ?? [], body, options);
  }

  /** `PUB MSG:<cid>`: a message to one connection. */
  sendTo(cid, body = "", options = {}) {
    return this.publish(`MSG:${cid}`, body, options);
  }

  /**
   * `SUB topic`; resolves with a `Subscription` once the subscription is in effect (a later
   * `PUB` by anyone reaches it), or rejects with `NotTrusted` or `Limit`.
   */
  async subscribe(topic) {
    const subscription = new Subscription(this, topic, this._maxQueued);
    let set = this._subscriptions.get(topic);
    const fresh = set === undefined;
    if (fresh) {
      set = new Set();
      this._subscriptions.set(topic, set);
    }
    set.add(subscription);
    try {
      if (fresh) await this._send("SUB", topic, [], "", { confirm: true });
      else await this.sync(); // the first subscription's SUB may still be on its way
    } catch (error) {
      set.delete(subscription);
      if (set.size === 0 && this._subscriptions.get(topic) === set) this._subscriptions.delete(topic);
      subscription._end();
      throw error;
    }
    return subscription;
  }

  /** `UNS topic`: ends every subscription of this client to `topic`. */
  async unsubscribe(topic) {
    const set = this._subscriptions.get(topic);
    this._subscriptions.delete(topic);
    for (const subscription of set ?? []) subscription._end();
    if (this._open_) await this._send("UNS", topic, [], "", { confirm: true });
  }

  async _dropSubscription(subscription) {
    const set = this._subscriptions.get(subscription.topic);
    if (!set || !set.delete(subscription)) return;
    if (set.size === 0) {
      this._subscriptions.delete(subscription.topic);
      if (this._open_) await this._send("UNS", subscription.topic, [], "", { confirm: true });
    }
  }

  /**
   * `REQ topic` with a fresh `ReqID`; resolves with the response `Message`. Rejects with the
   * broker's error for it (`NoResponder`, `ResponderLost`, `Timeout`, `NotTrusted`, `Limit`),
   * with `Timeout` after `timeout` ms if given, or with `ConnectionClosed`.
   */
  request(topic, body = "", options = {}) {
    const reqId = this._nextId();
    const headers = [["ReqID", reqId], ...(options.headers ?? [])];
    return new Promise((resolve, reject) => {
      this._write("REQ", topic, headers, body, options.binary); // a throw here rejects
      const request = { resolve, reject, topic, timer: undefined };
      if (options.timeout !== undefined) {
        request.timer = setTimeout(() => {
          this._requests.delete(reqId);
          reject(new Timeout(`no answer to REQ ${topic} within ${options.timeout} ms`, { code: "timeout", command: "REQ", topic }));
        }, options.timeout);
      }
      this._requests.set(reqId, request);
    });
  }

  // -------------------------------------------------------------------------------- services

  /** `EPUB topic` (service): clients may publish to `topic` once this resolves. */
  enablePublish(topic) {
    return this._grant("EPUB", topic);
  }

  /** `ESUB topic` (service): clients may subscribe to `topic` once this resolves. */
  enableSubscribe(topic) {
    return this._grant("ESUB", topic);
  }

  async _grant(command, topic) {
    await this._send(command, topic, [], "", { confirm: true });
    this._granted[command].add(topic);
  }

  /**
   * Answers `REQ topic` with `handler(message)`: `EREQ topic` (clients may ask, and this
   * connection is a responder), resolved once in effect. The handler returns (or resolves to)
   * the response body (a string, or bytes for a binary response), `{ body, headers }`, or
   * nothing for an empty body. A handler that throws answers with an `Error` header and the
   * error's message, so the requester is not left waiting.
   */
  async serve(topic, handler) {
    const had = this._handlers.has(topic);
    this._handlers.set(topic, handler);
    try {
      await this._send("EREQ", topic, [], "", { confirm: true });
    } catch (error) {
      if (!had) this._handlers.delete(topic);
      throw error;
    }
  }

  /** `INT UID` (service): later messages from connection `cid` carry `Uid: uid`. */
  setUid(cid, uid) {
    return this._send("INT", "UID", [["forcid", cid], ["setuid", uid]], "", { confirm: true });
  }

  /** Sends `data` as it is (a string as a text frame, bytes as a binary frame), for tools and
   * tests; the broker's errors about it go to `onError`. */
  sendRaw(data) {
    this._checkOpen(); // synchronous on purpose: a tool wants to know at once
    this._ws.send(data);
  }

  async _answer(request) {
    const handler = this._handlers.get(request.topic);
    let headers = [];
    let body = "";
    try {
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
    // The broker routes the RES by the request's `Rid` and gives the requester its `ReqID`.
    const rid = request.header("Rid");
    if (!this._open_ || rid === undefined) return; // that connection is gone: nobody waits
    try {
      await this._send("RES", request.topic, [...headers, ["Rid", rid]], body);
    } catch (error) {
      this.onError(error);
    }
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
    if (command === "PUB" && topic === "ERROR") return this._brokerError(message);
    if (command === "RES") {
      const reqId = message.header("ReqID");
      const request = this._requests.get(reqId);
      if (request) {
        this._requests.delete(reqId);
        clearTimeout(request.timer);
        request.resolve(message);
      }
      return; // a response after its local timeout: nobody waits for it any more
    }
    if (command === "REQ") {
      this._answer(message);
      return;
    }
    if (command === "PUB" && topic === `MSG:${this.cid}` && message.cid === this.cid) {
      const token = message.header("Mm-Sync");
      if (token !== undefined && this._answerProbe(token)) return;
    }
    for (const subscription of this._subscriptions.get(topic) ?? []) subscription._push(message);
  }

  /** A probe came back: everything sent before it has been handled. */
  _answerProbe(token) {
    const index = this._unconfirmed.findIndex((entry) => entry.probe === token);
    if (index < 0) return false;
    for (const entry of this._unconfirmed.splice(0, index + 1)) entry.resolve();
    return true;
  }

  _brokerError(message) {
    const error = errorFromMessage(message);
    const reqId = message.header("ReqID");
    if (reqId !== undefined) {
      const request = this._requests.get(reqId);
      if (request) {
        this._requests.delete(reqId);
        clearTimeout(request.timer);
        request.reject(error);
        return;
      }
    }
    // Without a ReqID: replies come in the order the messages were sent, so the error belongs
    // to the oldest unconfirmed call with the same command word and topic.
    if (error.command !== undefined) {
      const index = this._unconfirmed.findIndex(
        (entry) => entry.command === error.command && entry.topic === error.topic,
      );
      if (index >= 0) {
        const entry = this._unconfirmed[index];
        if (entry.probe !== undefined) {
          // A client's probe: `not-trusted` is its answer, as good as getting it back.
          this._answerProbe(entry.probe);
          return;
        }
        this._unconfirmed.splice(index, 1);
        entry.reject(error);
        return;
      }
    }
    this.onError(error);
  }
}

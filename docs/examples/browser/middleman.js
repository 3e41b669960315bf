// middleman.js: a small browser client for the middleman broker. Plain JavaScript, no build
// step, no dependencies: load it with <script src="middleman.js"></script> and use the global
// `Middleman` class.
//
// Framing follows docs/PROTOCOL.md §3: messages are sent with CRLF line ends and dot-stuffed
// bodies (a body line starting with "." gets one more "."); a received WebSocket message may
// hold several middleman messages, text or binary (Blob or ArrayBuffer), and each body line
// loses the extra "." again. Responses are matched to requests by their ReqID header, which
// the broker gives back exactly as it was sent.
"use strict";

/** A broker error (`PUB ERROR` with a `Code` header) that answered a request. */
class MiddlemanError extends Error {
  constructor(code, text) {
    super(`${code}: ${text}`);
    this.name = "MiddlemanError";
    this.code = code;
    this.text = text;
  }
}

/** One middleman message: `command target`, headers in order, the unstuffed body. */
class MiddlemanMessage {
  constructor(command, target, headers, body, binary) {
    this.command = command;
    this.target = target;
    this.headers = headers; // [[name, value], ...] as the sender spelled them
    this.body = body; // text; lines joined with "\n", no line end after the last
    this.binary = binary; // whether it came in a binary WebSocket frame
  }

  /** The first header called `name`, compared case-insensitively as the broker does. */
  header(name) {
    const wanted = name.toLowerCase();
    const found = this.headers.find(([key]) => key.toLowerCase() === wanted);
    return found === undefined ? undefined : found[1];
  }
}

/** One message as the wire wants it. An empty body has no lines; otherwise every
 * "\n"-separated line of `body` is one CRLF line, with a "." added in front of a leading ".". */
function encodeMessage(command, target, headers = [], body = "") {
  let out = `${command} ${target}\r\n`;
  for (const [name, value] of headers) out += `${name}: ${value}\r\n`;
  out += "\r\n";
  if (body !== "") {
    for (const line of body.replace(/\r\n/g, "\n").split("\n")) {
      out += (line.startsWith(".") ? "." + line : line) + "\r\n";
    }
  }
  return out + ".\r\n";
}

/** Every message in the text of one WebSocket message. Throws on malformed input. */
function parseMessages(text, binary = false) {
  const lines = text.split("\n");
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop(); // ended with a line end
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].endsWith("\r")) lines[i] = lines[i].slice(0, -1);
  }
  const messages = [];
  let i = 0;
  while (i < lines.length) {
    if (lines[i] === "") {
      i++; // blank lines between messages are allowed
      continue;
    }
    const first = lines[i++];
    const space = first.indexOf(" ");
    if (space < 0) throw new Error(`no space in the first line ${JSON.stringify(first)}`);
    const command = first.slice(0, space);
    const target = first.slice(space + 1);
    const headers = [];
    for (;;) {
      if (i === lines.length) throw new Error(`no blank line after the headers of ${first}`);
      const line = lines[i++];
      if (line === "") break;
      const colon = line.indexOf(":");
      if (colon < 0) throw new Error(`header line without a colon: ${JSON.stringify(line)}`);
      headers.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()]);
    }
    const body = [];
    for (;;) {
      if (i === lines.length) throw new Error(`no terminating dot line in ${first}`);
      const line = lines[i++];
      if (line === ".") break;
      body.push(line.startsWith(".") ? line.slice(1) : line); // undo the dot-stuffing
    }
    messages.push(new MiddlemanMessage(command, target, headers, body.join("\n"), binary));
  }
  return messages;
}

/** The bytes of a binary WebSocket message, whichever `binaryType` the socket uses. */
async function frameBytes(data) {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  return new Uint8Array(await data.arrayBuffer()); // a Blob, the browser's default
}

/** One logged-in connection. Create it with `await Middleman.connect(url, key)`. */
class Middleman {
  /** Opens the WebSocket, sends the key; resolves once the broker sent the connection id. */
  static connect(url, key) {
    return new Promise((resolve, reject) => {
      new Middleman(new WebSocket(url), key, { resolve, reject });
    });
  }

  constructor(ws, key, login) {
    this.ws = ws;
    this.cid = null;
    this.onmessage = null; // (message) => ... for messages no `on` handler takes
    this.onerror = (error) => console.warn("middleman:", error); // broker errors, bad input
    this.onclose = null; // (event) => ...
    this._stage = "key"; // then "cid", then "open"
    this._login = login; // settled when the stage becomes "open" or the login fails
    this._handlers = new Map(); // topic -> (message) => ...
    this._pending = new Map(); // ReqID -> {resolve, reject, timer}
    this._nextId = 0;
    // Blobs are read asynchronously; chaining every WebSocket message on one promise keeps
    // them in the order they arrived.
    this._inbox = Promise.resolve();
    this._encoder = new TextEncoder();
    this._decoder = new TextDecoder("utf-8"); // invalid bytes become U+FFFD, as the broker does

    ws.onopen = () => ws.send(key);
    ws.onmessage = (event) => {
      this._inbox = this._inbox
        .then(() => this._receive(event.data))
        .catch((error) => this.onerror(error));
    };
    ws.onclose = (event) => {
      const why = `connection closed (${event.code}${event.reason ? " " + event.reason : ""})`;
      if (this._stage !== "open") this._login.reject(new Error(`login failed: ${why}`));
      for (const [, waiter] of this._pending) {
        clearTimeout(waiter.timer);
        waiter.reject(new Error(why));
      }
      this._pending.clear();
      if (this.onclose) this.onclose(event);
    };
  }

  async _receive(data) {
    const binary = typeof data !== "string";
    const text = binary ? this._decoder.decode(await frameBytes(data)) : data;
    if (this._stage === "key") {
      if (text !== "MM OK") {
        const got = JSON.stringify(text);
        this._login.reject(new Error(`expected "MM OK" after the key, got ${got}`));
        this.ws.close(1000);
        return;
      }
      this._stage = "cid";
    } else if (this._stage === "cid") {
      this.cid = text;
      this._stage = "open";
      this._login.resolve(this);
    } else {
      for (const message of parseMessages(text, binary)) this._dispatch(message);
    }
  }

  _dispatch(message) {
    const { command, target } = message;
    if (command === "RES" || (command === "PUB" && target === "ERROR")) {
      const waiter = this._pending.get(message.header("ReqID"));
      if (waiter !== undefined) {
        this._pending.delete(message.header("ReqID"));
        clearTimeout(waiter.timer);
        if (command === "RES") waiter.resolve(message);
        else waiter.reject(new MiddlemanError(message.header("Code"), message.body));
        return;
      }
      if (command === "PUB") {
        this.onerror(new MiddlemanError(message.header("Code"), message.body));
        return;
      }
    }
    const handler = command === "PUB" ? this._handlers.get(target) : undefined;
    if (handler !== undefined) handler(message);
    else if (this.onmessage) this.onmessage(message);
  }

  /** Sends encoded messages in one WebSocket message, as text or as a binary frame. */
  send(messages, { binary = false } = {}) {
    const text = messages.join("");
    this.ws.send(binary ? this._encoder.encode(text) : text);
  }

  /** Calls `handler(message)` for every `PUB topic` received (subscribe as well). */
  on(topic, handler) {
    this._handlers.set(topic, handler);
  }

  subscribe(topic) {
    this.send([encodeMessage("SUB", topic)]);
  }

  unsubscribe(topic) {
    this.send([encodeMessage("UNS", topic)]);
  }

  publish(topic, body = "", headers = [], options = {}) {
    this.send([encodeMessage("PUB", topic, headers, body)], options);
  }

  /** `REQ topic` with a fresh ReqID. Resolves with the RES message; rejects with a
   * MiddlemanError when the broker answers with an error, or after `timeoutMs`. */
  request(topic, body = "", headers = [], { timeoutMs = 40000, binary = false } = {}) {
    const reqId = `js-${++this._nextId}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(reqId);
        reject(new Error(`no answer to REQ ${topic} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(reqId, { resolve, reject, timer });
      this.send([encodeMessage("REQ", topic, [["ReqID", reqId], ...headers], body)], { binary });
    });
  }

  close() {
    this.ws.close(1000);
  }
}

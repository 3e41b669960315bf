// Types of middleman-client (middleman.js). Hand-written; `npm run check` compiles a use of
// every export against them (test/types-check.ts).

/** A header line: `[name, value]`, as the sender spelled it. */
export type Header = [name: string, value: string];

/** A body: a string goes out in a text frame, bytes in a binary frame. */
export type Body = string | Uint8Array | ArrayBuffer | ArrayBufferView;

/** One received middleman message. */
export class Message {
  constructor(init: { command: string; topic: string; headers?: Header[]; body?: string | Uint8Array; binary?: boolean });
  /** `PUB`, `REQ` or `RES`. */
  readonly command: string;
  readonly topic: string;
  /** The sender's header lines in order, then the broker's (`Cid`, `Uid`; `ReqID` on a response). */
  readonly headers: Header[];
  /** A string when the message came in a text frame, bytes when in a binary frame. */
  readonly body: string | Uint8Array;
  /** Whether it came in a binary frame. */
  readonly binary: boolean;
  /** The sender's connection id. */
  readonly cid: string | undefined;
  /** The sender's user id (`setUid`), "" when none. */
  readonly uid: string | undefined;
  /** The last header called `name`, compared case-insensitively (the broker's own headers
   * come after the sender's). */
  header(name: string): string | undefined;
  /** The body as text (a binary body decoded as UTF-8, bad bytes replaced). */
  readonly text: string;
}

/** Base class of every error of this library. */
export class MiddlemanError extends Error {
  constructor(text: string, init?: { code?: string; command?: string; topic?: string });
  /** The wire code of the class (`not-trusted`, ...); undefined for connection errors. */
  static readonly code: string | undefined;
  /** The broker's `Code` (`not-trusted`, ...); undefined for errors of the connection. */
  readonly code: string | undefined;
  /** The broker's error text, or the library's message. */
  readonly text: string;
  /** The command word and topic the error is about, when its text names them. */
  readonly command: string | undefined;
  readonly topic: string | undefined;
}
export class NotTrusted extends MiddlemanError {}
export class NoResponder extends MiddlemanError {}
export class ResponderLost extends MiddlemanError {}
export class Timeout extends MiddlemanError {}
export class NoRequest extends MiddlemanError {}
export class NoConnection extends MiddlemanError {}
export class UnknownCommand extends MiddlemanError {}
export class Malformed extends MiddlemanError {}
export class Limit extends MiddlemanError {}
/** The connection ended while the call was in flight, or is down (reconnecting). */
export class ConnectionLost extends MiddlemanError {
  constructor(text: string, init?: { closeCode?: number; reason?: string });
  /** The WebSocket close code and reason (1001 `going away` when the broker shuts down). */
  readonly closeCode: number | undefined;
  readonly reason: string | undefined;
}
/** The client was closed with `close()`. */
export class ClientClosed extends ConnectionLost {}
/** The broker refused the key (close 1008 `bad key`) or did not answer the login. */
export class LoginRefused extends MiddlemanError {
  constructor(text: string, init?: { closeCode?: number; reason?: string });
  readonly closeCode: number | undefined;
  readonly reason: string | undefined;
}
/** The broker sent something that is not a middleman message. */
export class ProtocolError extends MiddlemanError {}

/** The error class of each wire code. */
export const WIRE_ERRORS: Readonly<Record<string, typeof MiddlemanError>>;

/** The error object for a `PUB ERROR` message (a plain MiddlemanError for an unknown code). */
export function wireError(message: Message): MiddlemanError;

/** The wire bytes of one message (CRLF lines, dot-stuffed byte-exact body, `.` line). */
export function encode(command: string, topic: string, headers?: Header[], body?: Body): Uint8Array;

/** Every message in one WebSocket message: a string (text frame) or bytes (binary frame). */
export function decode(data: string | Uint8Array | ArrayBuffer | ArrayBufferView): Message[];

export interface ConnectOptions {
  /** Reconnect with backoff when the connection drops (off by default). */
  reconnect?: boolean;
  /** First delay before a reconnection attempt, in ms (100); doubles per failure. */
  backoff?: number;
  /** Largest delay between attempts, in ms (5000). */
  maxBackoff?: number;
  /** Requests `serve` handlers may work on at once (64). */
  maxHandlers?: number;
  /** Broker errors no call waits for (default: console.warn). */
  onError?: (error: MiddlemanError) => void;
  /** Called after a reconnect restored the grants, registrations and subscriptions. */
  onReconnect?: (client: Client) => void;
  /** Called once when the client is closed for good; `error` unless `close()` closed it. */
  onClose?: (error: MiddlemanError | undefined) => void;
  /** How long the login may take, in ms (10000). */
  loginTimeout?: number;
  /** Unread messages a subscription keeps before it drops newer ones, and requests waiting
   * for a handler before they are answered `Error: Busy` (1000). */
  maxQueue?: number;
  /** A WebSocket constructor to use instead of the global one or the `ws` package. */
  WebSocket?: unknown;
}

export interface SendOptions {
  headers?: Header[];
  /** Send in a binary frame even though the body is a string (default: bytes go binary). */
  binary?: boolean;
}

export interface PublishOptions extends SendOptions {
  /** Resolve once the broker has handled it, rejecting with its error (true); with false,
   * resolve once sent, and errors go to `onError`. */
  confirm?: boolean;
}

export interface RequestOptions extends SendOptions {
  /** Reject with `Timeout` after this many ms (60000; null or Infinity: never). */
  timeout?: number | null;
}

export interface CommandOptions {
  headers?: Header[];
  body?: Body;
  binary?: boolean;
}

/** What a `serve` handler returns: the response body, or a body with headers. */
export type Answer = Body | { body?: Body; headers?: Header[] } | undefined | null | void;

/** The messages of one subscription. */
export class Subscription implements AsyncIterableIterator<Message> {
  readonly client: Client;
  readonly topic: string;
  /** Messages dropped because `maxQueue` were unread. */
  readonly dropped: number;
  next(): Promise<IteratorResult<Message, undefined>>;
  /** The next message; rejects with `Timeout` after `timeout` ms, or once it has ended. */
  get(timeout?: number): Promise<Message>;
  return(): Promise<IteratorResult<Message, undefined>>;
  /** Ends this subscription (and sends `UNS` once no other one of the client has the topic). */
  close(): Promise<void>;
  [Symbol.asyncIterator](): Subscription;
}

export class Client {
  readonly url: string;
  /** This connection's id (a new one after each reconnection). */
  readonly cid: string;
  /** Whether it is logged in now (false while reconnecting and after close). */
  readonly connected: boolean;
  /** Resolves once the client is closed for good: with the error, or undefined after `close()`. */
  readonly closed: Promise<MiddlemanError | undefined>;
  waitClosed(): Promise<MiddlemanError | undefined>;
  onError: (error: MiddlemanError) => void;
  onReconnect: ((client: Client) => void) | null;
  onClose: ((error: MiddlemanError | undefined) => void) | null;

  publish(topic: string, body?: Body, options?: PublishOptions): Promise<void>;
  /** `PUB MSG:<cid>`. */
  sendTo(cid: string, body?: Body, options?: PublishOptions): Promise<void>;
  subscribe(topic: string): Promise<Subscription>;
  /** The messages sent to this connection (`MSG:<cid>`), across reconnections. */
  inbox(): Subscription;
  unsubscribe(topic: string): Promise<void>;
  request(topic: string, body?: Body, options?: RequestOptions): Promise<Message>;
  /** Resolves once the broker has handled everything sent before. */
  sync(): Promise<void>;

  enablePublish(topic: string): Promise<void>;
  enableSubscribe(topic: string): Promise<void>;
  serve(topic: string, handler: (request: Message) => Answer | Promise<Answer>): Promise<void>;
  setUid(cid: string, uid: string): Promise<void>;

  /** Any command, confirmed like `publish` (unknown words get `UnknownCommand`). */
  command(command: string, target: string, options?: CommandOptions): Promise<void>;
  /** Sends a raw WebSocket message (tools and tests). */
  sendRaw(data: string | Uint8Array): void;
  close(): Promise<MiddlemanError | undefined>;
}

/** Logs in; resolves once the broker sent `MM OK` and the connection id. Rejects with
 * `LoginRefused` (a refused key, no answer) or `ConnectionLost` (the broker cannot be reached). */
export function connect(url: string, key: string, options?: ConnectOptions): Promise<Client>;

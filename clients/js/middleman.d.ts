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
  /** The first header called `name`, compared case-insensitively. */
  header(name: string): string | undefined;
  /** The body as text (a binary body decoded as UTF-8). */
  text(): string;
}

/** Base class of every error of this library. */
export class MiddlemanError extends Error {
  constructor(text: string, init?: { code?: string; command?: string; topic?: string });
  /** The broker's `Code` (`not-trusted`, ...), or `connection-closed` / `protocol-error`. */
  readonly code: string;
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
/** The connection ended (or the login failed) before the call could complete. */
export class ConnectionClosed extends MiddlemanError {
  constructor(text: string, init?: { closeCode?: number; reason?: string });
  /** The WebSocket close code, when there was one (1008 with reason `bad key` for a refused key). */
  readonly closeCode: number | undefined;
  readonly reason: string | undefined;
}
/** The broker sent something that is not a middleman message. */
export class ProtocolError extends MiddlemanError {
  constructor(text: string);
}

/** The error class of each wire code. */
export const ERROR_CLASSES: Readonly<Record<string, typeof MiddlemanError>>;

/** The error object for a `PUB ERROR` message. */
export function errorFromMessage(message: Message): MiddlemanError;

/** The wire bytes of one message (CRLF lines, dot-stuffed byte-exact body, `.` line). */
export function encode(command: string, topic: string, headers?: Header[], body?: Body): Uint8Array;

/** Every message in one WebSocket message: a string (text frame) or bytes (binary frame). */
export function decode(data: string | Uint8Array | ArrayBuffer | ArrayBufferView): Message[];

/** Backoff of `reconnect`, in milliseconds. */
export interface ReconnectOptions {
  /** First delay (100). */
  initialDelay?: number;
  /** Largest delay (5000). */
  maxDelay?: number;
  /** Growth per failed attempt (2). */
  factor?: number;
  /** Attempts before giving up and closing (Infinity). */
  maxAttempts?: number;
}

export interface ConnectOptions {
  /** Reconnect with backoff when the connection drops (off by default). */
  reconnect?: boolean | ReconnectOptions;
  /** Broker errors no call waits for (default: console.warn). */
  onError?: (error: MiddlemanError) => void;
  /** Called after a reconnect restored the grants, registrations and subscriptions. */
  onReconnect?: (client: Client) => void;
  /** Called once when the client is closed for good; `error` unless `close()` closed it. */
  onClose?: (error: MiddlemanError | undefined) => void;
  /** How long the login may take, in ms (10000). */
  loginTimeout?: number;
  /** Messages a subscription queues before it drops the oldest (10000). */
  maxQueued?: number;
  /** A WebSocket constructor to use instead of the global one or the `ws` package. */
  WebSocket?: unknown;
}

export interface SendOptions {
  headers?: Header[];
  /** Send in a binary frame even though the body is a string (default: bytes go binary). */
  binary?: boolean;
}

export interface PublishOptions extends SendOptions {
  /** Resolve once the broker has handled it, rejecting with its error (a round trip). */
  confirm?: boolean;
}

export interface RequestOptions extends SendOptions {
  /** Reject with `Timeout` after this many ms (default: wait for the broker's own timeout). */
  timeout?: number;
}

/** What a `serve` handler returns: the response body, or a body with headers. */
export type Answer = Body | { body?: Body; headers?: Header[] } | undefined | null | void;

/** The messages of one subscription. */
export class Subscription implements AsyncIterableIterator<Message> {
  readonly client: Client;
  readonly topic: string;
  /** Messages dropped because the queue was full. */
  readonly dropped: number;
  next(): Promise<IteratorResult<Message, undefined>>;
  return(): Promise<IteratorResult<Message, undefined>>;
  /** Ends this subscription (and sends `UNS` once no other one of the client has the topic). */
  close(): Promise<void>;
  [Symbol.asyncIterator](): Subscription;
}

export class Client {
  readonly url: string;
  /** This connection's id (a reconnect gets a new one). */
  readonly cid: string;
  /** Resolves once the client is closed for good: with the error, or undefined after `close()`. */
  readonly closed: Promise<MiddlemanError | undefined>;
  onError: (error: MiddlemanError) => void;
  onReconnect: ((client: Client) => void) | null;
  onClose: ((error: MiddlemanError | undefined) => void) | null;

  publish(topic: string, body?: Body, options?: PublishOptions): Promise<void>;
  /** `PUB MSG:<cid>`. */
  sendTo(cid: string, body?: Body, options?: PublishOptions): Promise<void>;
  subscribe(topic: string): Promise<Subscription>;
  unsubscribe(topic: string): Promise<void>;
  request(topic: string, body?: Body, options?: RequestOptions): Promise<Message>;
  /** Resolves once the broker has handled everything sent before. */
  sync(): Promise<void>;

  enablePublish(topic: string): Promise<void>;
  enableSubscribe(topic: string): Promise<void>;
  serve(topic: string, handler: (request: Message) => Answer | Promise<Answer>): Promise<void>;
  setUid(cid: string, uid: string): Promise<void>;

  /** Sends a raw WebSocket message (tools and tests). */
  sendRaw(data: string | Uint8Array): void;
  close(): Promise<MiddlemanError | undefined>;
}

/** Logs in; resolves once the broker sent `MM OK` and the connection id. */
export function connect(url: string, key: string, options?: ConnectOptions): Promise<Client>;

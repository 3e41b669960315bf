// Checks the hand-written types: a use of every export that `npm run check` (tsc) compiles.
// How: never run, only type-checked; a mismatch with middleman.d.ts fails the compile.

import {
  ClientClosed,
  connect,
  ConnectionLost,
  decode,
  encode,
  LoginRefused,
  wireError,
  Limit,
  Malformed,
  Message,
  MiddlemanError,
  NoConnection,
  NoRequest,
  NoResponder,
  NotTrusted,
  ProtocolError,
  ResponderLost,
  Timeout,
  UnknownCommand,
  type Client,
  type Subscription,
} from "../middleman.js";

export async function service(url: string): Promise<Client> {
  const mm = await connect(url, "key", { reconnect: true, maxBackoff: 1000, maxQueue: 10, onError: (e) => console.log(e.code) });
  await mm.enablePublish("Chat");
  await mm.enableSubscribe("Chat");
  await mm.serve("Echo", (request: Message) => request.text.toUpperCase());
  await mm.serve("Bytes", async (request) => ({ body: new Uint8Array([1]), headers: [["X", request.cid ?? ""]] }));
  await mm.setUid("cid", "uid");
  await mm.sendTo("cid", "hi", { headers: [["A", "b"]], confirm: true });
  return mm;
}

export async function client(url: string): Promise<string> {
  const mm = await connect(url, "key");
  const chat: Subscription = await mm.subscribe("Chat");
  await mm.publish("Chat", "hello", { binary: true });
  try {
    const answer = await mm.request("Echo", "hi", { timeout: 5000 });
    const body: string | Uint8Array = answer.body;
    void body;
  } catch (error) {
    if (error instanceof NotTrusted || error instanceof NoResponder || error instanceof Timeout) return error.text;
    if (error instanceof ConnectionLost || error instanceof LoginRefused) return String(error.closeCode);
    if (error instanceof ClientClosed) return error.reason ?? "";
    throw error;
  }
  for await (const message of chat) {
    const headers: [string, string][] = message.headers;
    return `${message.cid} ${message.uid} ${message.header("X")} ${headers.length} ${message.binary}`;
  }
  await mm.command("NOP", "x", { body: "y" });
  const inbox = mm.inbox();
  const direct: Message = await inbox.get(1000);
  void direct;
  await mm.unsubscribe("Chat");
  await mm.sync();
  return (await mm.close())?.message ?? "";
}

export function codec(): MiddlemanError[] {
  const bytes: Uint8Array = encode("PUB", "T", [["A", "1"]], "body");
  const [message] = decode(bytes);
  return [
    wireError(message),
    new Limit("x"),
    new Malformed("x"),
    new NoConnection("x"),
    new NoRequest("x"),
    new ResponderLost("x"),
    new UnknownCommand("x"),
    new ProtocolError("x"),
  ];
}

// The browser example: a client of the example Echo/Chat service, on middleman-client.
// It shows each step in #log and ends with `status: ok` or `status: error: <why>`.
// The module is imported by a relative path, so the page works when the repository's root is
// served (python3 -m http.server, or tests/it_examples.rs's file server); an application
// would `npm install ./clients/js` and import "middleman-client" through its bundler instead.

import { connect, NoResponder, NotTrusted } from "../../../clients/js/middleman.js";

const log = document.getElementById("log");
function show(line) {
  log.textContent += `${line}\n`;
}

// `REQ Echo`, retried while the service is not there yet: until it has registered, the
// broker answers NoResponder (or NotTrusted before its grant). Once an answer comes, the
// service's earlier grants of Chat are in effect too (docs/PROTOCOL.md §4).
async function echoWhenReady(mm, text, waitMs) {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return await mm.request("Echo", text);
    } catch (error) {
      const notYet = error instanceof NoResponder || error instanceof NotTrusted;
      if (!notYet || Date.now() > deadline) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

async function main() {
  const params = new URLSearchParams(location.search);
  const url = params.get("url") || "ws://127.0.0.1:8765/";
  const key = params.get("key") || "plugh";
  const text = params.get("message") || "hello from the browser";
  show(`url: ${url}`);

  const mm = await connect(url, key, { onError: (error) => show(`broker error: ${error.message}`) });
  show(`cid: ${mm.cid}`);

  const echo = await echoWhenReady(mm, text, 15000);
  show(`echo: ${JSON.stringify(echo.text)}`);
  if (echo.text !== text.toUpperCase()) throw new Error("the echo is not the message upper-cased");

  // subscribe() resolves once the subscription is in effect, so our own messages come back.
  const chat = await mm.subscribe("Chat");
  await mm.publish("Chat", `${text} (text)`);
  await mm.publish("Chat", new TextEncoder().encode(`${text} (binary)`));
  const waiting = new Set(["text", "binary"]);
  const timer = setTimeout(() => chat.close(), 10000);
  for await (const message of chat) {
    const kind = message.binary ? "binary" : "text";
    show(`received: ${kind} PUB Chat from ${message.cid}: ${JSON.stringify(message.text)}`);
    if (message.cid === mm.cid && message.text === `${text} (${kind})`) waiting.delete(kind);
    if (waiting.size === 0) break;
  }
  clearTimeout(timer);
  if (waiting.size > 0) throw new Error("our Chat messages did not come back within 10 s");
  await mm.close();
}

main().then(
  () => show("status: ok"),
  (error) => show(`status: error: ${error.message}`),
);

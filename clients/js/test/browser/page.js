// The browser half of test/browser.test.js: the client scenario of test/client.test.js in a
// real browser (native WebSocket, binary frames as ArrayBuffers), one line per step in #log.
// The test's Node service grants Chat, answers Echo (upper case) and never answers Never.
// Last, with a second client that reconnects, it asks the test to restart the broker on the
// same port, and shows that the subscription and the requests work again afterwards.

import {
  ClientClosed,
  connect,
  ConnectionLost,
  LoginRefused,
  MiddlemanError,
  NoResponder,
  NotTrusted,
  Timeout,
} from "../../middleman.js";

const log = document.getElementById("log");
const show = (line) => (log.textContent += `${line}\n`);
const describe = (error) =>
  error instanceof MiddlemanError ? `${error.constructor.name}: ${error.message}` : `${error}`;

async function expectError(what, promise, Class) {
  try {
    await promise;
    show(`${what}: no error`);
  } catch (error) {
    show(`${what}: ${describe(error)}${error instanceof Class ? "" : " (wrong class)"}`);
  }
}

async function main() {
  const params = new URLSearchParams(location.search);
  const url = params.get("url");
  const mm = await connect(url, params.get("key"));
  show(`cid: ${mm.cid}`);

  const echo = await mm.request("Echo", ".dot\r\nline\n.\nend");
  show(`echo: ${JSON.stringify(echo.body)} from ${echo.cid === params.get("service") ? "the service" : echo.cid}`);

  const chat = await mm.subscribe("Chat");
  await mm.publish("Chat", "..text\n.", { headers: [["Kind", "text"]], confirm: false });
  await mm.publish("Chat", new Uint8Array([0x2e, 0x0a, 0x2e, 0xff, 0x00]), { headers: [["Kind", "binary"]] });
  for (let i = 0; i < 2; i++) {
    const { value: m } = await chat.next();
    const body = m.body instanceof Uint8Array ? `bytes [${[...m.body]}]` : JSON.stringify(m.body);
    show(`chat: ${m.header("Kind")} ${m.binary ? "binary" : "text"} ${body} from ${m.cid === mm.cid ? "me" : m.cid}`);
  }

  await expectError("subscribe Secret", mm.subscribe("Secret"), NotTrusted);
  await expectError("publish Secret", mm.publish("Secret", "x"), NotTrusted);
  await expectError("request Secret", mm.request("Secret", "x"), NotTrusted);
  await expectError("request Never", mm.request("Never", "x", { timeout: 200 }), Timeout);
  await expectError("bad key", connect(url, "wrong key"), LoginRefused);

  const ending = mm.request("Never", "x");
  await mm.close();
  await expectError("after close", ending, ClientClosed);
  show(`chat after close: ${(await chat.next()).done ? "ended" : "still open"}`);

  let reconnected;
  const back = new Promise((resolve) => (reconnected = resolve));
  const again = await connect(url, params.get("key"), {
    reconnect: true,
    backoff: 50,
    maxBackoff: 500,
    onReconnect: () => reconnected(),
  });
  const room = await again.subscribe("Chat");
  const stuck = again.request("Never", "x");
  show("restart the broker now");
  await expectError("in flight at the restart", stuck, ConnectionLost);
  await back; // logged in again, Chat subscribed again (its service granted it again first)
  show(`reconnected: ${again.connected}`);
  // The service registers Echo again on its own reconnection; until then: NoResponder.
  let answer;
  for (let tries = 0; !answer; tries++) {
    try {
      answer = await again.request("Echo", "again");
    } catch (error) {
      if (!(error instanceof NoResponder || error instanceof NotTrusted) || tries > 100) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  show(`echo after the restart: ${JSON.stringify(answer.body)}`);
  await again.publish("Chat", "back");
  const { value: heard } = await room.next();
  show(`chat after the restart: ${JSON.stringify(heard.body)} from ${heard.cid === again.cid ? "me" : heard.cid}`);
  await again.close();
}

main().then(
  () => show("status: ok"),
  (error) => show(`status: error: ${describe(error)}`),
);

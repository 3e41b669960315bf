// Checks the codec alone: encode's exact bytes, decode of what brokers and old clients send,
// and that decode(encode(body)) gives the body back for every mix of CR, LF and dots.
// How: node:test with fixed examples and a seeded random search; no broker.

import assert from "node:assert/strict";
import { test } from "node:test";

import { decode, encode, wireError, Malformed, Message, NotTrusted, ProtocolError } from "../middleman.js";

const text = (bytes) => new TextDecoder().decode(bytes);

test("encode writes CRLF lines, stuffs dots and ends with the dot line", () => {
  assert.equal(
    text(encode("PUB", "News", [["Foo", "bar"], ["ReqID", "7"]], ".a\n..b\nc")),
    "PUB News\r\nFoo: bar\r\nReqID: 7\r\n\r\n..a\n...b\nc\r\n.\r\n",
  );
  assert.equal(text(encode("SUB", "a b")), "SUB a b\r\n\r\n.\r\n", "an empty body has no lines");
  assert.equal(text(encode("PUB", "T", [], ".")), "PUB T\r\n\r\n..\r\n.\r\n");
  assert.equal(text(encode("PUB", "T", [], "x\r\n")), "PUB T\r\n\r\nx\r\n\r\n.\r\n");
});

test("encode keeps bytes exact and refuses what the broker would call malformed", () => {
  const bytes = new Uint8Array([0xff, 0x2e, 0x0a, 0x2e, 0x00]);
  assert.deepEqual(
    [...encode("PUB", "T", [], bytes)],
    [...new TextEncoder().encode("PUB T\r\n\r\n"), 0xff, 0x2e, 0x0a, 0x2e, 0x2e, 0x00, 13, 10, 46, 13, 10],
  );
  assert.throws(() => encode("PUB", ""), TypeError);
  assert.throws(() => encode("PUB", "a\nb"), TypeError);
  assert.throws(() => encode("PUB", "T", [["bad name", "x"]]), TypeError);
  assert.throws(() => encode("PUB", "T", [["X", "a\r\nInjected: 1"]]), TypeError);
  assert.throws(() => encode("pub", "T"), TypeError);
});

test("decode reads several messages per frame, LF or CRLF, blank lines between", () => {
  const frame =
    "PUB News\r\nFoo: bar\r\nCid: c1\r\nUid: \r\n\r\nhello\r\n.\r\n" +
    "\r\n" +
    "RES Echo\ncid : c2\nReqID:  r1  \n\n..dot\nline\n.\n" +
    "PUB Empty\r\n\r\n.";
  const [a, b, c, ...rest] = decode(frame);
  assert.equal(rest.length, 0);
  assert.deepEqual([a.command, a.topic, a.body, a.binary], ["PUB", "News", "hello", false]);
  assert.deepEqual(a.headers, [["Foo", "bar"], ["Cid", "c1"], ["Uid", ""]]);
  assert.equal(a.cid, "c1");
  assert.equal(a.uid, "");
  assert.deepEqual([b.command, b.topic, b.body, b.cid, b.header("reqid")], ["RES", "Echo", ".dot\nline", "c2", "r1"]);
  assert.deepEqual([c.topic, c.body], ["Empty", ""], "the last dot line may lack its line end");
});

test("decode gives binary frames' bodies as bytes, untouched", () => {
  const head = new TextEncoder().encode("PUB Bin\r\nCid: x\r\n\r\n");
  const body = [0x00, 0xff, 0x0d, 0x2e, 0x2e, 0x0a, 0x2e, 0x2e, 0x2e];
  const frame = new Uint8Array([...head, ...body, 13, 10, 46, 13, 10]);
  const [message] = decode(frame);
  assert.equal(message.binary, true);
  assert.ok(message.body instanceof Uint8Array);
  // A lone CR does not start a line, so its dots stay; the line after the LF loses one.
  assert.deepEqual([...message.body], [0x00, 0xff, 0x0d, 0x2e, 0x2e, 0x0a, 0x2e, 0x2e]);
  assert.deepEqual(decode(frame.buffer.slice(0))[0].body, message.body, "an ArrayBuffer too");
});

test("decode refuses what is not a message", () => {
  assert.throws(() => decode("PUB\r\n\r\n.\r\n"), ProtocolError);
  assert.throws(() => decode("PUB T\r\nno colon\r\n\r\n.\r\n"), ProtocolError);
  assert.throws(() => decode("PUB T\r\n"), ProtocolError);
  assert.throws(() => decode("PUB T\r\n\r\nbody without end\r\n"), ProtocolError);
});

// A small deterministic PRNG, so that a failure can be replayed.
function random(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("decode(encode(body)) is the body, for random mixes of CR, LF, dots and text", () => {
  const next = random(20261207);
  const pieces = ["\r", "\n", "\r\n", ".", "..", "a", "é", " ", "\u2028", ".\r\n"];
  for (let round = 0; round < 3000; round++) {
    let body = "";
    const length = Math.floor(next() * 12);
    for (let i = 0; i < length; i++) body += pieces[Math.floor(next() * pieces.length)];
    const wire = encode("PUB", "T", [["N", String(round)]], body);
    const [asText] = decode(text(wire));
    assert.equal(asText.body, body, `text round ${round}: ${JSON.stringify(body)}`);
    const [asBytes] = decode(wire);
    assert.deepEqual(asBytes.body, new TextEncoder().encode(body), `binary round ${round}`);
  }
});

test("decode(encode(bytes)) is the bytes, for random binary bodies", () => {
  const next = random(7);
  const alphabet = [0x00, 0x0a, 0x0d, 0x2e, 0x80, 0xff, 0x41];
  for (let round = 0; round < 2000; round++) {
    const body = Uint8Array.from({ length: Math.floor(next() * 16) }, () => alphabet[Math.floor(next() * alphabet.length)]);
    const [message] = decode(encode("REQ", "T", [], body));
    assert.deepEqual([...message.body], [...body], `round ${round}: ${[...body]}`);
  }
});

test("broker errors become their class, with the command and topic they name", () => {
  const error = wireError(decode("PUB ERROR\r\nCode: not-trusted\r\n\r\nNot trusted: SUB a b\r\n.\r\n")[0]);
  assert.ok(error instanceof NotTrusted);
  assert.deepEqual([error.code, error.command, error.topic, error.text], ["not-trusted", "SUB", "a b", "Not trusted: SUB a b"]);
  const malformed = wireError(
    new Message({ command: "PUB", topic: "ERROR", headers: [["Code", "malformed"]], body: "Malformed message: target too long" }),
  );
  assert.ok(malformed instanceof Malformed);
  assert.equal(malformed.command, undefined);
  const odd = wireError(new Message({ command: "PUB", topic: "ERROR", headers: [["Code", "new-code"]], body: "?" }));
  assert.equal(odd.constructor.name, "MiddlemanError");
  assert.equal(odd.code, "new-code");
});

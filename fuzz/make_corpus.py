#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/ (see README.md).

Each seed is a realistic input with the few option bytes its target reads first: browser
upgrade requests, masked client frames (fragmented, control, and the faults the decoder must
refuse), and middleman messages from docs/PROTOCOL.md. Deterministic: rerunning it rewrites
the same files.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------------
# ws_decoder: [limit selector] [split seed] frames...
# ---------------------------------------------------------------------------------------------

LIMIT_DEFAULT = 12  # LIMITS[12] is 1 MiB, the broker's default
LIMIT_1000 = 8  # LIMITS[8] is 1000 bytes

MASKS = [b"\x37\xfa\x21\x3d", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x12\x34\x56\x78"]


def frame(opcode, payload, fin=True, mask=MASKS[0], rsv=0, length=None):
    """A client frame; `length` overrides the announced length, `mask=None` leaves it unmasked."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    masked = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([first, masked | n])
    elif n <= 0xFFFF:
        head = bytes([first, masked | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, masked | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(s, **kw):
    return frame(0x1, s.encode() if isinstance(s, str) else s, **kw)


def ws(name, frames, limit=LIMIT_DEFAULT, seed=0x21):
    write("ws_decoder", name, bytes([limit, seed]) + b"".join(frames))


SUB = "SUB News\r\n\r\n.\r\n"
PUB = "PUB News\r\nFrom: me\r\n\r\nhello\r\n.\r\n"

ws("login-then-sub-and-pub", [text("xyzzy"), text(SUB), text(PUB, mask=MASKS[3])])
ws("login-byte-by-byte", [text("plugh"), text(PUB)], seed=0x00)
ws(
    "fragmented-text-with-ping-between",
    [
        text("PUB News\r\n\r\n", fin=False),
        frame(0x9, b"are you there"),
        frame(0x0, "caf\u00e9 ".encode(), fin=False, mask=MASKS[2]),
        frame(0x0, b"au lait\r\n.\r\n"),
    ],
)
ws("utf8-char-split-across-fragments", [text(b"\xc3", fin=False), frame(0x0, b"\xa9")], seed=0x07)
ws("binary-16-bit-length", [frame(0x2, bytes(range(256)) * 2, mask=MASKS[1])])
ws("ping-pong-close-1001", [frame(0x9, b"p"), frame(0xA, b""), frame(0x8, b"\x03\xe9tab closed")])
ws("close-empty-and-after", [frame(0x8, b""), text("ignored")])
ws("unmasked-text", [text("hello", mask=None)])
ws("reserved-bits", [text("hello", rsv=4)])
ws("ping-over-125-bytes", [frame(0x9, b"x" * 126)])
ws("fragmented-ping", [frame(0x9, b"x", fin=False)])
ws("continuation-without-start", [frame(0x0, b"orphan")])
ws("length-2-pow-63", [text(b"", length=1 << 63)])
ws("length-u64-max", [frame(0x2, b"", length=(1 << 64) - 1)])
ws("limit-plus-one", [text("a" * 999), text("b" * 1001)], limit=LIMIT_1000)
ws("invalid-utf8-text", [text(b"PUB News\r\n\r\n\xff\xfe\r\n.\r\n")])
ws("close-code-1005-refused", [frame(0x8, b"\x03\xed")])

# ---------------------------------------------------------------------------------------------
# handshake: [limit low] [limit high] [prefix cut] request...
# ---------------------------------------------------------------------------------------------

# 1 + 0x1FFF % 16384 = 8192, the broker's limit.
LIMIT_8K = bytes([0xFF, 0x1F])
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def http(lines, tail=b""):
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + tail


def hs(name, request, cut=0x80, limit=LIMIT_8K):
    write("handshake", name, limit + bytes([cut]) + request)


hs(
    "chrome",
    http(
        [
            "GET /chat?room=1 HTTP/1.1",
            "Host: 127.0.0.1:8765",
            "Connection: Upgrade",
            "Pragma: no-cache",
            "Cache-Control: no-cache",
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36",
            "Upgrade: websocket",
            "Origin: http://127.0.0.1:3000",
            "Sec-WebSocket-Version: 13",
            "Accept-Encoding: gzip, deflate, br, zstd",
            "Accept-Language: en-US,en;q=0.9",
            f"Sec-WebSocket-Key: {KEY}",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        ]
    ),
)
hs(
    "firefox",
    http(
        [
            "GET / HTTP/1.1",
            "Host: 127.0.0.1:8765",
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
            "Accept: */*",
            "Accept-Language: en-US,en;q=0.5",
            "Accept-Encoding: gzip, deflate, br, zstd",
            "Sec-WebSocket-Version: 13",
            "Origin: http://localhost:8080",
            "Sec-WebSocket-Protocol: chat, superchat",
            "Sec-WebSocket-Extensions: permessage-deflate",
            "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==",
            "Connection: keep-alive, Upgrade",
            "Sec-Fetch-Dest: empty",
            "Sec-Fetch-Mode: websocket",
            "Sec-Fetch-Site: same-site",
            "Pragma: no-cache",
            "Cache-Control: no-cache",
            "Upgrade: websocket",
        ]
    ),
)
hs(
    "safari",
    http(
        [
            "GET /ws HTTP/1.1",
            "Host: localhost:8765",
            "Sec-WebSocket-Extensions: permessage-deflate",
            "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEC==",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Origin: http://localhost",
            "Pragma: no-cache",
            "Cache-Control: no-cache",
            "User-Agent: Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.5 Safari/605.1.15",
            "Sec-WebSocket-Version: 13",
        ]
    ),
)
hs(
    "python-websockets-with-pipelined-key",
    http(
        [
            "GET / HTTP/1.1",
            "Host: 127.0.0.1:8765",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: 7ZD3dVmlC6N5Jy0MgVgyvQ==",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
            "User-Agent: Python/3.11 websockets/12.0",
        ],
        tail=text("xyzzy"),
    ),
)
hs(
    "tungstenite-lowercase",
    http(
        [
            "GET /middleman/v1 HTTP/1.1",
            "host: 127.0.0.1",
            "connection: Upgrade",
            "upgrade: websocket",
            "sec-websocket-version: 13",
            f"sec-websocket-key: {KEY}",
        ]
    ),
    cut=0x10,
)
hs(
    "lf-only-line-endings",
    b"GET / HTTP/1.1\nHost: a\nUpgrade: websocket\nConnection: Upgrade\n"
    + f"Sec-WebSocket-Key: {KEY}\nSec-WebSocket-Version: 13\n\n".encode(),
)
hs("plain-get", http(["GET /index.html HTTP/1.1", "Host: 127.0.0.1", "Accept: */*"]))
hs(
    "post-upgrade",
    http(
        [
            "POST / HTTP/1.1",
            "Host: a",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {KEY}",
            "Sec-WebSocket-Version: 13",
        ]
    ),
)
hs(
    "version-8",
    http(
        [
            "GET / HTTP/1.1",
            "Host: a",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {KEY}",
            "Sec-WebSocket-Version: 8",
        ]
    ),
)
hs("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)))
hs(
    "many-headers",
    http(
        ["GET / HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}"]
        + [f"X-Pad-{i}: {'y' * 8}" for i in range(120)]
        + ["Sec-WebSocket-Version: 13"]
    ),
)
hs(
    "limit-just-below-the-head",
    http(["GET / HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}"]),
    limit=bytes([80, 0]),
)
hs("slowloris-prefix", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: web", cut=0xF0)

# ---------------------------------------------------------------------------------------------
# message: [topic limit] [header limit] [relay options] payload...
# ---------------------------------------------------------------------------------------------


def msg(name, payload, topic=0, headers=0, options=0b010101):
    """`topic=0`, `headers=0`: the broker's defaults (1024, 64). Options pick uid/ReqID/Rid."""
    write("message", name, bytes([topic, headers, options]) + payload.encode())


msg("sub", SUB)
msg("pub-with-header", PUB)
msg(
    "req-json-with-reqid",
    'REQ svc.echo\r\nReqID: 42\r\nContent-Type: application/json\r\n\r\n{"x": 1.5}\r\n.\r\n',
    options=0b100110,
)
msg("res-with-rid", "RES svc.echo\r\nRid: 123456789\r\nReqID: 7\r\n\r\npong\r\n.\r\n")
msg("grants", "EPUB News\r\n\r\n.\r\nESUB News\r\n\r\n.\r\nEREQ svc.echo\r\n\r\n.\r\n")
msg("int-uid", "INT UID\r\nforcid: 0123456789abcdefghij\r\nsetuid: alice\r\n\r\n.\r\n")
msg(
    "spoofed-ids-every-spelling",
    "PUB News\r\ncid: a\r\nCID:b\r\nUid :c\r\n uId\t:\td\r\nRid: 1\r\nrId:2\r\nKeep: me\r\n\r\n.\r\n",
    options=0b110111,
)
msg("lf-only-dot-stuffed-body", "PUB News\nX: y\n\n..leading dot\n.\n\nline\n.\n")
msg("several-with-blank-lines", "\r\n" + SUB + "\r\n\r\n" + PUB + "\n" + "UNS News\n\n.")
msg("error-reply", "PUB ERROR\r\nCode: malformed\r\n\r\nMalformed message: empty target\r\n.\r\n")
msg("malformed-no-space-then-more", "PING\r\n\r\n.\r\n" + PUB)
msg("header-without-colon", "PUB News\r\nnot a header\r\n\r\n.\r\n")
msg("terminator-without-eol", "PUB News\r\n\r\nbody with a lone \r in it\r\n.", topic=8, headers=2)
msg("unknown-command", "FROB a topic with spaces\r\n\r\n.\r\n")

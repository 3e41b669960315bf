"""Drives a real middleman with Python's `websockets` library as an independent client.

Usage: interop.py ws://127.0.0.1:PORT/ SERVICE_KEY CLIENT_KEY. Exits 0 and prints OK when
every check passed; any failed check raises and exits non-zero.
"""
import asyncio
import sys

import websockets

URL, SERVICE_KEY, CLIENT_KEY = sys.argv[1:4]


async def login(key):
    ws = await websockets.connect(URL, compression=None, ping_interval=None)
    await ws.send(key)
    assert await ws.recv() == "MM OK"
    cid = await ws.recv()
    assert len(cid) == 20 and all(c in "0123456789abcdefghijklmnopqrstuv" for c in cid), cid
    return ws, cid


def parse(text):
    head, body = text.split("\r\n\r\n", 1)
    lines = head.split("\r\n")
    headers = [tuple(h.split(": ", 1)) for h in lines[1:]]
    assert body.endswith(".\r\n"), body
    return lines[0], headers, body[: -len(".\r\n")]


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), 3)


async def main():
    svc, svc_cid = await login(SERVICE_KEY)
    cli, cli_cid = await login(CLIENT_KEY)

    # Grants, then a round trip on the service's own connection: the grants are in effect.
    for cmd in ("EPUB News", "ESUB News", "EREQ Echo"):
        await svc.send(f"{cmd}\r\n\r\n.\r\n")
    await svc.send(f"PUB MSG:{svc_cid}\r\n\r\nsync\r\n.\r\n")
    assert parse(await recv(svc))[2] == "sync\r\n"

    await svc.send("SUB News\r\n\r\n.\r\n")
    await cli.send("SUB News\r\n\r\n.\r\n")
    await cli.send(f"PUB MSG:{cli_cid}\r\n\r\n.\r\n")  # not granted: an error, and a barrier
    first, headers, body = parse(await recv(cli))
    assert first == "PUB ERROR" and ("Code", "not-trusted") in headers, (first, headers)

    # Publish from the client: both receive it, headers in order, body exact.
    await cli.send("PUB News\r\nfoo-Bar: 1\r\nZ: 2\r\n\r\nhello\r\n..dotted\r\n.\r\n")
    for ws in (svc, cli):
        first, headers, body = parse(await recv(ws))
        assert first == "PUB News", first
        assert headers == [("foo-Bar", "1"), ("Z", "2"), ("Cid", cli_cid), ("Uid", "")], headers
        assert body == "hello\r\n..dotted\r\n", repr(body)

    # Binary in, binary out.
    await cli.send(b"PUB News\r\n\r\nbin\r\n.\r\n")
    for ws in (svc, cli):
        got = await recv(ws)
        assert isinstance(got, bytes) and got.endswith(b"\r\n\r\nbin\r\n.\r\n"), got

    # Request and response, ReqID restored.
    await cli.send("REQ Echo\r\nReqID: r-1\r\n\r\nping\r\n.\r\n")
    first, headers, body = parse(await recv(svc))
    rid = dict(headers)["Rid"]
    assert first == "REQ Echo" and rid.isdigit(), (first, headers)
    await svc.send(f"RES Echo\r\nRid: {rid}\r\n\r\npong\r\n.\r\n")
    first, headers, body = parse(await recv(cli))
    assert first == "RES Echo" and ("ReqID", "r-1") in headers and "Rid" not in dict(headers)
    assert body == "pong\r\n"

    # Ping gets a pong; a close is answered with the same code.
    await asyncio.wait_for(await cli.ping(b"are you there"), 3)
    await cli.close(code=1000, reason="bye")
    assert cli.close_code == 1000, cli.close_code

    # A bad key is refused with 1008.
    bad = await websockets.connect(URL, compression=None)
    await bad.send("not a key")
    try:
        await recv(bad)
        raise AssertionError("a bad key was accepted")
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1008, closed
        assert closed.rcvd.reason == "bad key", closed.rcvd.reason
    await svc.close()
    print("OK")


asyncio.run(main())

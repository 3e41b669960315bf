"""A TLS client and a plain client on the same broker, through Python's own ssl stack.

Usage: tls_client.py wss://127.0.0.1:PORT/ ws://127.0.0.1:PORT/ CA_PEM SERVICE_KEY.
Checks login over TLS, pub/sub across the two transports in both directions, a message of
several TLS records, a burst of small messages (many records per socket read), and the
close handshake; prints OK.
"""
import asyncio
import ssl
import sys

import websockets

WSS, WS, CA, KEY = sys.argv[1:5]


async def login(url, **kw):
    ws = await websockets.connect(url, compression=None, max_size=None, **kw)
    await ws.send(KEY)
    assert await ws.recv() == "MM OK"
    return ws, await ws.recv()


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), 5)


async def main():
    context = ssl.create_default_context(cafile=CA)
    secure, secure_cid = await login(WSS, ssl=context)
    plain, plain_cid = await login(WS)
    for ws, cid in ((secure, secure_cid), (plain, plain_cid)):
        await ws.send("SUB T\r\n\r\n.\r\n")
        await ws.send(f"PUB MSG:{cid}\r\n\r\nsync\r\n.\r\n")
        assert (await recv(ws)).endswith("sync\r\n.\r\n")

    big = "x" * 200_000
    for sender, cid in ((secure, secure_cid), (plain, plain_cid)):
        await sender.send(f"PUB T\r\n\r\nhello from {cid}\r\n{big}\r\n.\r\n")
        for ws in (secure, plain):
            got = await recv(ws)
            assert got.startswith(f"PUB T\r\nCid: {cid}\r\n"), got[:80]
            assert got.endswith(f"hello from {cid}\r\n{big}\r\n.\r\n"), len(got)

    # A burst: many records arrive in one socket read, more plaintext than rustls buffers.
    burst = 3000
    payload = "y" * 1000
    for i in range(burst):
        await secure.send(f"PUB T\r\nSeq: {i}\r\n\r\n{payload}\r\n.\r\n")
    for i in range(burst):
        got = await recv(plain)
        assert got.startswith(f"PUB T\r\nSeq: {i}\r\n"), (i, got[:60])
    for i in range(burst):
        await recv(secure)  # its own copies

    await secure.close(code=1000)
    assert secure.close_code == 1000, secure.close_code
    await plain.close()
    print("OK")


asyncio.run(main())

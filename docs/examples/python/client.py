"""The example middleman client, on the `middleman` client library (clients/python).

It logs in with a client key, asks the Echo service to upper-case a message, then subscribes
to `Chat`, publishes the message there and prints it as it comes back.

    python3 client.py --url ws://127.0.0.1:8765/ --key plugh --message "hello"

Output (the cid differs every time):

    cid: 0v4k2d1u0000000001g0
    echo: 'HELLO'
    chat from 0v4k2d1u0000000001g0: 'hello'

If the service is not there yet it prints `waiting for the Echo service (<code>)` once and
retries for `--wait` seconds. Bodies are printed with Python's repr, so line ends and leading
dots are visible. Exits 0 when all of it happened, 1 otherwise.
"""

import argparse
import asyncio
import sys
import time

import middleman


async def echo_when_ready(mm: middleman.Client, text: str, wait: float) -> middleman.Message:
    """`REQ Echo`, retried while the service is not there yet.

    Until the service has sent `EREQ Echo` the broker answers `no-responder` (or
    `not-trusted` if nobody granted Echo yet). Once a request is answered, the service's
    earlier `EPUB`/`ESUB Chat` are in effect as well (docs/PROTOCOL.md §4).
    """
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            return await mm.request("Echo", text)
        except (middleman.NoResponder, middleman.NotTrusted) as e:
            if time.monotonic() > deadline:
                raise
            if not told:
                print(f"waiting for the Echo service ({e.code})", flush=True)
                told = True
        await asyncio.sleep(0.2)


async def run_client(url: str, key: str, text: str, wait: float) -> None:
    async with middleman.connect(url, key) as mm:
        print(f"cid: {mm.cid}", flush=True)
        answer = await echo_when_ready(mm, text, wait)
        print(f"echo: {answer.body!r}", flush=True)
        if answer.body != text.upper():
            raise RuntimeError("the echo is not the message upper-cased")

        chat = await mm.subscribe("Chat")  # in effect once it returns
        await mm.publish("Chat", text)
        while True:
            try:
                message = await chat.get(timeout=10)
            except asyncio.TimeoutError:
                raise RuntimeError("our Chat message did not come back within 10 s") from None
            print(f"chat from {message.cid}: {message.body!r}", flush=True)
            if message.cid == mm.cid and message.body == text:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description="The example middleman client.")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/", help="broker WebSocket URL")
    parser.add_argument("--key", default="plugh", help="client key")
    parser.add_argument("--message", default="hello from Python", help="what to echo and chat")
    parser.add_argument("--wait", type=float, default=15, help="seconds to wait for the service")
    args = parser.parse_args()
    try:
        asyncio.run(run_client(args.url, args.key, args.message, args.wait))
    except KeyboardInterrupt:
        sys.exit(1)
    except Exception as e:  # a short line, not a traceback, for anything that went wrong
        sys.exit(f"client: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()

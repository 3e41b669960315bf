"""An example middleman client: logs in with a client key, asks the Echo service to upper-case
a message, then subscribes to `Chat`, publishes the message there and prints it as it comes
back. It uses the `Middleman` helper from service.py next to it.

    python3 client.py --url ws://127.0.0.1:8765/ --key plugh --message "hello"

Output (the cid differs every time):

    cid: 0v4k2d1u0000000001g0
    echo: 'HELLO'
    chat from 0v4k2d1u0000000001g0: 'hello'

Bodies are printed with Python's repr, so line ends and leading dots are visible. Exits 0 when
all of it happened, 1 otherwise.
"""

import argparse
import asyncio
import sys
import time

from service import Middleman, RequestError


async def echo_when_ready(mm, text, wait):
    """`REQ Echo`, retried while the service is not there yet.

    The broker acknowledges nothing, so a client that starts together with the service cannot
    know when the grants are in effect. A request can: until the service has sent `EREQ Echo`
    the broker answers `no-responder` (or `not-trusted` if nobody granted Echo yet), and once
    the answer comes, the service's earlier `EPUB`/`ESUB Chat` are in effect as well
    (docs/PROTOCOL.md §4), so the client may use them.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            return await mm.request("Echo", text)
        except RequestError as e:
            if e.code not in ("no-responder", "not-trusted") or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


async def run_client(url, key, text, wait):
    mm = await Middleman.connect(url, key)
    print(f"cid: {mm.cid}", flush=True)
    heard = asyncio.Queue()
    mm.on_publish("Chat", heard.put_nowait)
    try:
        answer = await echo_when_ready(mm, text, wait)
        print(f"echo: {answer.body!r}", flush=True)
        if answer.body != text.upper():
            raise RuntimeError("the echo is not the message upper-cased")

        await mm.subscribe("Chat")
        await mm.publish("Chat", text)
        # The SUB is in effect before the broker handles the PUB after it, so the message comes
        # back to us (and to everyone else subscribed to Chat).
        while True:
            try:
                message = await asyncio.wait_for(heard.get(), 10)
            except asyncio.TimeoutError:
                raise RuntimeError("our Chat message did not come back within 10 s") from None
            print(f"chat from {message.header('Cid')}: {message.body!r}", flush=True)
            if message.header("Cid") == mm.cid and message.body == text:
                break
    finally:
        await mm.close()


def main():
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

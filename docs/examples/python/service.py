"""The example middleman service, on the `middleman` client library (clients/python).

It lets clients publish and subscribe to `Chat`, answers `REQ Echo` with the request's body
upper-cased, and prints the chat it hears.

    python3 service.py --url ws://127.0.0.1:8765/ --key xyzzy

It prints `ready <cid>` once its grants and registration are in effect on the broker (every
call below returns only then), then `chat from <cid>: '<body>'` for every `Chat` message.
"""

import argparse
import asyncio
import sys

import middleman


async def run_service(url: str, key: str) -> None:
    async with middleman.connect(url, key) as mm:
        await mm.enable_publish("Chat")  # EPUB Chat: clients may publish to Chat
        await mm.enable_subscribe("Chat")  # ESUB Chat: clients may subscribe to it
        chat = await mm.subscribe("Chat")
        await mm.serve("Echo", lambda request: request.body.upper())  # EREQ Echo, then RES
        print(f"ready {mm.cid}", flush=True)
        async for message in chat:
            print(f"chat from {message.cid}: {message.text!r}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="The example Echo/Chat middleman service.")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/", help="broker WebSocket URL")
    parser.add_argument("--key", default="xyzzy", help="service key")
    args = parser.parse_args()
    try:
        asyncio.run(run_service(args.url, args.key))
    except KeyboardInterrupt:
        pass
    except (OSError, middleman.MiddlemanError) as e:
        sys.exit(f"service: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()

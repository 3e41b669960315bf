"""middleman-client: an asyncio client for the middleman message broker.

    import middleman

    async with middleman.connect("ws://127.0.0.1:8765/", "plugh") as client:
        answer = await client.request("Echo", "hello")
        print(answer.body)

See docs/CLIENTS.md in the middleman repository for the whole API.
"""

from .client import Client, Handler, Reply, Subscription, connect
from .codec import Message, ProtocolError, decode, encode
from .errors import (
    ClientClosed,
    ConnectionLost,
    Limit,
    LoginRefused,
    Malformed,
    MiddlemanError,
    NoConnection,
    NoRequest,
    NoResponder,
    NotTrusted,
    ResponderLost,
    Timeout,
    UnknownCommand,
)

__all__ = [
    "Client",
    "ClientClosed",
    "ConnectionLost",
    "Handler",
    "Limit",
    "LoginRefused",
    "Malformed",
    "Message",
    "MiddlemanError",
    "NoConnection",
    "NoRequest",
    "NoResponder",
    "NotTrusted",
    "ProtocolError",
    "Reply",
    "ResponderLost",
    "Subscription",
    "Timeout",
    "UnknownCommand",
    "connect",
    "decode",
    "encode",
]

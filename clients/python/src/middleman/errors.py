"""The exceptions of the middleman client: one class per wire error code, and a few for the
connection itself.

What it is: `MiddlemanError` and its subclasses, and `error_from_wire`, which turns a broker
`PUB ERROR` message into the right one.

Invariants: every wire code of docs/PROTOCOL.md §6 has exactly one class here, and
`error_from_wire` maps an unknown code to plain `MiddlemanError` (a newer broker may add codes).
"""

from __future__ import annotations

from typing import Dict, Optional, Type

from .codec import Message


class MiddlemanError(Exception):
    """Base of every error this library raises for the broker or the connection.

    `code` is the wire code (`not-trusted`, ...) or None for errors of the connection itself;
    `text` is the broker's error text; `message` is the `PUB ERROR` message, if there was one.
    """

    code: Optional[str] = None

    def __init__(self, text: str, message: Optional[Message] = None) -> None:
        super().__init__(f"{self.code}: {text}" if self.code else text)
        self.text = text
        self.message = message


class NotTrusted(MiddlemanError):
    """The key may not do this (a client without the service's EPUB/ESUB/EREQ grant, or a
    service-only command from a client)."""

    code = "not-trusted"


class NoResponder(MiddlemanError):
    """No service is registered (`serve`/EREQ) for the request's topic."""

    code = "no-responder"


class ResponderLost(MiddlemanError):
    """The service the request went to disconnected (or fell behind) before answering."""

    code = "responder-lost"


class Timeout(MiddlemanError, TimeoutError):
    """No answer in time: from the broker (`--request-timeout`), or from this client's own
    `timeout=` (then `code` is still `timeout` and the text says so)."""

    code = "timeout"


class NoRequest(MiddlemanError):
    """A response whose request is unknown, answered already, timed out or not ours."""

    code = "no-request"


class NoConnection(MiddlemanError):
    """`set_uid` named a connection id the broker does not know."""

    code = "no-connection"


class UnknownCommand(MiddlemanError):
    """The broker does not know the command (only reachable with `Client.command`)."""

    code = "unknown-command"


class Malformed(MiddlemanError):
    """The broker could not parse what was sent (for example a topic over `--max-topic-bytes`
    or more headers than `--max-headers`)."""

    code = "malformed"


class Limit(MiddlemanError):
    """A per-connection limit: subscriptions or pending requests."""

    code = "limit"


class ConnectionLost(MiddlemanError):
    """The connection ended while the call was in flight, or is down (reconnecting)."""


class ClientClosed(ConnectionLost):
    """The client was closed with `close()`."""


class LoginRefused(MiddlemanError):
    """The broker refused the key (close 1008 `bad key`) or did not answer the login."""


WIRE_ERRORS: Dict[str, Type[MiddlemanError]] = {
    cls.code: cls
    for cls in (
        NotTrusted,
        NoResponder,
        ResponderLost,
        Timeout,
        NoRequest,
        NoConnection,
        UnknownCommand,
        Malformed,
        Limit,
    )
    if cls.code is not None
}


def error_from_wire(message: Message) -> MiddlemanError:
    """The exception for a broker error message (`PUB ERROR` with a `Code` header)."""
    code = message.header("Code") or ""
    cls = WIRE_ERRORS.get(code)
    text = message.text
    if cls is None:
        err = MiddlemanError(f"{code}: {text}" if code else text, message)
        err.code = code or None
        return err
    return cls(text, message)

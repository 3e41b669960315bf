"""The middleman wire format (docs/PROTOCOL.md §3): encoding one message, decoding a frame.

What it is: pure functions, no I/O. `encode` writes one message with CRLF line ends and a
dot-stuffed body; `decode` reads every message of one WebSocket message (a frame may carry
several) and undoes the dot-stuffing.

What it is not: it knows nothing about commands, permissions or connections.

Invariants:
- Bodies are byte-exact both ways: `decode(encode(c, t, h, body))[0].body == body` for every
  `bytes` body, and for every `str` body sent in a text frame.
- The body rule: an empty body is sent as no lines at all; any other body is sent as its own
  bytes, each line that starts with "." given one more ".", followed by one CRLF that is not
  part of it (the line end before the terminating "." line). Decoding removes that last line
  end (CRLF, or a bare LF from a sender that wrote one) and one "." from each line starting
  with ".". Lines end at LF; a lone CR is an ordinary byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Tuple, Union

Body = Union[bytes, str]
Headers = Sequence[Tuple[str, str]]

# RFC 9110 token characters: what the broker accepts in a header name.
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class ProtocolError(ValueError):
    """Bytes that are not a middleman message (from the broker), or a message that cannot be
    encoded (a target or header the broker would refuse)."""


@dataclass(frozen=True)
class Message:
    """One middleman message.

    `headers` are in the order they were sent, spelled as they were sent; the broker appends
    `Cid` and `Uid` (and `Rid` on a REQ, `ReqID` on a RES) after the sender's own. `body` is
    `bytes` when the message came in a binary WebSocket frame, `str` for a text frame.
    """

    command: str
    topic: str
    headers: Tuple[Tuple[str, str], ...] = ()
    body: Body = ""
    binary: bool = field(default=False)

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The last header called `name`, compared case-insensitively as the broker does.

        The last one, because the broker puts the headers it vouches for (`Cid`, `Uid`, `Rid`,
        `ReqID` on a response) after the sender's."""
        wanted = name.lower()
        for key, value in reversed(self.headers):
            if key.lower() == wanted:
                return value
        return default

    @property
    def cid(self) -> str:
        """The sender's connection id (the broker's `Cid` header)."""
        return self.header("Cid") or ""

    @property
    def uid(self) -> str:
        """The sender's user id set by a service with `set_uid` (the `Uid` header), or ""."""
        return self.header("Uid") or ""

    @property
    def text(self) -> str:
        """The body as text (a binary body decoded as UTF-8, bad bytes replaced)."""
        if isinstance(self.body, str):
            return self.body
        return self.body.decode("utf-8", "replace")


def _check_line(what: str, value: bytes) -> None:
    if b"\r" in value or b"\n" in value or b"\0" in value:
        raise ProtocolError(f"{what} may not contain CR, LF or NUL: {value!r}")


def stuff(body: bytes) -> bytes:
    """A body as it goes on the wire, up to (not including) the terminating "." line."""
    if not body:
        return b""
    out = body.replace(b"\n.", b"\n..")
    if out.startswith(b"."):
        out = b"." + out
    return out + b"\r\n"


def unstuff(region: bytes) -> bytes:
    """The inverse of `stuff`: the bytes between the blank line and the "." line, decoded."""
    if region.endswith(b"\r\n"):
        region = region[:-2]
    elif region.endswith(b"\n"):
        region = region[:-1]
    if region.startswith(b"."):
        region = region[1:]
    return region.replace(b"\n.", b"\n")


def encode(command: str, target: str, headers: Headers = (), body: Body = "") -> bytes:
    """One message, UTF-8, ready for a frame: text if `body` is a `str`, binary if `bytes`.

    Raises `ProtocolError` for a target or header the broker would call malformed, and
    `UnicodeEncodeError` for a `str` that is not valid Unicode text.
    """
    errors = "surrogateescape" if isinstance(body, bytes) else "strict"
    tgt = target.encode("utf-8", errors)
    if not tgt:
        raise ProtocolError("the target (topic) may not be empty")
    _check_line("a target", tgt)
    out = [command.encode("ascii"), b" ", tgt, b"\r\n"]
    for name, value in headers:
        raw_name = name.encode("utf-8", errors)
        if not raw_name or not all(b in _TOKEN for b in raw_name):
            raise ProtocolError(f"a header name must be a token (letters, digits, !#$%&'*+-.^_`|~): {name!r}")
        raw_value = value.encode("utf-8", errors)
        _check_line("a header value", raw_value)
        out += [raw_name, b": ", raw_value, b"\r\n"]
    out.append(b"\r\n")
    out.append(stuff(body if isinstance(body, bytes) else body.encode("utf-8")))
    out.append(b".\r\n")
    return b"".join(out)


def _line(data: bytes, pos: int) -> Tuple[bytes, int]:
    """The line at `pos` without its line end, and where the next one starts."""
    end = data.find(b"\n", pos)
    if end < 0:
        line, nxt = data[pos:], len(data)
    else:
        line, nxt = data[pos:end], end + 1
    if line.endswith(b"\r") and end >= 0:
        line = line[:-1]
    return line, nxt


def decode(frame: Union[bytes, str]) -> list[Message]:
    """Every message in one WebSocket message: `str` for a text frame, `bytes` for binary.

    Raises `ProtocolError` if the frame is not a sequence of whole messages.
    """
    binary = not isinstance(frame, str)
    data = frame.encode("utf-8") if isinstance(frame, str) else bytes(frame)
    errors = "surrogateescape" if binary else "strict"
    messages = []
    pos = 0
    while pos < len(data):
        first, pos = _line(data, pos)
        if not first:
            continue  # blank lines between messages
        command, space, target = first.partition(b" ")
        if not space:
            raise ProtocolError(f"no space in the first line {first!r}")
        headers = []
        while True:
            if pos >= len(data):
                raise ProtocolError(f"no blank line after the headers of {first!r}")
            line, pos = _line(data, pos)
            if not line:
                break
            name, colon, value = line.partition(b":")
            if not colon:
                raise ProtocolError(f"header line without a colon: {line!r}")
            headers.append(
                (name.strip(b" \t").decode("utf-8", errors), value.strip(b" \t").decode("utf-8", errors))
            )
        start = pos
        while True:
            if pos >= len(data):
                raise ProtocolError(f"no terminating dot line in {first!r}")
            line_start = pos
            line, pos = _line(data, pos)
            if line == b".":
                break
        raw = unstuff(data[start:line_start])
        body: Body = raw if binary else raw.decode("utf-8")
        messages.append(
            Message(
                command.decode("utf-8", errors),
                target.decode("utf-8", errors),
                tuple(headers),
                body,
                binary,
            )
        )
    return messages


def join(messages: Iterable[bytes]) -> bytes:
    """Several encoded messages in one frame (the broker handles every one, in order)."""
    return b"".join(messages)

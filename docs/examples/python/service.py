"""A small middleman helper for Python (asyncio, `websockets` only) and an example service.

`Middleman` is the reusable part: log in, grant, subscribe, publish, make requests, and answer
requests by topic. It frames messages as docs/PROTOCOL.md §3 says: CRLF line ends, body lines
that start with "." get one more "." (dot-stuffing), and on receipt every message of a
WebSocket message (there may be several) is parsed and its body lines lose that extra ".".

Run as a program, it is the example service: it lets clients publish and subscribe to `Chat`,
answers `REQ Echo` with the request's body upper-cased, and prints the chat it hears.

    python3 service.py --url ws://127.0.0.1:8765/ --key xyzzy

It prints `ready <cid>` once its grants are in effect on the broker.
"""

import argparse
import asyncio
import inspect
import itertools
import sys

import websockets


class ProtocolError(Exception):
    """The broker sent something that is not a middleman message."""


class RequestError(Exception):
    """A request ended in a broker error (`no-responder`, `not-trusted`, `timeout` ...)."""

    def __init__(self, code, text):
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


class Message:
    """One middleman message: `command target`, headers in order, and the unstuffed body.

    The body is text; its lines are joined with "\\n" (no line end after the last one).
    `binary` tells whether it arrived in a binary WebSocket frame.
    """

    def __init__(self, command, target, headers=(), body="", binary=False):
        self.command = command
        self.target = target
        self.headers = list(headers)
        self.body = body
        self.binary = binary

    def header(self, name, default=None):
        """The first header called `name`, compared case-insensitively as the broker does."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    def __repr__(self):
        return f"Message({self.command!r}, {self.target!r}, {self.headers!r}, {self.body!r})"


def encode(command, target, headers=(), body=""):
    """One message as the wire wants it: CRLF everywhere, body dot-stuffed, `.` line last.

    An empty body has no lines; otherwise each "\\n"-separated line of `body` is one line.
    """
    out = [f"{command} {target}\r\n"]
    for name, value in headers:
        out.append(f"{name}: {value}\r\n")
    out.append("\r\n")
    if body:
        for line in body.replace("\r\n", "\n").split("\n"):
            if line.startswith("."):
                line = "." + line  # dot-stuffing: a body line never looks like the end
            out.append(line + "\r\n")
    out.append(".\r\n")
    return "".join(out)


def parse(data):
    """Every message in one WebSocket message (a `str`, or `bytes` from a binary frame)."""
    binary = isinstance(data, (bytes, bytearray))
    text = bytes(data).decode("utf-8", "replace") if binary else data
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text ended with a line end, not with a partial line
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    messages = []
    i = 0
    while i < len(lines):
        if lines[i] == "":
            i += 1  # blank lines between messages are allowed
            continue
        command, space, target = lines[i].partition(" ")
        if not space:
            raise ProtocolError(f"no space in the first line {lines[i]!r}")
        i += 1
        headers = []
        while True:
            if i == len(lines):
                raise ProtocolError(f"no blank line after the headers of {command} {target}")
            line = lines[i]
            i += 1
            if line == "":
                break
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"header line without a colon: {line!r}")
            headers.append((name.strip(), value.strip()))
        body = []
        while True:
            if i == len(lines):
                raise ProtocolError(f"no terminating dot line in {command} {target}")
            line = lines[i]
            i += 1
            if line == ".":
                break
            body.append(line[1:] if line.startswith(".") else line)  # undo the dot-stuffing
        messages.append(Message(command, target, headers, "\n".join(body), binary))
    return messages


class Middleman:
    """One logged-in connection to a middleman broker.

    Create it with `await Middleman.connect(url, key)`; a background task then reads and
    dispatches everything the broker sends until the connection ends.
    """

    def __init__(self, ws, cid):
        self.ws = ws
        self.cid = cid
        self._request_handlers = {}  # topic -> handler(Message) -> body | (headers, body)
        self._publish_handlers = {}  # topic -> handler(Message)
        self._pending = {}  # ReqID -> future of the RES
        self._syncs = {}  # sync token -> future
        self._ids = itertools.count(1)
        self._tasks = set()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, url, key, **options):
        """Opens the WebSocket, sends the key, and returns once the broker sent the cid."""
        ws = await websockets.connect(url, compression=None, **options)
        try:
            await ws.send(key)
            ok = await ws.recv()
            if ok != "MM OK":
                raise ProtocolError(f"expected 'MM OK' after the key, got {ok!r}")
            cid = await ws.recv()
        except websockets.ConnectionClosed as e:
            reason = e.rcvd.reason if e.rcvd else "no close frame"
            raise ConnectionError(f"login refused: {reason}") from None
        except BaseException:
            await ws.close()
            raise
        return cls(ws, cid)

    # Sending ------------------------------------------------------------------------------

    async def send(self, *messages, binary=False):
        """Sends already encoded messages, all in one WebSocket message."""
        text = "".join(messages)
        await self.ws.send(text.encode("utf-8") if binary else text)

    async def publish(self, topic, body="", headers=(), binary=False):
        await self.send(encode("PUB", topic, headers, body), binary=binary)

    async def subscribe(self, *topics):
        await self.send(*(encode("SUB", t) for t in topics))

    async def unsubscribe(self, *topics):
        await self.send(*(encode("UNS", t) for t in topics))

    async def grant(self, publish=(), subscribe=(), request=()):
        """Service only: lets clients PUB, SUB and REQ these topics (EPUB, ESUB, EREQ).

        `request` also makes this connection a responder for those topics; register the
        handlers with `on_request` first so that no request finds the service unprepared.
        """
        await self.send(
            *(encode("EPUB", t) for t in publish),
            *(encode("ESUB", t) for t in subscribe),
            *(encode("EREQ", t) for t in request),
        )

    async def sync(self, timeout=10):
        """Service only: a round trip through the broker on this connection's `MSG:<cid>`.

        When it returns, everything sent before it (grants, SUBs) is in effect on every
        shard (docs/PROTOCOL.md §4), so clients may use the grants.
        """
        token = f"sync {next(self._ids)}"
        done = asyncio.get_running_loop().create_future()
        self._syncs[token] = done
        try:
            await self.publish(f"MSG:{self.cid}", token)
            await asyncio.wait_for(done, timeout)
        finally:
            self._syncs.pop(token, None)

    async def request(self, topic, body="", headers=(), timeout=40, binary=False):
        """Sends `REQ topic` with a fresh `ReqID` and returns the RES `Message`.

        Raises `RequestError` when the broker answers with an error instead.
        """
        req_id = f"py-{next(self._ids)}"
        answer = asyncio.get_running_loop().create_future()
        self._pending[req_id] = answer
        try:
            wire = encode("REQ", topic, [("ReqID", req_id), *headers], body)
            await self.send(wire, binary=binary)
            return await asyncio.wait_for(answer, timeout)
        finally:
            self._pending.pop(req_id, None)

    # Receiving ----------------------------------------------------------------------------

    def on_request(self, topic, handler):
        """`handler(message)` answers `REQ topic`: it returns the RES body, or a pair
        `(headers, body)`; it may be a coroutine function. An exception becomes a RES with an
        `Error` header, so the requester is not left waiting."""
        self._request_handlers[topic] = handler

    def on_publish(self, topic, handler):
        """`handler(message)` gets every `PUB topic` this connection receives (SUB first)."""
        self._publish_handlers[topic] = handler

    async def wait_closed(self):
        """Returns when the connection has ended; raises what ended it, if it failed."""
        await self._reader

    async def close(self):
        await self.ws.close()
        try:
            await self._reader
        except websockets.ConnectionClosed:
            pass

    async def _read(self):
        try:
            async for data in self.ws:
                for message in parse(data):
                    await self._dispatch(message)
        finally:
            for future in (*self._pending.values(), *self._syncs.values()):
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))

    async def _dispatch(self, message):
        command, target = message.command, message.target
        if command == "RES" or (command == "PUB" and target == "ERROR"):
            answer = self._pending.get(message.header("ReqID"))
            if answer is not None and not answer.done():
                if command == "RES":
                    answer.set_result(message)
                else:
                    answer.set_exception(RequestError(message.header("Code"), message.body))
            elif command == "PUB":
                print(f"middleman error: {message.header('Code')}: {message.body}", file=sys.stderr)
            return
        if command == "PUB" and target == f"MSG:{self.cid}" and message.body in self._syncs:
            if message.header("Cid") == self.cid:
                self._syncs[message.body].set_result(None)
                return
        if command == "REQ":
            # Each request runs as its own task, so a slow answer does not hold up the rest.
            task = asyncio.get_running_loop().create_task(self._answer(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if command == "PUB" and target in self._publish_handlers:
            result = self._publish_handlers[target](message)
            if inspect.isawaitable(result):
                await result

    async def _answer(self, request):
        headers = []
        try:
            handler = self._request_handlers.get(request.target)
            if handler is None:
                raise LookupError(f"no handler for REQ {request.target}")
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, tuple):
                headers, body = result
                headers = list(headers)
            else:
                body = "" if result is None else str(result)
        except Exception as e:  # the requester gets an answer either way
            headers, body = [("Error", type(e).__name__)], str(e)
        # The broker routes the RES by `Rid` and gives the requester its `ReqID` back itself.
        rid = request.header("Rid")
        await self.send(encode("RES", request.target, [*headers, ("Rid", rid)], body),
                        binary=request.binary)


# The example service ---------------------------------------------------------------------


async def run_service(url, key):
    mm = await Middleman.connect(url, key)

    def echo(request):
        return request.body.upper()

    def chat(message):
        print(f"chat from {message.header('Cid')}: {message.body!r}", flush=True)

    mm.on_request("Echo", echo)
    mm.on_publish("Chat", chat)
    await mm.grant(publish=["Chat"], subscribe=["Chat"], request=["Echo"])
    await mm.subscribe("Chat")
    await mm.sync()
    print(f"ready {mm.cid}", flush=True)
    await mm.wait_closed()


def main():
    parser = argparse.ArgumentParser(description="The example Echo/Chat middleman service.")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/", help="broker WebSocket URL")
    parser.add_argument("--key", default="xyzzy", help="service key")
    args = parser.parse_args()
    try:
        asyncio.run(run_service(args.url, args.key))
    except KeyboardInterrupt:
        pass
    except (OSError, websockets.WebSocketException, ProtocolError) as e:
        sys.exit(f"service: {e}")


if __name__ == "__main__":
    main()

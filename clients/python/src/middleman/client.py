"""The asyncio middleman client: one logged-in WebSocket connection and everything done on it.

What it is: `connect()` and `Client` (publish, subscribe, request, and the service side:
grants, `serve`, `set_uid`), with optional reconnection.

What it is not: a codec (see `codec`) or a broker; it adds nothing to the wire beyond
docs/PROTOCOL.md, except the barrier below.

Invariants:
- Errors reach the call that caused them. Requests carry a `ReqID`, and the broker puts it on
  their errors. Commands without an id (`PUB`, `SUB`, `EPUB`, `ESUB`, `EREQ`, `INT UID`) are
  followed by a *barrier*: a `SYNC <n>` message in a frame of its own, a command the broker
  does not know, which it answers with `unknown-command` "Unknown command SYNC <n>". The
  broker handles a connection's messages in order and answers in that order, so an error that
  arrives before barrier n and after barrier n-1 belongs to a command sent between them. It is
  matched to the oldest waiting command whose word and topic end the error text (every
  error text but `malformed` ends with them), a `malformed` one to the oldest waiting command.
  When barrier n comes back, every command sent before it has been handled, and control
  commands are in effect on every shard (docs/PROTOCOL.md §4). `INT UID` is the exception:
  the broker carries it out on the shard of the connection it names, so its barrier is a REQ
  that travels the same way (see `_confirmed`), and only that REQ's answer completes it.
- `self._barriers` holds only commands someone awaits, in the order they went on the wire
  (appended and sent under `self._send_lock`).
- When the connection ends, every call in flight fails with `ConnectionLost`; nothing waits
  for an answer that cannot come.
- Every queue is bounded: a subscription keeps at most `max_queue` unread messages and drops
  newer ones (counted in `Subscription.dropped`); at most `max_handlers` requests are handled
  at once, after which the client stops reading until one finishes (the broker then holds or
  refuses further messages as its slow-consumer policy says).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import random
from dataclasses import dataclass
from types import TracebackType
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Generator,
    List,
    Optional,
    Set,
    Tuple,
    Type,
    Union,
)

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from .codec import Body, Headers, Message, ProtocolError, decode, encode
from .errors import (
    ClientClosed,
    ConnectionLost,
    LoginRefused,
    Malformed,
    MiddlemanError,
    Timeout,
    error_from_wire,
)

log = logging.getLogger("middleman")

#: The command word of the barrier (an unknown command on purpose; see the module docstring).
SYNC = "SYNC"


@dataclass(frozen=True)
class Reply:
    """What a `serve` handler may return to answer with headers as well as a body."""

    body: Body = ""
    headers: Headers = ()


HandlerResult = Union[Body, Reply, None]
Handler = Callable[[Message], Union[HandlerResult, Awaitable[HandlerResult]]]
ErrorCallback = Callable[[MiddlemanError], None]


class _End:
    """The marker a subscription's queue ends with."""

    def __init__(self, error: Optional[BaseException]) -> None:
        self.error = error


class Subscription:
    """An async iterator of the messages published to one topic (from `Client.subscribe`).

    It ends (StopAsyncIteration) after `unsubscribe()` or `Client.close()`, and raises
    `ConnectionLost` if the connection dropped and the client does not reconnect. With
    `reconnect=True` it lives on across reconnections.
    """

    def __init__(self, client: Client, topic: str, max_queue: int, private: bool = False) -> None:
        self.topic = topic
        #: Messages dropped because `max_queue` were unread.
        self.dropped = 0
        self._client = client
        self._private = private
        self._max = max_queue
        self._queue: asyncio.Queue[Union[Message, _End]] = asyncio.Queue()
        self._ended = False

    def _deliver(self, message: Message) -> None:
        if self._ended:
            return
        if self._queue.qsize() >= self._max:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("subscription %s: %d messages dropped (max_queue %d unread)",
                            self.topic, self.dropped, self._max)
            return
        self._queue.put_nowait(message)

    def _finish(self, error: Optional[BaseException]) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_End(error))

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # later calls end the same way
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def get(self, timeout: Optional[float] = None) -> Message:
        """The next message; raises `asyncio.TimeoutError` after `timeout` seconds, and
        `StopAsyncIteration` if the subscription has ended."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def unsubscribe(self) -> None:
        """Ends this iterator; the last one for a topic also sends `UNS`."""
        await self._client._drop_subscription(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unsubscribe()


class _Waiting:
    """A command waiting for its barrier."""

    __slots__ = ("command", "topic", "token", "future", "error", "remote")

    def __init__(self, command: str, topic: str, token: str, future: asyncio.Future[None],
                 remote: bool = False) -> None:
        self.remote = remote
        self.command = command
        self.topic = topic
        self.token = token
        self.future = future
        self.error: Optional[MiddlemanError] = None


_CID_DIGITS = "0123456789abcdefghijklmnopqrstuv"


def _impossible_neighbour(cid: str) -> Optional[str]:
    """A cid on the same shard as `cid` whose sequence number the broker never reaches
    (2^52 - 1; docs/ARCHITECTURE.md, src/ids.rs), or None if `cid` is not a cid at all."""
    if len(cid) != 20 or any(c not in _CID_DIGITS for c in cid):
        return None
    bits = 0
    for c in cid:
        bits = bits << 5 | _CID_DIGITS.index(c)
    bits |= (1 << 52) - 1
    return "".join(_CID_DIGITS[(bits >> (5 * i)) & 31] for i in reversed(range(20)))


class Client:
    """One connection to a middleman broker. Create it with `await connect(url, key)`."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        reconnect: bool = False,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_queue: int = 1000,
        max_handlers: int = 64,
        max_size: Optional[int] = 16 * 2**20,
        login_timeout: float = 10.0,
        on_error: Optional[ErrorCallback] = None,
        **ws_options: Any,
    ) -> None:
        self.url = url
        #: This connection's id; a new one after each reconnection.
        self.cid = ""
        #: How many times the client has logged in again after losing the connection.
        self.reconnects = 0
        self._key = key
        self._reconnect = reconnect
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._max_queue = max_queue
        self._max_size = max_size
        self._login_timeout = login_timeout
        self._ws_options = ws_options
        self._on_error = on_error
        self._ws: Optional[ClientConnection] = None
        self._generation = 0
        self._ids = itertools.count(1)
        self._send_lock = asyncio.Lock()
        self._barriers: Deque[_Waiting] = collections.deque()
        self._requests: Dict[str, asyncio.Future[Message]] = {}
        self._subs: Dict[str, List[Subscription]] = {}
        self._inboxes: List[Subscription] = []
        # Grants and registrations in the order they were made, replayed after a reconnection.
        self._controls: Dict[Tuple[str, str], None] = {}
        self._handlers: Dict[str, Handler] = {}
        self._slots = asyncio.Semaphore(max_handlers)
        self._tasks: Set[asyncio.Task[None]] = set()
        self._ready = asyncio.Event()
        self._closing = False
        self._ended: Optional[ConnectionLost] = None
        self._reader: Optional[asyncio.Task[None]] = None

    # Connection ---------------------------------------------------------------------------

    async def _login(self) -> Tuple[ClientConnection, str]:
        # No compression (the broker never negotiates it) and no proxy: the broker is
        # addressed directly.
        options: Dict[str, Any] = {"compression": None, "max_size": self._max_size, "proxy": None}
        options.update(self._ws_options)
        ws = await ws_connect(self.url, **options)
        try:
            await ws.send(self._key)
            ok = await asyncio.wait_for(ws.recv(), self._login_timeout)
            if ok != "MM OK":
                raise LoginRefused(f"expected 'MM OK' after the key, got {ok!r}")
            cid = await asyncio.wait_for(ws.recv(), self._login_timeout)
            if not isinstance(cid, str):
                raise LoginRefused(f"expected the connection id after 'MM OK', got {cid!r}")
        except ConnectionClosed as e:
            reason = e.rcvd.reason if e.rcvd else "closed without a close frame"
            await ws.close()
            raise LoginRefused(f"login refused: {reason}") from None
        except asyncio.TimeoutError:
            await ws.close()
            raise LoginRefused(f"no answer to the key within {self._login_timeout} s") from None
        except BaseException:
            await ws.close()
            raise
        return ws, cid

    async def _start(self) -> None:
        self._ws, self.cid = await self._login()
        self._ready.set()
        self._reader = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                ws = self._ws
                assert ws is not None  # set before the reader starts and by every reconnection
                lost = await self._read(ws)
                self._ws = None
                self._ready.clear()
                self._generation += 1
                self._fail_in_flight(ClientClosed("the client was closed") if self._closing else lost)
                if self._closing or not self._reconnect:
                    self._ended = None if self._closing else lost
                    return
                log.warning("%s; reconnecting to %s", lost, self.url)
                if not await self._reconnect_loop():
                    return
        finally:
            self._ws = None
            self._fail_in_flight(ClientClosed("the client was closed") if self._closing
                                 else self._ended or ConnectionLost("the client stopped"))
            for subs in [*self._subs.values(), self._inboxes]:
                for sub in subs:
                    sub._finish(None if self._closing else self._ended)
            for task in list(self._tasks):
                task.cancel()

    async def _read(self, ws: ClientConnection) -> ConnectionLost:
        """Reads until the connection ends; returns the error that in-flight calls get."""
        try:
            async for frame in ws:
                await self._handle_frame(frame)
        except ConnectionClosed:
            pass
        except ProtocolError as e:
            log.error("the broker sent something that is not a middleman message: %s", e)
            await ws.close(1002, "not a middleman message")
        code, reason = ws.close_code, ws.close_reason
        how = f"close {code} {reason!r}" if code is not None else "no close frame"
        return ConnectionLost(f"the connection to {self.url} ended ({how})")

    async def _reconnect_loop(self) -> bool:
        delay = self._backoff
        while not self._closing:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                ws, cid = await self._login()
            except (OSError, WebSocketException, MiddlemanError, asyncio.TimeoutError) as e:
                log.info("reconnect to %s failed: %s", self.url, e)
                delay = min(delay * 2, self._max_backoff)
                continue
            if self._closing:
                await ws.close()
                return False
            self._ws, self.cid = ws, cid
            self.reconnects += 1
            log.info("reconnected to %s as %s", self.url, cid)
            self._spawn(self._restore(self._generation))
            return True
        return False

    async def _restore(self, generation: int) -> None:
        """Replays grants, registrations and subscriptions on a new connection, retrying
        what the broker refuses (a restarted broker has forgotten the grants a client's
        subscriptions need until their service has made them again)."""
        delay = self._backoff
        while generation == self._generation and not self._closing:
            wanted = list(self._controls) + [("SUB", topic) for topic in self._subs]
            results = await asyncio.gather(
                *(self._confirmed(cmd, topic, encode(cmd, topic)) for cmd, topic in wanted),
                return_exceptions=True,
            )
            if any(isinstance(r, ConnectionLost) for r in results):
                return
            failed = [(w, r) for w, r in zip(wanted, results) if isinstance(r, BaseException)]
            if not failed:
                self._ready.set()
                return
            for (cmd, topic), err in failed:
                log.warning("after reconnecting, %s %s failed (%s); retrying", cmd, topic, err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    def _fail_in_flight(self, error: ConnectionLost) -> None:
        for future in self._requests.values():
            if not future.done():
                future.set_exception(error)
        self._requests.clear()
        while self._barriers:
            waiting = self._barriers.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(error)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def connected(self) -> bool:
        """Whether the connection is up (it may still be restoring after a reconnection)."""
        return self._ws is not None

    async def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Returns once connected with every grant, registration and subscription in effect
        (after a reconnection, once they have all been made again)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def wait_closed(self) -> None:
        """Returns when the client has stopped; raises `ConnectionLost` if it stopped because
        the connection dropped (and it does not reconnect)."""
        if self._reader is not None:
            await asyncio.shield(self._reader)
        if self._ended is not None:
            raise self._ended

    async def close(self) -> None:
        """Closes the connection (close frame 1000). Calls in flight fail with `ClientClosed`;
        subscriptions end."""
        self._closing = True
        # Handlers first: one that is running holds a slot the reader may be waiting for.
        for task in list(self._tasks):
            task.cancel()
        ws = self._ws
        if ws is not None:
            await ws.close()
        if self._reader is not None and not self._reader.done():
            done, _ = await asyncio.wait({self._reader}, timeout=5)
            if not done:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Sending ------------------------------------------------------------------------------

    def _require(self) -> ClientConnection:
        if self._closing:
            raise ClientClosed("the client was closed")
        if self._ws is None:
            raise self._ended or ConnectionLost(f"not connected to {self.url} (reconnecting)")
        return self._ws

    async def _send(self, data: bytes, text: bool) -> None:
        ws = self._require()
        try:
            async with self._send_lock:
                await ws.send(data, text=text)
        except ConnectionClosed:
            raise ConnectionLost(f"the connection to {self.url} ended") from None

    async def _confirmed(self, command: str, topic: str, data: bytes, text: bool = True,
                         via: Optional[str] = None) -> None:
        """Sends one command and a barrier behind it; returns when the barrier comes back,
        raising the error the broker gave the command, if any.

        `via` is for `INT UID`, which the broker carries out on the shard of the connection
        it names, after the barrier of the sender's shard has passed: the barrier then is a
        REQ to the private topic of a connection that cannot exist on that shard, which
        follows the INT UID there and comes back as `no-responder`."""
        ws = self._require()
        token = str(next(self._ids))
        sentinel = _impossible_neighbour(via) if via is not None else None
        if sentinel is None:
            barrier = encode(SYNC, token)
        else:
            barrier = encode("REQ", f"MSG:{sentinel}", [("ReqID", f"{SYNC}{token}")])
        waiting = _Waiting(command, topic, token, asyncio.get_running_loop().create_future(),
                           remote=sentinel is not None)
        try:
            async with self._send_lock:
                self._barriers.append(waiting)
                await ws.send(data, text=text)
                await ws.send(barrier, text=True)
        except ConnectionClosed:
            # The reader may have failed the waiting calls already; this one must not stay
            # behind to take an error of the next connection.
            if waiting in self._barriers:
                self._barriers.remove(waiting)
            raise ConnectionLost(f"the connection to {self.url} ended") from None
        await waiting.future

    async def publish(self, topic: str, body: Body = "", headers: Headers = (), *,
                      confirm: bool = True) -> None:
        """`PUB topic`: a `str` body goes in a text frame, `bytes` in a binary one.

        With `confirm` (the default) it returns once the broker has handled the message and
        raises its error (`NotTrusted`, `Malformed`); with `confirm=False` it returns once the
        message is sent, and an error goes to `on_error`."""
        data = encode("PUB", topic, headers, body)
        if confirm:
            await self._confirmed("PUB", topic, data, isinstance(body, str))
        else:
            await self._send(data, isinstance(body, str))

    async def send_to(self, cid: str, body: Body = "", headers: Headers = (), *,
                      confirm: bool = True) -> None:
        """Publishes to the connection `cid` alone (its private topic `MSG:<cid>`)."""
        await self.publish(f"MSG:{cid}", body, headers, confirm=confirm)

    async def subscribe(self, topic: str, *, max_queue: Optional[int] = None) -> Subscription:
        """`SUB topic`; returns once the subscription is in effect (every later `PUB` from
        anyone reaches it), as an async iterator of `Message`. Raises `NotTrusted` (a client
        without the service's `enable_subscribe`) or `Limit`. `max_queue` overrides the
        client's bound on unread messages for this iterator."""
        self._require()
        # Registered before the SUB goes out: the reader may hand over messages for the topic
        # before this coroutine runs again after the barrier.
        sub = Subscription(self, topic, self._max_queue if max_queue is None else max_queue)
        self._subs.setdefault(topic, []).append(sub)
        try:
            await self._confirmed("SUB", topic, encode("SUB", topic))
        except BaseException:
            subs = self._subs.get(topic, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._subs.pop(topic, None)
            raise
        return sub

    def inbox(self) -> Subscription:
        """The messages sent to this connection (`MSG:<cid>`, which the broker subscribes
        every connection to), following the cid across reconnections. Sends nothing."""
        sub = Subscription(self, "MSG:", self._max_queue, private=True)
        self._inboxes.append(sub)
        if self._reader is not None and self._reader.done():
            sub._finish(self._ended)
        return sub

    async def unsubscribe(self, topic: str) -> None:
        """`UNS topic`, and ends every `Subscription` of this client to it."""
        subs = self._subs.pop(topic, [])
        for sub in subs:
            sub._finish(None)
        if self._ws is not None:
            await self._send(encode("UNS", topic), True)

    async def _drop_subscription(self, sub: Subscription) -> None:
        sub._finish(None)
        if sub._private:
            if sub in self._inboxes:
                self._inboxes.remove(sub)
            return
        subs = self._subs.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)
            if not subs:
                await self.unsubscribe(sub.topic)

    async def request(self, topic: str, body: Body = "", headers: Headers = (), *,
                      timeout: Optional[float] = 60.0) -> Message:
        """`REQ topic` with a fresh `ReqID`; returns the response (`RES`) message.

        Raises the broker's error for it (`NoResponder`, `ResponderLost`, `Timeout`,
        `NotTrusted`, `Limit`), `Timeout` if `timeout` seconds pass first, and
        `ConnectionLost` if the connection ends first."""
        req_id = f"py{next(self._ids)}"
        data = encode("REQ", topic, [("ReqID", req_id), *headers], body)
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._requests[req_id] = answer
        try:
            await self._send(data, isinstance(body, str))
            done, _ = await asyncio.wait({answer}, timeout=timeout)
            if not done:
                raise Timeout(f"no answer to REQ {topic} within {timeout} s (client side)")
            return answer.result()
        finally:
            self._requests.pop(req_id, None)

    async def command(self, command: str, target: str, headers: Headers = (),
                      body: Body = "") -> None:
        """Sends any command, confirmed like `publish`: the escape hatch for what the API
        does not cover (the broker answers words it does not know with `UnknownCommand`)."""
        data = encode(command, target, headers, body)
        await self._confirmed(command, target, data, isinstance(body, str))

    # Services -----------------------------------------------------------------------------

    async def _control(self, command: str, topic: str) -> None:
        await self._confirmed(command, topic, encode(command, topic))
        self._controls[(command, topic)] = None

    async def enable_publish(self, topic: str) -> None:
        """Service only: `EPUB topic`, clients may publish to it. Raises `NotTrusted` for a
        client key."""
        await self._control("EPUB", topic)

    async def enable_subscribe(self, topic: str) -> None:
        """Service only: `ESUB topic`, clients may subscribe to it."""
        await self._control("ESUB", topic)

    async def serve(self, topic: str, handler: Handler) -> None:
        """Service only: answers every `REQ topic` with `handler(message)`.

        Sends `EREQ topic` (clients may request it, and this connection becomes one of its
        responders) and returns once the broker may route requests here. The handler (a
        function or a coroutine function) returns the response body (`str`, `bytes`), a
        `Reply(body, headers)`, or None for an empty body; the response goes out as `RES`
        with the request's `Rid`. If it raises, the response carries an `Error` header (the
        exception's class name) and the exception's text, so the requester is not left
        waiting."""
        self._handlers[topic] = handler
        try:
            await self._control("EREQ", topic)
        except BaseException:
            self._handlers.pop(topic, None)
            raise

    async def set_uid(self, cid: str, uid: str) -> None:
        """Service only: `INT UID`, later messages from connection `cid` carry `Uid: uid`.
        Raises `NoConnection` if the broker knows no such connection."""
        data = encode("INT", "UID", [("forcid", cid), ("setuid", uid)])
        await self._confirmed("INT", "UID", data, via=cid)

    # Receiving ----------------------------------------------------------------------------

    async def _handle_frame(self, frame: Union[str, bytes]) -> None:
        for message in decode(frame):
            command = message.command
            if command == "PUB":
                # The broker's own errors carry no Cid; a service's PUB to `ERROR` does.
                if message.topic == "ERROR" and message.header("Cid") is None:
                    self._broker_error(message)
                    continue
                for sub in self._subs.get(message.topic, ()):
                    sub._deliver(message)
                if message.topic == f"MSG:{self.cid}":
                    for sub in self._inboxes:
                        sub._deliver(message)
            elif command == "RES":
                answer = self._requests.pop(message.header("ReqID") or "", None)
                if answer is not None and not answer.done():
                    answer.set_result(message)
            elif command == "REQ":
                await self._slots.acquire()
                self._spawn(self._answer(message, self._generation))
            else:
                log.warning("ignored a %s message from the broker", command)

    def _broker_error(self, message: Message) -> None:
        error = error_from_wire(message)
        req_id = message.header("ReqID")
        if req_id is not None and req_id.startswith(SYNC):
            self._barrier_done(req_id[len(SYNC):])
            return
        if req_id is not None:
            answer = self._requests.pop(req_id, None)
            if answer is not None and not answer.done():
                answer.set_exception(error)
            else:
                self._report(error)
            return
        prefix = f"Unknown command {SYNC} "
        if error.code == "unknown-command" and error.text.startswith(prefix):
            self._barrier_done(error.text[len(prefix):])
            return
        for waiting in self._barriers:
            if waiting.error is None and (
                (isinstance(error, Malformed) and not waiting.remote)
                or error.text.endswith(f" {waiting.command} {waiting.topic}")
            ):
                waiting.error = error
                return
        self._report(error)

    def _barrier_done(self, token: str) -> None:
        """Barrier `token` is back: its command, and every command before it whose barrier
        took the same (local) path, has been handled."""
        mine = next((w for w in self._barriers if w.token == token), None)
        if mine is None:
            return
        done = [mine] if mine.remote else []
        if not mine.remote:
            for waiting in self._barriers:
                if not waiting.remote:
                    done.append(waiting)
                if waiting is mine:
                    break
        for waiting in done:
            self._barriers.remove(waiting)
            if not waiting.future.done():
                if waiting.error is not None:
                    waiting.future.set_exception(waiting.error)
                else:
                    waiting.future.set_result(None)

    def _report(self, error: MiddlemanError) -> None:
        if self._on_error is not None:
            self._on_error(error)
        else:
            log.warning("middleman error nobody waited for: %s", error)

    async def _answer(self, request: Message, generation: int) -> None:
        try:
            headers: Headers = ()
            body: Body = ""
            handler = self._handlers.get(request.topic)
            try:
                if handler is None:
                    raise LookupError(f"no handler for REQ {request.topic}")
                result = handler(request)
                if inspect.isawaitable(result):
                    result = await result
                if isinstance(result, Reply):
                    headers, body = result.headers, result.body
                elif result is not None:
                    body = result
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the requester gets an answer either way
                log.exception("the handler for REQ %s raised", request.topic)
                headers, body = [("Error", type(e).__name__)], str(e)
            if generation != self._generation:
                return  # the request came on a connection that has ended
            rid = request.header("Rid") or ""
            data = encode("RES", request.topic, [*headers, ("Rid", rid)], body)
            try:
                await self._send(data, isinstance(body, str))
            except ConnectionLost:
                pass  # the requester gets `responder-lost` from the broker
        finally:
            self._slots.release()


class connect:
    """`await connect(url, key)` logs in and returns a `Client`; `async with connect(url,
    key) as client:` also closes it at the end.

    Raises `LoginRefused` for a key the broker refuses, `OSError` or a `websockets`
    exception if the broker cannot be reached. Keyword options are `Client`'s: `reconnect`
    (off by default), `backoff`/`max_backoff` (seconds, doubling), `max_queue`,
    `max_handlers`, `max_size`, `login_timeout`, `on_error`, and anything else goes to
    `websockets.connect`.
    """

    def __init__(self, url: str, key: str, **options: Any) -> None:
        self._client = Client(url, key, **options)

    def __await__(self) -> Generator[Any, None, Client]:
        return self._open().__await__()

    async def _open(self) -> Client:
        await self._client._start()
        return self._client

    async def __aenter__(self) -> Client:
        return await self._open()

    async def __aexit__(self, exc_type: Optional[Type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        await self._client.close()


__all__ = ["Client", "Handler", "Reply", "Subscription", "connect", "SYNC"]

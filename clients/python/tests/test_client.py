"""Checks the client against a real two-shard broker: publish/subscribe, requests and
services, private messages, uids, ping, and that every error the broker can give is raised
as its class from the call that caused it.

How: brokers started by the fixtures in conftest.py; each test runs one asyncio scenario."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, List, Tuple

import pytest

import middleman
from middleman import Message, Reply

from conftest import CLIENT_KEY, SERVICE_KEY, Broker

WAIT = 10.0  # seconds any single expected event may take


def run(scenario: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 60))


async def open_pair(url: str, topics: Tuple[str, ...] = ()) -> Tuple[middleman.Client, middleman.Client]:
    """A service that granted clients PUB/SUB on `topics`, and a client."""
    service = await middleman.connect(url, SERVICE_KEY)
    for topic in topics:
        await service.enable_publish(topic)
        await service.enable_subscribe(topic)
    client = await middleman.connect(url, CLIENT_KEY)
    return service, client


def test_publish_reaches_subscribers_with_headers_cid_and_body_type(broker: Broker) -> None:
    async def scenario() -> None:
        service, client = await open_pair(broker.url, ("ps.news",))
        async with service, client:
            assert service.cid and client.cid and service.cid != client.cid
            mine = await client.subscribe("ps.news")
            theirs = await service.subscribe("ps.news")
            await client.publish("ps.news", "hello\n.dots", headers=[("X-One", "1"), ("x-two", "a b")])
            await client.publish("ps.news", b"\x00\xffbinary")
            for sub in (mine, theirs):
                text = await sub.get(WAIT)
                assert text.topic == "ps.news" and text.body == "hello\n.dots"
                assert text.headers[:2] == (("X-One", "1"), ("x-two", "a b"))
                assert text.cid == client.cid and text.uid == ""
                binary = await sub.get(WAIT)
                assert binary.body == b"\x00\xffbinary" and binary.binary

            # After unsubscribe the iterator ends, and nothing more arrives for that topic.
            await client.unsubscribe("ps.news")
            assert [m async for m in mine] == []
            await service.publish("ps.news", "after")
            assert (await theirs.get(WAIT)).body == "after"

    run(scenario())


def test_request_is_answered_by_serve_and_matched_by_reqid(broker: Broker) -> None:
    async def scenario() -> None:
        service, client = await open_pair(broker.url)
        async with service, client:
            async def echo(request: Message) -> Reply:
                await asyncio.sleep(0.01 * len(request.text) % 0.05)  # answers out of order
                return Reply(request.text.upper(), [("Len", str(len(request.text)))])

            await service.serve("rq.echo", echo)
            bodies = [f"m{i}" * (i % 4 + 1) for i in range(20)]
            answers = await asyncio.gather(*(client.request("rq.echo", b) for b in bodies))
            assert [a.body for a in answers] == [b.upper() for b in bodies]
            assert all(a.command == "RES" and a.cid == service.cid for a in answers)
            assert [a.header("Len") for a in answers] == [str(len(b)) for b in bodies]

            # Binary in, binary out; a handler that raises still answers.
            await service.serve("rq.bytes", lambda m: bytes(reversed(m.body if isinstance(m.body, bytes) else b"")))
            assert (await client.request("rq.bytes", b"\x01\x02")).body == b"\x02\x01"

            def fail(m: Message) -> str:
                raise ValueError("no good")

            await service.serve("rq.fail", fail)
            failed = await client.request("rq.fail", "x")
            assert failed.header("Error") == "ValueError" and failed.body == "no good"

    run(scenario())


def test_send_to_inbox_and_set_uid(broker: Broker) -> None:
    async def scenario() -> None:
        service, client = await open_pair(broker.url, ("uid.t",))
        async with service, client:
            inbox = client.inbox()
            await service.send_to(client.cid, "just for you", headers=[("K", "v")])
            direct = await inbox.get(WAIT)
            assert direct.topic == f"MSG:{client.cid}" and direct.body == "just for you"
            assert direct.cid == service.cid

            await service.set_uid(client.cid, "user42")
            seen = await service.subscribe("uid.t")
            await client.publish("uid.t", "who am I")
            assert (await seen.get(WAIT)).uid == "user42"

    run(scenario())


def test_ping_from_the_broker_is_answered(start_broker: Callable[..., Broker]) -> None:
    """The broker closes a connection that does not answer its pings within an interval."""
    broker = start_broker("--ping-interval", "1s")

    async def scenario() -> None:
        async with middleman.connect(broker.url, SERVICE_KEY, ping_interval=None) as service:
            await service.serve("ping.echo", lambda m: m.body)
            # Idle for several ping intervals: only pongs keep the connection alive.
            await asyncio.sleep(3.5)
            assert service.connected
            assert (await service.request("ping.echo", "still here")).body == "still here"

    run(scenario())


# Errors --------------------------------------------------------------------------------------


def test_not_trusted_comes_from_each_call_that_caused_it(broker: Broker) -> None:
    async def scenario() -> None:
        service, client = await open_pair(broker.url)
        async with service, client:
            await service.serve("nt.served", lambda m: "x")
            calls: List[Tuple[str, Callable[[], Awaitable[Any]]]] = [
                ("Not trusted PUB nt.a", lambda: client.publish("nt.a", "x")),
                ("Not trusted: SUB nt.b", lambda: client.subscribe("nt.b")),
                ("Not trusted REQ nt.c", lambda: client.request("nt.c", "x")),
                ("Not trusted EPUB nt.d", lambda: client.enable_publish("nt.d")),
                ("Not trusted ESUB nt.e", lambda: client.enable_subscribe("nt.e")),
                ("Not trusted EREQ nt.f", lambda: client.serve("nt.f", lambda m: "")),
                ("Not trusted INT UID", lambda: client.set_uid(service.cid, "u")),
            ]
            for text, call in calls:
                with pytest.raises(middleman.NotTrusted) as caught:
                    await call()
                assert caught.value.text == text and caught.value.code == "not-trusted"

            # Many at once: each one gets its own error, the allowed ones none.
            await service.enable_publish("nt.ok")
            results = await asyncio.gather(
                *(client.publish(f"nt.x{i}" if i % 2 else "nt.ok", "x") for i in range(10)),
                return_exceptions=True,
            )
            for i, result in enumerate(results):
                if i % 2:
                    assert isinstance(result, middleman.NotTrusted) and result.text.endswith(f"nt.x{i}")
                else:
                    assert result is None
            # The REQ grant belongs to serve, so the client may request it.
            assert (await client.request("nt.served", "")).body == "x"

    run(scenario())


def test_request_errors_come_from_their_request(broker: Broker) -> None:
    """`broker` runs with `--request-timeout 2s`."""

    async def scenario() -> None:
        service, client = await open_pair(broker.url)
        responder = await middleman.connect(broker.url, SERVICE_KEY)
        reported: List[middleman.MiddlemanError] = []
        heard = asyncio.Event()

        def on_error(error: middleman.MiddlemanError) -> None:
            reported.append(error)
            heard.set()

        late = await middleman.connect(broker.url, SERVICE_KEY, on_error=on_error)
        async with service, client, late:
            with pytest.raises(middleman.NoResponder, match="No responder for REQ re.none"):
                await service.request("re.none", "x")

            arrived = asyncio.Event()

            async def never(m: Message) -> str:
                arrived.set()
                await asyncio.Event().wait()
                return ""

            await responder.serve("re.lost", never)
            pending = asyncio.ensure_future(client.request("re.lost", "x"))
            await asyncio.wait_for(arrived.wait(), WAIT)
            await responder.close()
            with pytest.raises(middleman.ResponderLost, match="Responder lost for REQ re.lost"):
                await pending

            async def slow(m: Message) -> str:
                await asyncio.sleep(3.5)  # past the broker's 2 s request timeout
                return "too late"

            await late.serve("re.slow", slow)
            with pytest.raises(middleman.Timeout, match="Request timed out REQ re.slow"):
                await client.request("re.slow", "x")
            # The late answer is refused, and the responder hears of it.
            await asyncio.wait_for(heard.wait(), WAIT)
            assert [type(e) for e in reported] == [middleman.NoRequest]
            assert reported[0].text == "No client for request ID  RES re.slow"

            with pytest.raises(middleman.Timeout, match="client side"):
                await client.request("re.slow", "x", timeout=0.2)

    run(scenario())


def test_no_connection_unknown_command_and_login_refused(broker: Broker) -> None:
    async def scenario() -> None:
        async with middleman.connect(broker.url, SERVICE_KEY) as service:
            # A cid on each of the two shards (the 17th bit from the top of the 100 is the
            # shard's), one that is not a cid at all, and the real one, which works.
            digits = "0123456789abcdefghijklmnopqrstuv"
            bits = int("".join(f"{digits.index(c):05b}" for c in service.cid), 2)
            for shard in (0, 1):
                fake = (bits & ~(0xFFFF << 52)) | shard << 52 | 12345
                cid = "".join(digits[(fake >> (5 * i)) & 31] for i in reversed(range(20)))
                with pytest.raises(middleman.NoConnection, match="No client for INT UID"):
                    await service.set_uid(cid, "u")
            with pytest.raises(middleman.NoConnection, match="No client for INT UID"):
                await service.set_uid("not a cid", "u")
            await service.set_uid(service.cid, "me")
            with pytest.raises(middleman.UnknownCommand, match="Unknown command FROB a topic"):
                await service.command("FROB", "a topic")
            with pytest.raises(middleman.UnknownCommand, match="Unknown command INT X"):
                await service.command("INT", "X")
        with pytest.raises(middleman.LoginRefused, match="bad key"):
            await middleman.connect(broker.url, "not a key")

    run(scenario())


def test_malformed_and_limits(start_broker: Callable[..., Broker]) -> None:
    broker = start_broker(
        "--max-topic-bytes", "24", "--max-headers", "3",
        "--max-subscriptions-per-connection", "2", "--max-pending-requests", "1",
    )

    async def scenario() -> None:
        service, client = await open_pair(broker.url)
        async with service, client:
            with pytest.raises(middleman.Malformed, match="target too long"):
                await service.publish("t" * 25, "x")
            with pytest.raises(middleman.Malformed, match="too many headers"):
                await service.publish("t", "x", headers=[("A", "1"), ("B", "2"), ("C", "3"), ("D", "4")])
            with pytest.raises(middleman.Malformed, match="INT UID needs forcid and setuid"):
                await service.command("INT", "UID", [("forcid", service.cid)])

            # MSG:<cid> is the first of the two subscriptions.
            await service.subscribe("lim.one")
            with pytest.raises(middleman.Limit, match="Limit reached: subscriptions SUB lim.two"):
                await service.subscribe("lim.two")

            release, arrived = asyncio.Event(), asyncio.Event()

            async def hold(m: Message) -> str:
                arrived.set()
                await release.wait()
                return "done"

            await service.serve("lim.req", hold)
            first = asyncio.ensure_future(client.request("lim.req", "1"))
            await asyncio.wait_for(arrived.wait(), WAIT)
            with pytest.raises(middleman.Limit, match="pending requests REQ lim.req"):
                await client.request("lim.req", "2")
            release.set()
            assert (await first).body == "done"

    run(scenario())


def test_calls_in_flight_fail_when_the_broker_dies(start_broker: Callable[..., Broker]) -> None:
    broker = start_broker()

    async def scenario() -> None:
        service, client = await open_pair(broker.url, ("die.t",))
        arrived = asyncio.Event()

        async def never(m: Message) -> str:
            arrived.set()
            await asyncio.Event().wait()
            return ""

        await service.serve("die.req", never)
        sub = await client.subscribe("die.t")
        pending = asyncio.ensure_future(client.request("die.req", "x"))
        await asyncio.wait_for(arrived.wait(), WAIT)
        broker.stop()
        with pytest.raises(middleman.ConnectionLost):
            await pending
        with pytest.raises(middleman.ConnectionLost):
            await sub.get(WAIT)
        with pytest.raises(middleman.ConnectionLost):
            await client.publish("die.t", "x")
        with pytest.raises(middleman.ConnectionLost):
            await client.wait_closed()
        await client.close()
        await service.close()
        with pytest.raises(middleman.ClientClosed):
            await client.publish("die.t", "x")

    run(scenario())


def test_unconfirmed_errors_go_to_on_error_and_full_queues_drop(broker: Broker) -> None:
    async def scenario() -> None:
        reported: List[middleman.MiddlemanError] = []
        service = await middleman.connect(broker.url, SERVICE_KEY)
        client = await middleman.connect(broker.url, CLIENT_KEY, on_error=reported.append)
        async with service, client:
            await client.publish("oe.denied", "x", confirm=False)
            with pytest.raises(middleman.NotTrusted, match="SUB oe.barrier"):
                await client.subscribe("oe.barrier")  # its error comes after the PUB's
            assert [(type(e), e.text) for e in reported] == [(middleman.NotTrusted, "Not trusted PUB oe.denied")]

            # Two iterators of one topic on one connection get the same frames: once the big
            # one has all five, the small one has been offered all five and kept two.
            small = await service.subscribe("oe.q", max_queue=2)
            big = await service.subscribe("oe.q")
            for i in range(5):
                await service.publish("oe.q", str(i), confirm=False)
            assert [(await big.get(WAIT)).body for _ in range(5)] == ["0", "1", "2", "3", "4"]
            assert small.dropped == 3
            assert [(await small.get(WAIT)).body for _ in range(2)] == ["0", "1"]
            await small.unsubscribe()
            await service.publish("oe.q", "still subscribed")  # the big one keeps the SUB
            assert (await big.get(WAIT)).body == "still subscribed"

    run(scenario())


def test_a_broker_shutdown_ends_the_connection_with_going_away(start_broker: Callable[..., Broker]) -> None:
    broker = start_broker()

    async def scenario() -> None:
        client = await middleman.connect(broker.url, SERVICE_KEY)
        sub = await client.subscribe("bye.t")
        await asyncio.get_running_loop().run_in_executor(None, broker.terminate)
        with pytest.raises(middleman.ConnectionLost, match="close 1001 'going away'"):
            await sub.get(WAIT)
        await client.close()

    run(scenario())

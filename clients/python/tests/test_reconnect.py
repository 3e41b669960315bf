"""Checks reconnection: after the broker is killed and restarted on the same port, a client
and a service with `reconnect=True` log in again, re-grant, re-register and re-subscribe,
while calls that were in flight fail with `ConnectionLost` instead of hanging.

How: a broker from the `start_broker` fixture, killed with SIGKILL and started again on its
port; the scenario waits on the client's own events (`wait_ready`), never on a clock."""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest

import middleman
from middleman import Message

from conftest import CLIENT_KEY, SERVICE_KEY, Broker

WAIT = 20.0


def test_reconnect_after_a_broker_restart(start_broker: Callable[..., Broker]) -> None:
    broker = start_broker()

    async def scenario() -> None:
        options = {"reconnect": True, "backoff": 0.05, "max_backoff": 0.5}
        service = await middleman.connect(broker.url, SERVICE_KEY, **options)
        client = await middleman.connect(broker.url, CLIENT_KEY, **options)
        async with service, client:
            await service.enable_publish("rc.chat")
            await service.enable_subscribe("rc.chat")
            await service.serve("rc.echo", lambda m: m.text.upper())
            arrived = asyncio.Event()

            async def hold(m: Message) -> str:
                arrived.set()
                await asyncio.Event().wait()
                return ""

            await service.serve("rc.hold", hold)
            chat = await client.subscribe("rc.chat")
            heard = await service.subscribe("rc.chat")

            # One request in flight from each side, so both notice the drop before we wait.
            pending = [asyncio.ensure_future(c.request("rc.hold", "x")) for c in (client, service)]
            await asyncio.wait_for(arrived.wait(), WAIT)
            await asyncio.get_running_loop().run_in_executor(None, broker.restart)
            for p in pending:
                with pytest.raises(middleman.ConnectionLost):
                    await asyncio.wait_for(p, WAIT)

            await service.wait_ready(WAIT)
            await client.wait_ready(WAIT)  # its SUB rc.chat needed the service's ESUB again
            # A restarted broker may hand out the same cids again: count logins instead.
            assert (service.reconnects, client.reconnects) == (1, 1)

            assert (await client.request("rc.echo", "again")).body == "AGAIN"
            await service.publish("rc.chat", "after the restart")
            assert (await chat.get(WAIT)).body == "after the restart"
            await client.publish("rc.chat", "from the client")
            for sub in (chat, heard):
                message = await sub.get(WAIT)
                if message.body == "after the restart":  # the service's own, to itself
                    message = await sub.get(WAIT)
                assert message.body == "from the client" and message.cid == client.cid

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_without_reconnect_the_client_stops(start_broker: Callable[..., Broker]) -> None:
    broker = start_broker()

    async def scenario() -> None:
        client = await middleman.connect(broker.url, SERVICE_KEY)
        sub = await client.subscribe("nr.t")
        broker.restart()
        with pytest.raises(middleman.ConnectionLost):
            await sub.get(WAIT)
        with pytest.raises(middleman.ConnectionLost):
            await client.wait_closed()
        assert not client.connected
        await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))

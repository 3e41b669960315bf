"""Checks, for random bodies (dot lines, CR/LF mixes, binary) and headers, that what this
client encodes comes back byte-exact after the broker relayed it: as a PUB to a subscriber, as
a REQ to a service, and as that service's RES to the requester.

How: hypothesis drives one module-wide broker and three connections kept open across examples
on one event loop."""

from __future__ import annotations

import asyncio
from typing import Iterator, List, Tuple, Union

import pytest
from hypothesis import HealthCheck, given, settings

import middleman
from middleman import Message, Reply

from conftest import CLIENT_KEY, SERVICE_KEY, Broker
from strategies import BODY, HEADERS

WAIT = 10.0
Relay = Tuple[asyncio.AbstractEventLoop, middleman.Client, middleman.Client, middleman.Subscription]


@pytest.fixture(scope="module")
def relay(broker: Broker) -> Iterator[Relay]:
    loop = asyncio.new_event_loop()
    run = loop.run_until_complete
    service = run(middleman.connect(broker.url, SERVICE_KEY))
    responder = run(middleman.connect(broker.url, SERVICE_KEY))
    client = run(middleman.connect(broker.url, CLIENT_KEY))
    run(service.enable_subscribe("prop.pub"))

    def echo(request: Message) -> Reply:
        # The sender's headers come first, then the broker's Cid, Uid and Rid.
        return Reply(request.body, request.headers[:-3])

    run(responder.serve("prop.req", echo))
    sub = run(client.subscribe("prop.pub"))
    yield loop, service, client, sub
    for c in (service, responder, client):
        run(c.close())
    loop.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=HEADERS, body=BODY)
def test_the_broker_relays_bodies_and_headers_exactly(
    relay: Relay, headers: List[Tuple[str, str]], body: Union[str, bytes]
) -> None:
    loop, service, client, sub = relay

    async def once() -> None:
        await service.publish("prop.pub", body, headers=headers)
        got = await sub.get(WAIT)
        assert got.body == body and type(got.body) is type(body)
        assert list(got.headers) == [*headers, ("Cid", service.cid), ("Uid", "")]

        answer = await client.request("prop.req", body, headers=headers, timeout=WAIT)
        assert answer.body == body and type(answer.body) is type(body)
        assert list(answer.headers[: len(headers)]) == headers

    loop.run_until_complete(once())

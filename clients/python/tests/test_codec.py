"""Checks the codec without a broker: exact wire bytes for known messages, and that decode
undoes encode for any body, headers and frame type (hypothesis).

How: `middleman.encode`/`decode` called directly on bytes and strings."""

from __future__ import annotations

from typing import List, Tuple

import pytest
from hypothesis import given

from middleman import Message, ProtocolError, decode, encode
from middleman.codec import stuff, unstuff

from strategies import BODY, HEADERS


def test_encode_writes_crlf_and_dot_stuffs_the_body() -> None:
    wire = encode("PUB", "News", [("X-A", "1"), ("ReqID", "q")], ".lead\n.\nmid\n..two")
    assert wire == b"PUB News\r\nX-A: 1\r\nReqID: q\r\n\r\n..lead\n..\nmid\n...two\r\n.\r\n"


def test_encode_of_an_empty_body_has_no_body_lines() -> None:
    assert encode("SUB", "a b") == b"SUB a b\r\n\r\n.\r\n"


def test_body_line_ends_are_kept_exactly() -> None:
    body = "a\r\nb\nc\rd\r"
    wire = encode("PUB", "T", (), body)
    assert wire == b"PUB T\r\n\r\na\r\nb\nc\rd\r\r\n.\r\n"
    assert decode(wire.decode())[0].body == body


def test_decode_reads_every_message_of_a_frame_with_lf_or_crlf() -> None:
    frame = (
        "PUB A\nX: 1\n\nfirst\n.\n"
        "\r\n"  # blank lines between messages are allowed
        "RES B\r\nCid : c1 \r\nUid:\r\n\r\n..dotted\r\n.\r\n"
        "PUB C\r\n\r\n."  # the last EOL may be missing
    )
    a, b, c = decode(frame)
    assert (a.command, a.topic, a.headers, a.body) == ("PUB", "A", (("X", "1"),), "first")
    assert (b.command, b.topic, b.body, b.cid, b.uid) == ("RES", "B", ".dotted", "c1", "")
    assert b.headers == (("Cid", "c1"), ("Uid", ""))
    assert (c.topic, c.body) == ("C", "")


def test_binary_frames_give_bytes_bodies() -> None:
    body = bytes(range(256)) + b"\n.\n\r\n."
    (m,) = decode(encode("PUB", "bin", [("k", "v")], body))
    assert m.binary and m.body == body and m.headers == (("k", "v"),)


def test_header_lookup_is_case_insensitive_and_takes_the_broker_s_last_value() -> None:
    m = Message("RES", "T", (("reqid", "mine"), ("ReqID", "restored")), "")
    assert m.header("REQID") == "restored"
    assert m.header("nope", "d") == "d"


@pytest.mark.parametrize(
    "frame, why",
    [
        ("PUB\r\n\r\n.\r\n", "no space"),
        ("PUB a\r\nno colon\r\n\r\n.\r\n", "colon"),
        ("PUB a\r\nX: 1\r\n", "blank line"),
        ("PUB a\r\n\r\nbody\r\n", "terminating dot"),
    ],
)
def test_decode_refuses_what_is_not_a_message(frame: str, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode(frame)


@pytest.mark.parametrize(
    "target, headers",
    [("", []), ("a\r\nSUB b", []), ("a\0", []), ("T", [("bad name", "v")]), ("T", [("X", "v\nSUB b")]),
     ("T", [("", "v")])],
)
def test_encode_refuses_what_the_broker_would_call_malformed(
    target: str, headers: List[Tuple[str, str]]
) -> None:
    with pytest.raises(ProtocolError):
        encode("PUB", target, headers, "x")


def test_the_terminator_is_never_a_body_line() -> None:
    assert stuff(b".") == b"..\r\n"
    assert stuff(b"\n.\n.") == b"\n..\n..\r\n"
    assert unstuff(b"x\n") == b"x"  # a sender that ends with a bare LF


@given(headers=HEADERS, body=BODY)
def test_decode_undoes_encode(headers: List[Tuple[str, str]], body: "str | bytes") -> None:
    wire = encode("PUB", "topic x", headers, body)
    twice = wire + wire
    messages = decode(twice.decode("utf-8") if isinstance(body, str) else twice)
    assert len(messages) == 2
    for m in messages:
        assert m.body == body and type(m.body) is type(body)
        assert list(m.headers) == headers

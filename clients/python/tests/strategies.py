"""Hypothesis strategies shared by the codec and relay property tests: header lists and
bodies (text and binary) rich in dot lines and CR/LF mixes.

How: plain `hypothesis.strategies` combinators; nothing here talks to a broker."""

from __future__ import annotations

from typing import List, Tuple, Union

from hypothesis import strategies as st

# Header names are tokens; the broker removes Cid, Uid and Rid headers a sender writes.
TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefXYZ", min_size=1, max_size=12).filter(
    lambda n: n.lower() not in ("cid", "uid", "rid")
)
# Values lose surrounding blanks on the way (docs/PROTOCOL.md §3), so none are generated.
VALUE = st.text(st.characters(exclude_characters="\r\n\0", exclude_categories=["Cs"]), max_size=20).map(
    lambda v: v.strip(" \t")
)
HEADERS: st.SearchStrategy[List[Tuple[str, str]]] = st.lists(st.tuples(TOKEN, VALUE), max_size=5)
PIECES = st.sampled_from([".", "..", "\r", "\n", "\r\n", ".\r\n", "\n.\n", "\n.", "\r\n.\r\n", "a", "é", "\0", " "])
TEXT_BODY = st.one_of(st.text(), st.lists(st.one_of(PIECES, st.text(max_size=5))).map("".join))
BYTES_BODY = st.one_of(
    st.binary(), st.lists(st.one_of(PIECES.map(str.encode), st.binary(max_size=5))).map(b"".join)
)
BODY: st.SearchStrategy[Union[str, bytes]] = st.one_of(TEXT_BODY, BYTES_BODY)

"""The fast path: whole responses looked up by the question's bytes.

Most queries are one plain question (RD, maybe AD, and either no EDNS or a
bare OPT). For those the response depends only on the lower-cased question,
so it is computed once by the full path and kept as (header after the ID,
everything after the question). Answering is then a dict lookup and a
concatenation: the client's ID, the stored header, the client's question
bytes (its case: the answer's owner names are pointers to it), the rest.

Entries come from two places: service names' A records, precomputed when
the zone is (re)built, and every other answer the full path gives to a
fast-shaped query, remembered on first use (bounded; cleared when full).
Anything else (other flags, EDNS options or DO, a response over 512 bytes,
forwarded names) goes through the full path each time.
"""
from __future__ import annotations

import struct
from typing import Iterable

from . import wire
from .resolver import Resolver

_HEADER_TAIL = struct.Struct("!HHHHH")    # flags, qd, an, ns, ar: bytes 2..12 of a query
PLAIN_HEADERS = frozenset(_HEADER_TAIL.pack(f, 1, 0, 0, 0) for f in (wire.RD, wire.RD | wire.AD))
EDNS_HEADERS = frozenset(_HEADER_TAIL.pack(f, 1, 0, 0, 1) for f in (wire.RD, wire.RD | wire.AD))
OPT_HEAD = b"\x00\x00\x29"               # root owner, type OPT (then the class: the buffer size)
OPT_TAIL = b"\x00" * 6                   # extended rcode 0, version 0, no DO, no options
BARE_OPT_LEN = 11
MEMO_LIMIT = 100_000


def question_of(data: bytes) -> tuple[bytes, bool] | None:
    """(question bytes, edns) of a fast-shaped query, else None."""
    head = data[2:12]
    if head in PLAIN_HEADERS:
        return data[12:], False
    if head in EDNS_HEADERS and data[-11:-8] == OPT_HEAD and data[-6:] == OPT_TAIL:
        return data[12:-BARE_OPT_LEN], True
    return None


def lowered(question: bytes) -> bytes:
    return question[:-4].lower() + question[-4:]


class AnswerTable:
    def __init__(self, resolver: Resolver, precompute: Iterable[tuple[bytes, int]] = (),
                 memo_limit: int = MEMO_LIMIT):
        self.resolver = resolver
        self.memo_limit = memo_limit
        self.plain: dict[bytes, tuple[bytes, bytes]] = {}
        self.edns: dict[bytes, tuple[bytes, bytes]] = {}
        for name, qtype in precompute:
            for edns in (None, wire.SERVER_UDP_SIZE):
                query = wire.query_packet(0, name, qtype, edns_size=edns)
                out = resolver.handle(query)
                if isinstance(out, bytes):
                    self.remember(query, out)

    def __len__(self) -> int:
        return len(self.plain) + len(self.edns)

    def answer(self, data: bytes) -> bytes | None:
        """The response from the table, or None: take the full path."""
        head = data[2:12]
        if head in PLAIN_HEADERS:
            q, table = data[12:], self.plain
        elif head in EDNS_HEADERS and data[-11:-8] == OPT_HEAD and data[-6:] == OPT_TAIL:
            q, table = data[12:-BARE_OPT_LEN], self.edns
        else:
            return None
        hit = table.get(q)
        if hit is None:
            if len(q) < 5:
                return None
            hit = table.get(q[:-4].lower() + q[-4:])
            if hit is None:
                return None
        return b"".join((data[:2], hit[0], q, hit[1]))

    def remember(self, query: bytes, response: bytes) -> None:
        """Keep the full path's response to a fast-shaped query (over UDP, fitting 512 bytes, not truncated)."""
        shape = question_of(query)
        if shape is None or len(response) > wire.PLAIN_UDP_LIMIT or len(response) < 12:
            return
        q, edns = shape
        end = 12 + len(q)
        # the question must be a plain name the response repeats byte for byte (no pointers, no trailing junk)
        if len(q) < 5 or response[12:end] != q or struct.unpack_from("!H", response, 2)[0] & wire.TC:
            return
        try:
            if wire.read_name(q, 0)[1] + 4 != len(q):
                return
        except wire.FormatError:
            return
        table = self.edns if edns else self.plain
        if len(table) >= self.memo_limit:
            table.clear()
        table[lowered(q)] = (response[2:12], response[end:])

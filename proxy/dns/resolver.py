"""Packets in, packets out: the full (slow) path of the server, pure.

`Resolver.handle()` turns a query packet into a response packet, into a
`Forward` (the question is not in our zones, or an ExternalName's target is
outside them, and there is an upstream), or into None (drop: not a query, or
not even a header). The server loop does the I/O; this module never raises on
a packet (a bug answers SERVFAIL rather than stopping the loop).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import wire
from .wire import (AA, AXFR, IXFR, CD, IN, QR, RA, RD, TC, A, AAAA, FormatError, MessageBuilder, Query,
                   RR, error_response, parse_query)
from .zone import Answer, Zone

log = logging.getLogger("netlab-dns")
CLASS_ANY = 255


@dataclass
class Forward:
    """A question for the upstream. relay(): packet is the client's own query (its ID replaced by the
    caller); chase: packet asks for the CNAME target, and prefix goes before the upstream's records."""

    query: Query
    packet: bytes
    prefix: list[RR] | None = None
    question: bytes = field(default=b"")   # lower-case wire name + type the upstream must answer for

    @property
    def chased(self) -> bool:
        return self.prefix is not None


class Resolver:
    def __init__(self, zone: Zone, *, upstream: bool = False, udp_size: int = wire.SERVER_UDP_SIZE):
        self.zone = zone
        self.upstream = upstream
        self.udp_size = udp_size

    # -- the full path ----------------------------------------------------------------------
    def handle(self, data: bytes, tcp: bool = False) -> bytes | Forward | None:
        try:
            return self._handle(data, tcp)
        except Exception:   # a bug must not stop the server: answer SERVFAIL and say why in the log
            log.exception("query failed")
            return error_response(data, wire.SERVFAIL)

    def _handle(self, data: bytes, tcp: bool) -> bytes | Forward | None:
        try:
            q = parse_query(data)
        except FormatError:
            return error_response(data, wire.FORMERR)
        if q.flags & QR:
            return None
        if q.opcode != 0:
            return error_response(data, wire.NOTIMP)
        if q.edns and q.edns.version > 0:
            b = self._builder(q, 0)
            b.add_opt(self.udp_size, ext_rcode=wire.BADVERS >> 4)
            return b.finish(wire.BADVERS & 0xF)
        if q.qclass not in (IN, CLASS_ANY) or q.qtype in (AXFR, IXFR):
            return self.build(q, Answer(wire.REFUSED), tcp)
        ans = self.zone.lookup(q.key, q.qtype)
        if ans is None:
            if self.upstream:
                return Forward(q, data, question=q.key + q.qtype.to_bytes(2, "big"))
            return self.build(q, Answer(wire.REFUSED), tcp)
        if ans.chase is not None and self.upstream and q.qtype in (A, AAAA):
            packet = wire.query_packet(0, ans.chase, q.qtype, edns_size=self.udp_size)
            return Forward(q, packet, prefix=ans.answer, question=ans.chase + q.qtype.to_bytes(2, "big"))
        return self.build(q, ans, tcp)

    def _builder(self, q: Query, flags: int) -> MessageBuilder:
        flags |= QR | (q.flags & (RD | CD)) | (RA if self.upstream else 0)
        return MessageBuilder(q.id, flags, q.name, q.qtype, q.qclass)

    def build(self, q: Query, ans: Answer, tcp: bool, authoritative: bool = True) -> bytes:
        """The response; over UDP, one that does not fit the client's buffer becomes an empty one with TC."""
        aa = AA if authoritative and ans.rcode != wire.REFUSED else 0
        b = self._builder(q, aa)
        for section, rrs in ((1, ans.answer), (2, ans.authority), (3, ans.additional)):
            for rr in rrs:
                b.add(section, rr)
        if q.edns:
            b.add_opt(self.udp_size, do=q.edns.do)
        limit = 65535 if tcp else q.udp_limit()
        if len(b) > limit:
            if not tcp and ans.additional:   # glue is optional: drop it before truncating (RFC 2181 9)
                return self.build(q, Answer(ans.rcode, ans.answer, ans.authority), tcp, authoritative)
            return self.truncated(q, ans.rcode, aa)
        return b.finish(ans.rcode)

    def truncated(self, q: Query, rcode: int, flags: int = 0) -> bytes:
        """An empty response with TC: the client asks again over TCP."""
        b = self._builder(q, flags | TC)
        if q.edns:
            b.add_opt(self.udp_size, do=q.edns.do)
        return b.finish(rcode)

    # -- the upstream's side ------------------------------------------------------------------
    def relay(self, fwd: Forward, reply: bytes, tcp: bool = False) -> bytes | None:
        """The client's response from the upstream's reply; None when the reply does not answer
        our question (a stray or spoofed packet: keep waiting)."""
        try:
            qid, flags, qdcount = wire.read_header(reply)[:3]
            name, pos = wire.read_name(reply, 12)
            if not flags & QR or qdcount != 1 or name.lower() + reply[pos:pos + 2] != fwd.question:
                return None
            if fwd.chased:
                rcode, records = wire.answer_records(reply)
                return self.build(fwd.query, Answer(rcode, list(fwd.prefix) + records), tcp, authoritative=False)
        except FormatError:
            return None
        if not tcp and len(reply) > fwd.query.udp_limit():
            return self.truncated(fwd.query, flags & 0xF)
        return fwd.query.id.to_bytes(2, "big") + reply[2:]

    def servfail(self, fwd: Forward) -> bytes:
        """What the client gets when the upstream does not answer in time."""
        return self.build(fwd.query, Answer(wire.SERVFAIL), tcp=True, authoritative=False)


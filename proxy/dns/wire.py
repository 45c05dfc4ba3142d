"""DNS wire format (RFC 1035, EDNS0 per RFC 6891), pure and defensive.

Names cross this module as wire bytes (length-prefixed labels, ending in the
root's zero byte), uncompressed. Lower-cased wire bytes are the lookup key
everywhere: a label can hold any byte, dots included, so a dotted string
would confuse "a.b" (one label) with "a" "b". Length bytes are at most 63,
below ASCII 'A', so bytes.lower() touches only the letters.

Parsing never trusts the packet: counts may lie, pointers may loop or point
forward, names may exceed 255 bytes. Every such case raises FormatError.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# header flags
QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
OPCODE_MASK = 0x7800

# rcodes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended (EDNS) rcode: upper 8 bits go in the OPT TTL

# types and classes
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, AXFR, IXFR, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 252, 251, 255
IN = 1
TYPE_NAMES = {A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", PTR: "PTR", MX: "MX", TXT: "TXT", AAAA: "AAAA",
              SRV: "SRV", OPT: "OPT", AXFR: "AXFR", IXFR: "IXFR", ANY: "ANY"}

ROOT = b"\x00"
MAX_NAME = 255
MAX_POINTER_HOPS = 64          # a name has at most 127 labels; more hops is a loop or an attack
PLAIN_UDP_LIMIT = 512          # RFC 1035, without EDNS
SERVER_UDP_SIZE = 1232         # what we advertise (DNS flag day 2020)

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_QFIXED = struct.Struct("!HH")


class FormatError(ValueError):
    """The packet is not a well-formed DNS message."""


# --- names -----------------------------------------------------------------

def encode_name(text: str) -> bytes:
    """"web.default.svc.cluster.local" (trailing dot optional, "" or "." = root) -> wire bytes, lower-cased."""
    text = text.rstrip(".")
    if not text:
        return ROOT
    out = bytearray()
    for label in text.split("."):
        raw = label.lower().encode("ascii")
        if not 0 < len(raw) <= 63:
            raise ValueError(f"DNS name {text!r}: label {label!r} must be 1-63 characters")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"DNS name {text!r} is longer than 255 bytes on the wire")
    return bytes(out)


def name_text(wire: bytes) -> str:
    """Wire bytes -> presentation form with a trailing dot (odd bytes escaped as \\DDD)."""
    labels, i = [], 0
    while wire[i]:
        n = wire[i]
        labels.append("".join(chr(b) if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) else f"\\{b:03d}"
                              for b in wire[i + 1:i + 1 + n]))
        i += 1 + n
    return ".".join(labels) + "."


def labels_of(wire: bytes) -> list[bytes]:
    out, i = [], 0
    while wire[i]:
        out.append(wire[i + 1:i + 1 + wire[i]])
        i += 1 + wire[i]
    return out


def suffixes(wire: bytes):
    """The name and each of its ancestors down to the root, as wire bytes (label boundaries only)."""
    i = 0
    while True:
        yield wire[i:]
        if not wire[i]:
            return
        i += 1 + wire[i]


def is_subdomain(name: bytes, parent: bytes) -> bool:
    """name is parent or below it (whole labels: b"a\\x03pod" does not end in the label "pod")."""
    return name.endswith(parent) and (len(name) == len(parent) or name[len(name) - len(parent):] in suffixes(name))


def read_name(data: bytes, offset: int) -> tuple[bytes, int]:
    """The name at offset, decompressed (case kept), and the offset after it in the packet."""
    out = bytearray()
    end = None
    hops = 0
    pos = offset
    n = len(data)
    while True:
        if pos >= n:
            raise FormatError("name runs past the end of the packet")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise FormatError("compression pointer cut short")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end is None:
                end = pos + 2
            # pointers must go strictly backwards: forward or self pointers are how loops are made
            if target >= pos or hops >= MAX_POINTER_HOPS:
                raise FormatError("compression pointer loops or points forward")
            hops += 1
            pos = target
            continue
        if length & 0xC0:
            raise FormatError(f"label type {length >> 6:#x} is not supported")
        if length == 0:
            out.append(0)
            if len(out) > MAX_NAME:
                raise FormatError("name longer than 255 bytes")
            return bytes(out), (pos + 1 if end is None else end)
        if pos + 1 + length > n:
            raise FormatError("label runs past the end of the packet")
        out += data[pos:pos + 1 + length]
        if len(out) > MAX_NAME:
            raise FormatError("name longer than 255 bytes")
        pos += 1 + length


# --- parsing a query -------------------------------------------------------

@dataclass(frozen=True)
class Edns:
    udp_size: int               # the requester's buffer (values below 512 count as 512)
    version: int = 0
    do: bool = False            # DNSSEC OK: echoed, we sign nothing


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: bytes                 # wire bytes, the client's case
    qtype: int
    qclass: int
    edns: Edns | None = None
    question_end: int = 0       # offset after the question section in the packet

    @property
    def key(self) -> bytes:
        return self.name.lower()

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11

    def udp_limit(self) -> int:
        return max(PLAIN_UDP_LIMIT, min(self.edns.udp_size, 65535)) if self.edns else PLAIN_UDP_LIMIT


def read_header(data: bytes) -> tuple[int, int, int, int, int, int]:
    if len(data) < 12:
        raise FormatError("shorter than a DNS header")
    return _HEADER.unpack_from(data)


def skip_rr(data: bytes, offset: int) -> tuple[bytes, int, int, int, int, int]:
    """(owner, type, class, ttl, rdata offset, offset after) of the record at offset."""
    owner, pos = read_name(data, offset)
    if pos + 10 > len(data):
        raise FormatError("resource record cut short")
    rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
    pos += 10
    if pos + rdlen > len(data):
        raise FormatError("rdata runs past the end of the packet")
    return owner, rtype, rclass, ttl, pos, pos + rdlen


def parse_query(data: bytes) -> Query:
    """A query with one question. Raises FormatError for anything malformed;
    the caller answers FORMERR when the header was readable."""
    qid, flags, qdcount, ancount, nscount, arcount = read_header(data)
    if qdcount != 1:
        raise FormatError(f"{qdcount} questions; exactly one is supported")
    name, pos = read_name(data, 12)
    if pos + 4 > len(data):
        raise FormatError("question cut short")
    qtype, qclass = _QFIXED.unpack_from(data, pos)
    question_end = pos + 4
    pos = question_end
    for _ in range(ancount + nscount):
        pos = skip_rr(data, pos)[5]
    edns = None
    for _ in range(arcount):
        owner, rtype, rclass, ttl, _rdata, pos = skip_rr(data, pos)
        if rtype == OPT:
            if edns is not None or owner != ROOT:
                raise FormatError("more than one OPT record, or an OPT not owned by the root")
            edns = Edns(max(rclass, PLAIN_UDP_LIMIT), (ttl >> 16) & 0xFF, bool(ttl & 0x8000))
    return Query(qid, flags, name, qtype, qclass, edns, question_end)


# --- building a response ---------------------------------------------------

@dataclass(frozen=True)
class RR:
    """One resource record. name is lower-cased wire bytes; rdata by type:
    A/AAAA: address text; CNAME/PTR/NS: target wire name; SRV: (priority, weight, port, target wire);
    TXT: tuple of str; SOA: (mname wire, rname wire, serial, refresh, retry, expire, minimum);
    anything else: raw bytes."""

    name: bytes
    type: int
    ttl: int
    rdata: object
    rclass: int = IN


class MessageBuilder:
    """A response written front to back, compressing names against what is already written."""

    def __init__(self, qid: int, flags: int, question: bytes | None, qtype: int = 0, qclass: int = IN):
        self.buf = bytearray(12)
        self.counts = [0, 0, 0, 0]
        self.qid, self.flags = qid, flags
        self._names: dict[bytes, int] = {}
        if question is not None:
            self.counts[0] = 1
            self.write_name(question)
            self.buf += _QFIXED.pack(qtype, qclass)

    def write_name(self, wire: bytes, compress: bool = True) -> None:
        """Writes wire; each suffix seen before becomes a pointer (the suffix's case is the earlier one's,
        which is how the question's case reaches the answer's owner names)."""
        low = wire.lower()
        i = 0
        while low[i]:
            suffix = low[i:]
            if compress and suffix in self._names:
                self.buf += struct.pack("!H", 0xC000 | self._names[suffix])
                return
            if len(self.buf) < 0x3FFF:
                self._names.setdefault(suffix, len(self.buf))
            n = wire[i]
            self.buf += wire[i:i + 1 + n]
            i += 1 + n
        self.buf.append(0)

    def add(self, section: int, rr: RR) -> None:
        """section: 1 answer, 2 authority, 3 additional."""
        self.write_name(rr.name)
        start = len(self.buf)
        self.buf += b"\0" * 10
        self._rdata(rr)
        _RR_FIXED.pack_into(self.buf, start, rr.type, rr.rclass, rr.ttl, len(self.buf) - start - 10)
        self.counts[section] += 1

    def add_opt(self, udp_size: int, ext_rcode: int = 0, version: int = 0, do: bool = False) -> None:
        self.buf += b"\0" + struct.pack("!HHIH", OPT, udp_size, (ext_rcode << 24) | (version << 16)
                                        | (0x8000 if do else 0), 0)
        self.counts[3] += 1

    def _rdata(self, rr: RR) -> None:
        t, d = rr.type, rr.rdata
        if t == A:
            self.buf += ipaddress.IPv4Address(d).packed
        elif t == AAAA:
            self.buf += ipaddress.IPv6Address(d).packed
        elif t in (CNAME, PTR, NS):
            self.write_name(d)
        elif t == SRV:
            self.buf += struct.pack("!HHH", *d[:3])
            self.write_name(d[3], compress=False)   # RFC 2782: no compression of the target
        elif t == TXT:
            for s in d:
                raw = s.encode()
                self.buf.append(len(raw))
                self.buf += raw
        elif t == SOA:
            self.write_name(d[0])
            self.write_name(d[1])
            self.buf += struct.pack("!IIIII", *d[2:])
        else:
            self.buf += d

    def __len__(self) -> int:
        return len(self.buf)

    def finish(self, rcode: int = NOERROR) -> bytes:
        _HEADER.pack_into(self.buf, 0, self.qid, self.flags | (rcode & 0xF), *self.counts)
        return bytes(self.buf)


def error_response(data: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP/REFUSED for a packet whose header is readable, echoing the question when it
    parses; None (drop) when even the header is not there or it is a response itself."""
    try:
        qid, flags, qdcount = read_header(data)[:3]
    except FormatError:
        return None
    if flags & QR:
        return None   # never answer an answer: that is how reflection loops start
    question = None
    if qdcount == 1:
        try:
            name, pos = read_name(data, 12)
            if pos + 4 <= len(data):
                question = (name,) + _QFIXED.unpack_from(data, pos)
        except FormatError:
            pass
    flags = QR | (flags & (OPCODE_MASK | RD | CD))
    b = MessageBuilder(qid, flags, *(question or (None,)))
    return b.finish(rcode)


# --- reading records from an upstream's answer ----------------------------

def answer_records(data: bytes) -> tuple[int, list[RR]]:
    """(rcode, answer records) of a response, names decompressed so they can be written again."""
    qid, flags, qdcount, ancount = read_header(data)[:4]
    pos = 12
    for _ in range(qdcount):
        pos = read_name(data, pos)[1] + 4
    out = []
    for _ in range(ancount):
        owner, rtype, rclass, ttl, rd, pos = skip_rr(data, pos)
        raw = data[rd:pos]
        if rtype in (CNAME, PTR, NS):
            rdata: object = read_name(data, rd)[0]
        elif rtype == A and len(raw) == 4:
            rdata = str(ipaddress.IPv4Address(raw))
        elif rtype == AAAA and len(raw) == 16:
            rdata = str(ipaddress.IPv6Address(raw))
        elif rtype in (SOA, MX, SRV):
            continue   # names inside would need their own decompression; a chased A/AAAA never needs them
        else:
            rdata = raw
        out.append(RR(owner, rtype, ttl, rdata, rclass))
    return flags & 0xF, out


def query_packet(qid: int, name: bytes, qtype: int, flags: int = RD, edns_size: int | None = None) -> bytes:
    b = MessageBuilder(qid, flags, name, qtype)
    if edns_size:
        b.add_opt(edns_size)
    return b.finish()

"""A small synchronous rtnetlink client: the requests a CNI ADD/DEL/CHECK/GC makes, packed
with struct on a raw NETLINK_ROUTE socket.

Why not pyroute2 here: pyroute2 0.9 runs every request through an asyncio event loop and
its generic message classes, about 0.5 ms of Python a round trip and ~1 ms to open a
socket; an ADD makes ten of them, and a lab node makes hundreds of ADDs. Packing the few
messages an ADD needs by hand costs tens of microseconds each. The interface is the
subset of pyroute2's IPRoute that cni.main.bridge uses (link/addr/route/brport and the
dumps, results as messages with ["index"] and .get("IFLA_...")), so the plugin reads the
same either way; everything else keeps using pyroute2.

Message layouts are the kernel's (include/uapi/linux/rtnetlink.h, if_link.h, veth.h,
if_addr.h): nlmsghdr, then ifinfomsg / ifaddrmsg / rtmsg, then rtattrs padded to 4.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

from .netns import entered

# message types and flags (linux/netlink.h, linux/rtnetlink.h)
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x300, 0x200, 0x400
NLA_F_NESTED = 0x8000

IFF_UP = 0x1
AF_UNSPEC, AF_BRIDGE = 0, 7
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253

# attribute numbers
IFLA = {"IFLA_ADDRESS": 1, "IFLA_IFNAME": 3, "IFLA_MTU": 4, "IFLA_LINK": 5, "IFLA_MASTER": 10,
        "IFLA_PROTINFO": 12, "IFLA_LINKINFO": 18, "IFLA_IFALIAS": 20, "IFLA_NET_NS_FD": 28}
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4
IFA = {"IFA_ADDRESS": 1, "IFA_LOCAL": 2}
RTA = {"RTA_DST": 1, "RTA_OIF": 4, "RTA_GATEWAY": 5, "RTA_TABLE": 15}

_HDR = struct.Struct("=IHHII")      # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")   # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTA = struct.Struct("=HH")         # rtattr: len, type


class NetlinkError(OSError):
    """A request the kernel refused; .code is the errno, as pyroute2's NetlinkError has it."""

    def __init__(self, code: int, what: str = ""):
        super().__init__(code, f"{what}: {os.strerror(code)}" if what else os.strerror(code))
        self.code = code


# --- packing -----------------------------------------------------------------------------

def attr(kind: int, data: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = _RTA.size + len(data)
    return _RTA.pack(length, kind) + data + b"\0" * (-length & 3)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ip_bytes(ip: str) -> tuple[int, bytes]:
    a = ipaddress.ip_address(ip)
    return (socket.AF_INET if a.version == 4 else socket.AF_INET6), a.packed


def parse_attrs(data: bytes, offset: int = 0) -> list[tuple[int, bytes]]:
    out = []
    while offset + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < _RTA.size:
            break
        out.append((kind & ~NLA_F_NESTED, data[offset + _RTA.size:offset + length]))
        offset += (length + 3) & ~3
    return out


# --- messages as the plugin reads them -------------------------------------------------------

class Msg(dict):
    """A reply: header fields by key (msg["index"]), attributes by name (msg.get("IFLA_MTU")),
    a nested one by path (msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")))."""

    def __init__(self, fields: dict, attrs: dict):
        super().__init__(fields)
        self.attrs = attrs

    def get(self, key, default=None):
        if isinstance(key, tuple):
            return self.attrs.get(key, default)
        if key in self.attrs:
            return self.attrs[key]
        return super().get(key, default)

    get_attr = get


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode(errors="replace")


def _ip(b: bytes) -> str:
    return str(ipaddress.ip_address(b))


_LINK_ATTRS = {1: ("IFLA_ADDRESS", _mac), 3: ("IFLA_IFNAME", _cstr), 4: ("IFLA_MTU", lambda b: struct.unpack("=I", b)[0]),
               5: ("IFLA_LINK", lambda b: struct.unpack("=I", b)[0]),
               10: ("IFLA_MASTER", lambda b: struct.unpack("=I", b)[0]), 20: ("IFLA_IFALIAS", _cstr)}


def parse_link(data: bytes) -> Msg:
    family, kind, index, flags, change = _IFINFO.unpack_from(data)
    attrs = {}
    for t, v in parse_attrs(data, _IFINFO.size):
        if t in _LINK_ATTRS:
            name, conv = _LINK_ATTRS[t]
            attrs[name] = conv(v)
        elif t == IFLA["IFLA_LINKINFO"]:
            for it, iv in parse_attrs(v):
                if it == IFLA_INFO_KIND:
                    attrs[("IFLA_LINKINFO", "IFLA_INFO_KIND")] = _cstr(iv)
    return Msg({"family": family, "ifi_type": kind, "index": index, "flags": flags, "change": change}, attrs)


def parse_addr(data: bytes) -> Msg:
    family, prefixlen, flags, scope, index = _IFADDR.unpack_from(data)
    attrs = {name: _ip(v) for t, v in parse_attrs(data, _IFADDR.size) for name, n in IFA.items() if n == t}
    return Msg({"family": family, "prefixlen": prefixlen, "flags": flags, "scope": scope, "index": index}, attrs)


def parse_route(data: bytes) -> Msg:
    family, dst_len, src_len, tos, table, proto, scope, kind, flags = _RTMSG.unpack_from(data)
    attrs = {}
    for t, v in parse_attrs(data, _RTMSG.size):
        if t in (RTA["RTA_DST"], RTA["RTA_GATEWAY"]):
            attrs["RTA_DST" if t == RTA["RTA_DST"] else "RTA_GATEWAY"] = _ip(v)
        elif t in (RTA["RTA_OIF"], RTA["RTA_TABLE"]):
            attrs["RTA_OIF" if t == RTA["RTA_OIF"] else "RTA_TABLE"] = struct.unpack("=I", v)[0]
    return Msg({"family": family, "dst_len": dst_len, "table": table, "proto": proto, "scope": scope,
                "type": kind}, attrs)


# --- the socket ----------------------------------------------------------------------------

class Rtnl:
    """An rtnetlink socket of the namespace it was opened in (the calling thread's, or netns)."""

    def __init__(self, netns: str | None = None):
        with entered(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, kind: int, flags: int, body: bytes, what: str = "") -> list[bytes]:
        """Send one request; returns the payloads of the replies (a dump's, or a get's one),
        raises NetlinkError for an error reply."""
        self.seq += 1
        seq = self.seq
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body)
        out = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, mtype, mflags, mseq, _ = _HDR.unpack_from(data, offset)
                payload = data[offset + _HDR.size:offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # a late reply to an earlier, failed request
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetlinkError(code, what)
                    return out  # the ack
                if mtype == NLMSG_DONE:
                    return out
                out.append(payload)
                if not mflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return out  # a get's single answer

    def _change(self, kind: int, body: bytes, what: str, flags: int = 0) -> list:
        self.request(kind, NLM_F_ACK | flags, body, what)
        return []

    # links ------------------------------------------------------------------------------
    def link(self, cmd: str, index: int = 0, ifname: str | None = None, kind: str | None = None,
             state: str | None = None, flags: int | None = None, **kw) -> list[Msg]:
        if cmd == "get":
            body = _IFINFO.pack(AF_UNSPEC, 0, index, 0, 0) + (string(IFLA["IFLA_IFNAME"], ifname) if ifname else b"")
            return [parse_link(p) for p in self.request(RTM_GETLINK, 0, body, f"get link {ifname or index}")]
        if cmd == "del":
            return self._change(RTM_DELLINK, _IFINFO.pack(AF_UNSPEC, 0, index, 0, 0), f"delete link {index}")
        ifi_flags, change = (flags or 0), (0xFFFFFFFF if flags is not None else 0)
        if state is not None:
            ifi_flags = (ifi_flags | IFF_UP) if state == "up" else (ifi_flags & ~IFF_UP)
            change |= IFF_UP
        attrs = _link_attrs(ifname=ifname, **kw)
        if cmd == "add":
            info = [string(IFLA_INFO_KIND, kind)]
            peer = kw.get("peer")
            if kind == "veth" and peer:
                info.append(nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, _IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0)
                                                          + _link_attrs(**peer))))
            attrs += nested(IFLA["IFLA_LINKINFO"], *info)
            return self._change(RTM_NEWLINK, _IFINFO.pack(AF_UNSPEC, 0, 0, ifi_flags, change) + attrs,
                                f"add {kind} {ifname}", NLM_F_CREATE | NLM_F_EXCL)
        if cmd == "set":
            return self._change(RTM_NEWLINK, _IFINFO.pack(AF_UNSPEC, 0, index, ifi_flags, change) + attrs,
                                f"set link {index}")
        raise ValueError(f"link command {cmd!r}")

    def get_links(self) -> list[Msg]:
        return [parse_link(p) for p in self.request(RTM_GETLINK, NLM_F_DUMP, _IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0),
                                                    "list links")]

    def link_lookup(self, ifname: str) -> list[int]:
        try:
            return [m["index"] for m in self.link("get", ifname=ifname)]
        except NetlinkError as e:
            if e.code == 19:  # ENODEV
                return []
            raise

    def brport(self, cmd: str, index: int, mode: int) -> list:
        """The bridge port's hairpin mode (IFLA_PROTINFO/IFLA_BRPORT_MODE), as `bridge link set hairpin`."""
        if cmd != "set":
            raise ValueError(f"brport command {cmd!r}")
        body = _IFINFO.pack(AF_BRIDGE, 0, index, 0, 0) + nested(IFLA["IFLA_PROTINFO"],
                                                                 attr(IFLA_BRPORT_MODE, bytes([mode])))
        return self._change(RTM_SETLINK, body, f"set hairpin on link {index}")

    # addresses ---------------------------------------------------------------------------
    def addr(self, cmd: str, index: int, address: str, prefixlen: int) -> list:
        family, packed = ip_bytes(address)
        body = _IFADDR.pack(family, prefixlen, 0, 0, index) + attr(IFA["IFA_LOCAL"], packed) + attr(IFA["IFA_ADDRESS"], packed)
        if cmd == "add":
            return self._change(RTM_NEWADDR, body, f"add {address}/{prefixlen}", NLM_F_CREATE | NLM_F_EXCL)
        if cmd == "del":
            return self._change(RTM_DELADDR, body, f"delete {address}/{prefixlen}")
        raise ValueError(f"addr command {cmd!r}")

    def get_addr(self, index: int | None = None, family: int = AF_UNSPEC) -> list[Msg]:
        msgs = [parse_addr(p) for p in self.request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(family, 0, 0, 0, 0),
                                                    "list addresses")]
        return [m for m in msgs if index is None or m["index"] == index]

    # routes ------------------------------------------------------------------------------
    def route(self, cmd: str, dst: str, oif: int | None = None, gateway: str | None = None) -> list:
        """Main-table unicast routes, protocol static (what pyroute2 and `ip route add` give)."""
        net = ipaddress.ip_network(dst, strict=False)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        body = _RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope, RTN_UNICAST, 0)
        if net.prefixlen:
            body += attr(RTA["RTA_DST"], net.network_address.packed)
        if gateway:
            body += attr(RTA["RTA_GATEWAY"], ip_bytes(gateway)[1])
        if oif is not None:
            body += u32(RTA["RTA_OIF"], oif)
        if cmd == "add":
            return self._change(RTM_NEWROUTE, body, f"add route {dst}", NLM_F_CREATE | NLM_F_EXCL)
        if cmd == "del":
            return self._change(RTM_DELROUTE, body, f"delete route {dst}")
        raise ValueError(f"route command {cmd!r}")

    def get_routes(self, oif: int | None = None, family: int = AF_UNSPEC) -> list[Msg]:
        """The main table's routes (through oif)."""
        msgs = [parse_route(p) for p in self.request(RTM_GETROUTE, NLM_F_DUMP,
                                                     _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), "list routes")]
        return [m for m in msgs if m.get("RTA_TABLE", m["table"]) == RT_TABLE_MAIN
                and (oif is None or m.get("RTA_OIF") == oif)]


def _link_attrs(ifname: str | None = None, address: str | None = None, mtu: int | None = None,
                master: int | None = None, ifalias: str | None = None, net_ns_fd: int | None = None,
                **_ignored) -> bytes:
    out = b""
    if ifname:
        out += string(IFLA["IFLA_IFNAME"], ifname)
    if address:
        out += attr(IFLA["IFLA_ADDRESS"], mac_bytes(address))
    if mtu:
        out += u32(IFLA["IFLA_MTU"], mtu)
    if master is not None:
        out += u32(IFLA["IFLA_MASTER"], master)
    if ifalias is not None:
        out += attr(IFLA["IFLA_IFALIAS"], ifalias.encode())  # no NUL, as iproute2 sends it
    if net_ns_fd is not None:
        out += u32(IFLA["IFLA_NET_NS_FD"], net_ns_fd)
    return out

"""IPVS-mode netlink writes packed by hand and sent many to one sendmsg.

pyroute2 0.9 puts each request through its asyncio loop and waits for the
answer: ~20 ms a request under TCG, so the 4000 requests of 1000 Services with
two endpoints took 80 s. The kernel's netlink_rcv_skb handles every message of
one send in turn, so a batch costs one system call per chunk. Dumps go
through the same raw sockets (a full resync of 1000 virtual servers dumped
each one's real servers through pyroute2 in 32 s under TCG). The layout
follows include/uapi/linux/ip_vs.h, genetlink.h and if_addr.h; the unit tests
pin it to pyroute2's own encoding of the same requests.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

from cni import netns as _netns

from .plan import RealServer, VirtualServer, VirtualServerKey

NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x300, 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
NETLINK_ROUTE, NETLINK_GENERIC = 0, 16
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK

GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 0x10, 3, 1, 2
IPVS_GENL_NAME, IPVS_GENL_VERSION = "IPVS", 1
IPVS_CMD_NEW_SERVICE, IPVS_CMD_SET_SERVICE, IPVS_CMD_DEL_SERVICE, IPVS_CMD_GET_SERVICE = 1, 2, 3, 4
IPVS_CMD_NEW_DEST, IPVS_CMD_DEL_DEST, IPVS_CMD_GET_DEST = 5, 7, 8
IPVS_CMD_ATTR_SERVICE, IPVS_CMD_ATTR_DEST = 1, 2
(IPVS_SVC_ATTR_AF, IPVS_SVC_ATTR_PROTOCOL, IPVS_SVC_ATTR_ADDR, IPVS_SVC_ATTR_PORT, IPVS_SVC_ATTR_SCHED_NAME,
 IPVS_SVC_ATTR_FLAGS, IPVS_SVC_ATTR_TIMEOUT, IPVS_SVC_ATTR_NETMASK) = 1, 2, 3, 4, 6, 7, 8, 9
(IPVS_DEST_ATTR_ADDR, IPVS_DEST_ATTR_PORT, IPVS_DEST_ATTR_FWD_METHOD, IPVS_DEST_ATTR_WEIGHT,
 IPVS_DEST_ATTR_U_THRESH, IPVS_DEST_ATTR_L_THRESH, IPVS_DEST_ATTR_ADDR_FAMILY) = 1, 2, 3, 4, 5, 6, 11
RTM_NEWADDR, RTM_DELADDR, IFA_ADDRESS, IFA_LOCAL = 20, 21, 1, 2
FWD_MASQ = 0          # IP_VS_CONN_F_MASQ: NAT to the real server (pyroute2's default is 3, direct routing)
PROTOCOL_NUMBERS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOL_NUMBERS.items()}
CHUNK = 256           # requests a send: even all failing, their answers fit the receive buffer
# errors that mean the kernel already is as the request wanted: an add that finds the
# entry, a delete that does not (IPVS answers ESRCH/ENOENT, an address EADDRNOTAVAIL)
ALREADY_SO = {"add": {errno.EEXIST}, "del": {errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL}}


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


# the fixed-size attributes as one pack each (IPv4 only, as the rest of this mode)
_SERVICE_KEY = struct.Struct("=HH HHH2x HHH2x HH4s HH2s2x")         # nested: af, protocol, addr, port
_SERVICE_FULL = struct.Struct("=HHII HHI HH4s")                     # flags {flags, mask}, timeout, netmask
_DEST = struct.Struct("=HH HH4s HH2s2x HHI HHI HHI HHI HHH2x")      # nested: addr, port, fwd, weight, thresholds, af


def _service_key(key: VirtualServerKey, extra: int = 0) -> bytes:
    """IPVS_CMD_ATTR_SERVICE with the key; extra: the length of attributes to follow inside it."""
    return _SERVICE_KEY.pack(4 + 32 + extra, IPVS_CMD_ATTR_SERVICE,
                             6, IPVS_SVC_ATTR_AF, socket.AF_INET, 6, IPVS_SVC_ATTR_PROTOCOL,
                             PROTOCOL_NUMBERS[key.protocol], 8, IPVS_SVC_ATTR_ADDR, socket.inet_aton(key.address),
                             6, IPVS_SVC_ATTR_PORT, key.port.to_bytes(2, "big"))


def _genl(cmd: int, attrs: bytes) -> bytes:
    return struct.pack("=BBH", cmd, IPVS_GENL_VERSION, 0) + attrs


def service_request(op: str, key: VirtualServerKey, vs: VirtualServer | None = None) -> bytes:
    """The generic netlink payload of an IPVS service add, set or del (a full entry but for del)."""
    cmd = {"add": IPVS_CMD_NEW_SERVICE, "set": IPVS_CMD_SET_SERVICE, "del": IPVS_CMD_DEL_SERVICE}[op]
    if op == "del" or vs is None:
        return _genl(cmd, _service_key(key))
    rest = (attr(IPVS_SVC_ATTR_SCHED_NAME, vs.scheduler.encode() + b"\0")
            + _SERVICE_FULL.pack(12, IPVS_SVC_ATTR_FLAGS, vs.flags, 0xFFFF, 8, IPVS_SVC_ATTR_TIMEOUT,
                                 vs.affinity_timeout, 8, IPVS_SVC_ATTR_NETMASK, b"\xff\xff\xff\xff"))
    return _genl(cmd, _service_key(key, len(rest)) + rest)


def dest_request(op: str, key: VirtualServerKey, real: RealServer) -> bytes:
    """The generic netlink payload of a real server add or del in key's virtual server."""
    cmd = {"add": IPVS_CMD_NEW_DEST, "del": IPVS_CMD_DEL_DEST}[op]
    return _genl(cmd, _service_key(key) + _DEST.pack(
        60, IPVS_CMD_ATTR_DEST, 8, IPVS_DEST_ATTR_ADDR, socket.inet_aton(real.address),
        6, IPVS_DEST_ATTR_PORT, real.port.to_bytes(2, "big"), 8, IPVS_DEST_ATTR_FWD_METHOD, FWD_MASQ,
        8, IPVS_DEST_ATTR_WEIGHT, real.weight, 8, IPVS_DEST_ATTR_U_THRESH, 0, 8, IPVS_DEST_ATTR_L_THRESH, 0,
        6, IPVS_DEST_ATTR_ADDR_FAMILY, socket.AF_INET))


def address_request(index: int, address: str) -> bytes:
    """The rtnetlink payload (ifaddrmsg) of address/32 on link index, as `ip addr add/del` sends it."""
    raw = socket.inet_aton(address)
    return struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, index) + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)


class NetlinkBatch:
    """Requests to one netlink protocol, opened in netns; send() sends them in
    chunks, reads every ack and raises OSError naming what failed."""

    def __init__(self, protocol: int, netns: str | None):
        self.protocol, self.netns = protocol, netns
        self._requests: list[tuple[int, int, bytes, str, str]] = []   # type, flags, payload, op, what

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, msg_type: int, op: str, payload: bytes, what: str) -> None:
        """op "add" (create, exclusive), "set" or "del"; what names it in errors."""
        self._requests.append((msg_type, CREATE if op == "add" else CHANGE, payload, op, what))

    def send(self) -> None:
        if not self._requests:
            return
        with _netns.entered(self.netns):      # a netlink socket keeps the namespace it was opened in
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, self.protocol)
        failures: list[str] = []
        first_errno = 0
        with sock:
            sock.bind((0, 0))
            sock.settimeout(120)             # a hang guard (TCG is slow), not a measure
            for start in range(0, len(self._requests), CHUNK):
                chunk = self._requests[start:start + CHUNK]
                last = start + len(chunk)
                # only the chunk's last request asks for an ack: the kernel handles a send's
                # requests in order and answers a failed one anyway, so that ack comes after
                # every error of the chunk (one recv, not one per request)
                sock.sendall(b"".join(
                    struct.pack("=IHHII", 16 + len(payload), msg_type,
                                flags if start + i + 1 == last else flags & ~NLM_F_ACK, start + i + 1, 0) + payload
                    for i, (msg_type, flags, payload, _, _) in enumerate(chunk)))
                for seq, code in _answers(sock, last):
                    _, _, _, op, what = self._requests[seq - 1]
                    if code and code not in ALREADY_SO.get(op, ()):
                        first_errno = first_errno or code
                        failures.append(f"{what}: {os.strerror(code)}")
        self._requests.clear()
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise OSError(first_errno, f"netlink: {failures[0]}{more}")


def _answers(sock: socket.socket, last: int):
    """(sequence number, errno) of each answer up to and including the one to request last."""
    while True:
        buf = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(buf):
            length, msg_type, _, seq, _ = struct.unpack_from("=IHHII", buf, offset)
            if msg_type == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", buf, offset + 16)
                yield seq, -code
                if seq == last:
                    return
            offset += (length + 3) & ~3 or len(buf)


def genl_family_id(name: str = IPVS_GENL_NAME, netns: str | None = None) -> int:
    """The generic netlink family's number (CTRL_CMD_GETFAMILY); OSError when the kernel has none."""
    with _netns.entered(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    with sock:
        sock.bind((0, 0))
        sock.settimeout(120)
        payload = struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
        sock.sendall(struct.pack("=IHHII", 16 + len(payload), GENL_ID_CTRL, NLM_F_REQUEST, 1, 0) + payload)
        buf = sock.recv(1 << 16)
    _, msg_type, _, _, _ = struct.unpack_from("=IHHII", buf)
    if msg_type == NLMSG_ERROR:
        code = -struct.unpack_from("=i", buf, 16)[0]
        raise OSError(code, f"generic netlink family {name}: {os.strerror(code)} (is its module loaded?)")
    offset = 20                                # nlmsghdr + genlmsghdr
    while offset + 4 <= len(buf):
        size, kind = struct.unpack_from("=HH", buf, offset)
        if kind == CTRL_ATTR_FAMILY_ID:
            return struct.unpack_from("=H", buf, offset + 4)[0]
        offset += (size + 3) & ~3 or len(buf)
    raise OSError(errno.ENOENT, f"generic netlink family {name}: no id in the kernel's answer")


# --- reads: dumps -----------------------------------------------------------------

def parse_attrs(buf: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attribute type (flags masked off) -> payload, from offset to the end of buf."""
    out = {}
    while offset + 4 <= len(buf):
        size, kind = struct.unpack_from("=HH", buf, offset)
        if size < 4:
            break
        out[kind & 0x3FFF] = buf[offset + 4:offset + size]
        offset += (size + 3) & ~3
    return out


def _ipv4(raw: bytes) -> str:
    return socket.inet_ntoa(raw[:4])       # the kernel sends a 16-byte nf_inet_addr


def virtual_server_of(message: bytes) -> tuple[VirtualServerKey, tuple[str, int, int]] | None:
    """(key, (scheduler, flags, timeout)) of one IPVS service dump message (after
    nlmsghdr); None for what this mode never makes (fwmark, IPv6, other protocols)."""
    svc = parse_attrs(parse_attrs(message, 4).get(IPVS_CMD_ATTR_SERVICE, b""))
    if IPVS_SVC_ATTR_ADDR not in svc or struct.unpack("=H", svc[IPVS_SVC_ATTR_AF][:2])[0] != socket.AF_INET:
        return None
    protocol = PROTOCOL_NAMES.get(struct.unpack("=H", svc[IPVS_SVC_ATTR_PROTOCOL][:2])[0])
    if protocol is None:
        return None
    key = VirtualServerKey(protocol, _ipv4(svc[IPVS_SVC_ATTR_ADDR]), int.from_bytes(svc[IPVS_SVC_ATTR_PORT][:2], "big"))
    flags = struct.unpack_from("=I", svc[IPVS_SVC_ATTR_FLAGS])[0] if IPVS_SVC_ATTR_FLAGS in svc else 0
    timeout = struct.unpack_from("=I", svc[IPVS_SVC_ATTR_TIMEOUT])[0] if IPVS_SVC_ATTR_TIMEOUT in svc else 0
    return key, (svc.get(IPVS_SVC_ATTR_SCHED_NAME, b"").rstrip(b"\0").decode(), flags, timeout)


def real_server_of(message: bytes) -> RealServer:
    """The real server of one IPVS dest dump message (after nlmsghdr)."""
    dest = parse_attrs(parse_attrs(message, 4)[IPVS_CMD_ATTR_DEST])
    return RealServer(_ipv4(dest[IPVS_DEST_ATTR_ADDR]), int.from_bytes(dest[IPVS_DEST_ATTR_PORT][:2], "big"),
                      struct.unpack_from("=I", dest[IPVS_DEST_ATTR_WEIGHT])[0])


class NetlinkDumps:
    """One netlink socket in netns for dumps, one after the other (a socket runs one at a time)."""

    def __init__(self, protocol: int, netns: str | None):
        with _netns.entered(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self._sock.bind((0, 0))
        self._sock.settimeout(120)           # a hang guard (TCG is slow), not a measure
        self._seq = 0

    def __enter__(self) -> NetlinkDumps:
        return self

    def __exit__(self, *exc) -> None:
        self._sock.close()

    def dump(self, msg_type: int, payload: bytes) -> list[bytes]:
        """Every message of the answer (without nlmsghdr); OSError when the kernel refuses."""
        self._seq += 1
        self._sock.sendall(struct.pack("=IHHII", 16 + len(payload), msg_type, NLM_F_REQUEST | NLM_F_DUMP,
                                       self._seq, 0) + payload)
        out = []
        while True:
            buf = self._sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(buf):
                length, kind, _, _, _ = struct.unpack_from("=IHHII", buf, offset)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", buf, offset + 16)[0]
                    if code:
                        raise OSError(code, f"netlink dump: {os.strerror(code)}")
                else:
                    out.append(buf[offset + 16:offset + length])
                offset += (length + 3) & ~3 or len(buf)

    def virtual_servers(self, family: int) -> dict[VirtualServerKey, tuple[str, int, int]]:
        """The kernel's virtual servers: key -> (scheduler, flags, timeout)."""
        found = (virtual_server_of(m) for m in self.dump(family, _genl(IPVS_CMD_GET_SERVICE, b"")))
        return dict(item for item in found if item is not None)

    def real_servers(self, family: int, key: VirtualServerKey) -> set[RealServer]:
        return {real_server_of(m) for m in self.dump(family, _genl(IPVS_CMD_GET_DEST, _service_key(key)))}

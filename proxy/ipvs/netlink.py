"""IPVS-mode netlink writes packed by hand and sent many to one sendmsg.

pyroute2 0.9 puts each request through its asyncio loop and waits for the
answer: ~20 ms a request under TCG, so the 4000 requests of 1000 Services with
two endpoints took 80 s. The kernel's netlink_rcv_skb handles every message of
one send in turn and acks each, so a batch costs one system call per chunk.
pyroute2 still does the reads (dumps); these are only the writes. The layout
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

NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
NETLINK_ROUTE, NETLINK_GENERIC = 0, 16
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK

GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 0x10, 3, 1, 2
IPVS_GENL_NAME, IPVS_GENL_VERSION = "IPVS", 1
IPVS_CMD_NEW_SERVICE, IPVS_CMD_SET_SERVICE, IPVS_CMD_DEL_SERVICE = 1, 2, 3
IPVS_CMD_NEW_DEST, IPVS_CMD_DEL_DEST = 5, 7
IPVS_CMD_ATTR_SERVICE, IPVS_CMD_ATTR_DEST = 1, 2
(IPVS_SVC_ATTR_AF, IPVS_SVC_ATTR_PROTOCOL, IPVS_SVC_ATTR_ADDR, IPVS_SVC_ATTR_PORT, IPVS_SVC_ATTR_SCHED_NAME,
 IPVS_SVC_ATTR_FLAGS, IPVS_SVC_ATTR_TIMEOUT, IPVS_SVC_ATTR_NETMASK) = 1, 2, 3, 4, 6, 7, 8, 9
(IPVS_DEST_ATTR_ADDR, IPVS_DEST_ATTR_PORT, IPVS_DEST_ATTR_FWD_METHOD, IPVS_DEST_ATTR_WEIGHT,
 IPVS_DEST_ATTR_U_THRESH, IPVS_DEST_ATTR_L_THRESH, IPVS_DEST_ATTR_ADDR_FAMILY) = 1, 2, 3, 4, 5, 6, 11
RTM_NEWADDR, RTM_DELADDR, IFA_ADDRESS, IFA_LOCAL = 20, 21, 1, 2
FWD_MASQ = 0          # IP_VS_CONN_F_MASQ: NAT to the real server (pyroute2's default is 3, direct routing)
PROTOCOL_NUMBERS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP}
CHUNK = 256           # requests a send: their acks (36 bytes each) stay far below the receive buffer
# errors that mean the kernel already is as the request wanted: an add that finds the
# entry, a delete that does not (IPVS answers ESRCH/ENOENT, an address EADDRNOTAVAIL)
ALREADY_SO = {"add": {errno.EEXIST}, "del": {errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL}}


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _u16(v: int) -> bytes:
    return struct.pack("=H", v)


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def _service_attrs(key: VirtualServerKey, vs: VirtualServer | None) -> bytes:
    out = (attr(IPVS_SVC_ATTR_AF, _u16(socket.AF_INET)) + attr(IPVS_SVC_ATTR_PROTOCOL, _u16(PROTOCOL_NUMBERS[key.protocol]))
           + attr(IPVS_SVC_ATTR_ADDR, socket.inet_aton(key.address)) + attr(IPVS_SVC_ATTR_PORT, struct.pack("!H", key.port)))
    if vs is not None:       # a full entry: what add and set need
        out += (attr(IPVS_SVC_ATTR_SCHED_NAME, vs.scheduler.encode() + b"\0")
                + attr(IPVS_SVC_ATTR_FLAGS, struct.pack("=II", vs.flags, 0xFFFF))
                + attr(IPVS_SVC_ATTR_TIMEOUT, _u32(vs.affinity_timeout))
                + attr(IPVS_SVC_ATTR_NETMASK, b"\xff\xff\xff\xff"))
    return attr(IPVS_CMD_ATTR_SERVICE, out)


def _genl(cmd: int, attrs: bytes) -> bytes:
    return struct.pack("=BBH", cmd, IPVS_GENL_VERSION, 0) + attrs


def service_request(op: str, key: VirtualServerKey, vs: VirtualServer | None = None) -> bytes:
    """The generic netlink payload of an IPVS service add, set or del."""
    cmd = {"add": IPVS_CMD_NEW_SERVICE, "set": IPVS_CMD_SET_SERVICE, "del": IPVS_CMD_DEL_SERVICE}[op]
    return _genl(cmd, _service_attrs(key, vs if op != "del" else None))


def dest_request(op: str, key: VirtualServerKey, real: RealServer) -> bytes:
    """The generic netlink payload of a real server add or del in key's virtual server."""
    dest = (attr(IPVS_DEST_ATTR_ADDR, socket.inet_aton(real.address)) + attr(IPVS_DEST_ATTR_PORT, struct.pack("!H", real.port))
            + attr(IPVS_DEST_ATTR_FWD_METHOD, _u32(FWD_MASQ)) + attr(IPVS_DEST_ATTR_WEIGHT, _u32(real.weight))
            + attr(IPVS_DEST_ATTR_U_THRESH, _u32(0)) + attr(IPVS_DEST_ATTR_L_THRESH, _u32(0))
            + attr(IPVS_DEST_ATTR_ADDR_FAMILY, _u16(socket.AF_INET)))
    cmd = {"add": IPVS_CMD_NEW_DEST, "del": IPVS_CMD_DEL_DEST}[op]
    return _genl(cmd, _service_attrs(key, None) + attr(IPVS_CMD_ATTR_DEST, dest))


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
                data = b"".join(struct.pack("=IHHII", 16 + len(payload), msg_type, flags, start + i + 1, 0) + payload
                                for i, (msg_type, flags, payload, _, _) in enumerate(chunk))
                sock.sendall(data)
                for seq, code in _acks(sock, len(chunk)):
                    _, _, _, op, what = self._requests[seq - 1]
                    if code and code not in ALREADY_SO.get(op, ()):
                        first_errno = first_errno or code
                        failures.append(f"{what}: {os.strerror(code)}")
        self._requests.clear()
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise OSError(first_errno, f"netlink: {failures[0]}{more}")


def _acks(sock: socket.socket, count: int):
    """(sequence number, errno) of the next count acks."""
    seen = 0
    while seen < count:
        buf = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(buf):
            length, msg_type, _, seq, _ = struct.unpack_from("=IHHII", buf, offset)
            if msg_type == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", buf, offset + 16)
                seen += 1
                yield seq, -code
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

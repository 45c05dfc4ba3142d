"""Raw frames from many network namespaces at once, each named by where it was seen.

One AF_PACKET socket per namespace (opened while the thread is in it, like any
netlink socket here, then read from anywhere) sees every interface of that
namespace, both directions, the way `tcpdump -i any` does: the kernel tells
the interface and whether the frame was sent or received (PACKET_OUTGOING).

Frames come through a TPACKET_V2 receive ring, as libpcap reads them, for the
timestamp: the ring's is taken when the frame reaches the tap, while recvmsg's
SO_TIMESTAMPNS is the skb's own, which forwarding (bridge, ip_forward) clears,
so a forwarded frame would be stamped when this process reads it and the
order across namespaces would be lost. Only the standard library: decoding is
decode.py's job.
"""
from __future__ import annotations

import mmap
import select
import socket
import struct
import threading
import subprocess
from dataclasses import dataclass

from cni import netns as _netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V2 = 1
TP_STATUS_USER = 1
# struct tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan tci, vlan tpid, padding
_TP2_HDR = struct.Struct("IIIHHIIHH4x")
_SLL_AT = 32                 # TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): the sockaddr_ll follows
FRAME_SIZE = 16384           # bytes a slot holds: headers of any frame, whole frames up to jumbo size
FRAME_COUNT = 128            # slots per socket: 2 MiB of ring each


@dataclass(frozen=True)
class Frame:
    """One frame as one interface of one namespace saw it."""

    netns: str
    interface: str
    direction: str           # "in" | "out"
    time: float              # kernel timestamp, seconds, taken when the frame reached the tap
    data: bytes              # the frame, cut at FRAME_SIZE
    length: int = 0          # its length on the wire (0: len(data))


class SnifferError(Exception):
    pass


def compile_bpf(expression: str) -> bytes:
    """A tcpdump filter expression as a classic BPF program for Ethernet frames (tcpdump -ddd)."""
    try:
        res = subprocess.run(["tcpdump", "-ddd", "-y", "EN10MB", expression], capture_output=True, text=True)
    except FileNotFoundError:
        raise SnifferError("--filter needs tcpdump to compile the expression; install tcpdump") from None
    if res.returncode != 0:
        raise SnifferError(f"--filter {expression!r}: {res.stderr.strip().splitlines()[-1]} "
                           "(use tcpdump's syntax, e.g. 'tcp port 8080' or 'udp port 8472')")
    lines = res.stdout.split()
    count = int(lines[0])
    return b"".join(struct.pack("HBBI", *map(int, lines[1 + 4 * i:5 + 4 * i])) for i in range(count))


class _Ring:
    """One packet socket with its mmapped TPACKET_V2 ring, and the names of its namespace's links."""

    def __init__(self, sock: socket.socket, netns: str):
        self.sock, self.netns = sock, netns
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("IIII", FRAME_SIZE * FRAME_COUNT, 1,
                                                                  FRAME_SIZE, FRAME_COUNT))
        self.map = mmap.mmap(sock.fileno(), FRAME_SIZE * FRAME_COUNT)
        self.slot = 0
        self.names: dict[int, str] = {}
        self.refresh_names()

    def refresh_names(self) -> None:
        with _netns.entered(self.netns):
            self.names = dict(socket.if_nameindex())

    def drain(self, out: list[Frame]) -> None:
        while True:
            at = self.slot * FRAME_SIZE
            status, length, snaplen, mac, _net, sec, nsec, _tci, _tpid = _TP2_HDR.unpack_from(self.map, at)
            if not status & TP_STATUS_USER:
                return
            # sockaddr_ll: family, protocol, ifindex, hatype, pkttype, ...
            ifindex, _hatype, pkttype = struct.unpack_from("iHB", self.map, at + _SLL_AT + 4)
            data = self.map[at + mac: at + mac + snaplen]
            struct.pack_into("I", self.map, at, 0)   # hand the slot back to the kernel
            self.slot = (self.slot + 1) % FRAME_COUNT
            if ifindex not in self.names:
                self.refresh_names()    # a link made after we started (a new pod's veth)
            name = self.names.get(ifindex, f"if{ifindex}")
            if name != "lo":
                out.append(Frame(self.netns, name, "out" if pkttype == PACKET_OUTGOING else "in",
                                 sec + nsec / 1e9, data, length))

    def close(self) -> None:
        self.map.close()
        self.sock.close()


class Sniffer:
    """Sockets in several namespaces, read together."""

    def __init__(self):
        self._rings: dict[int, _Ring] = {}
        self._bpf: list = []          # keeps each filter's buffer alive while its socket is

    def open(self, netns: str, interface: str | None = None, bpf: bytes | None = None) -> None:
        """Listen in netns: on every interface but lo, or only on interface."""
        with _netns.entered(netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            try:
                if interface:
                    sock.bind((interface, ETH_P_ALL))
            except OSError as e:
                sock.close()
                raise SnifferError(f"no interface {interface!r} in netns {netns} ({e.strerror}); "
                                   f"list them with: ip -n {netns} link") from None
        if bpf:
            self._attach(sock, bpf)
        self._rings[sock.fileno()] = _Ring(sock, netns)

    def _attach(self, sock: socket.socket, program: bytes) -> None:
        import ctypes
        buf = ctypes.create_string_buffer(program)
        self._bpf.append(buf)
        fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def read(self, timeout: float) -> list[Frame]:
        """Whatever arrived within timeout seconds (returns as soon as something did)."""
        out: list[Frame] = []
        select.select(list(self._rings), [], [], max(timeout, 0))
        for ring in self._rings.values():   # every ring, not only those select named: a look at one slot each
            ring.drain(out)
        return out

    def close(self) -> None:
        # each packet socket's release waits for an RCU grace period (~25 ms): let them pass together,
        # off the caller's path
        rings = list(self._rings.values())
        self._rings.clear()
        self._bpf.clear()
        for ring in rings:
            ring.map.close()
        threading.Thread(target=lambda: [r.sock.close() for r in rings], daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

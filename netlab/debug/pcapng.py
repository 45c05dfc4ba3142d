"""A pcapng writer that names each packet's hop: one Interface Description Block
per (place, interface) with if_name "node/node-a:flannel.1", and per packet the
direction (epb_flags inbound/outbound) and a comment. Wireshark and `tshark -r`
show both (frame.interface_name, frame.comment); classic pcap has no room for
either, which is why merged captures are pcapng. Nanosecond timestamps.
"""
from __future__ import annotations

import struct

LINKTYPE_ETHERNET = 1
_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_OPT_COMMENT, _IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL, _EPB_FLAGS = 1, 2, 3, 9, 2
_DIRECTION_FLAGS = {"in": 1, "out": 2}


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    body = b"".join(struct.pack("<HH", code, len(value)) + _pad(value) for code, value in opts)
    return body + struct.pack("<HH", 0, 0)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


class PcapngWriter:
    def __init__(self, f):
        self._f = f
        self._ids: dict[str, int] = {}
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _options([(4, b"kube-netlab")])  # shb_userappl
        f.write(_block(_SHB, shb))

    def interface(self, name: str, description: str | None = None) -> int:
        """The id of the interface block for name, written on first use."""
        if name not in self._ids:
            opts = [(_IF_NAME, name.encode()), (_IF_TSRESOL, bytes([9]))]
            if description:
                opts.append((_IF_DESCRIPTION, description.encode()))
            self._f.write(_block(_IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 262144) + _options(opts)))
            self._ids[name] = len(self._ids)
        return self._ids[name]

    def packet(self, interface: str, time: float, data: bytes, *, direction: str | None = None,
               comment: str | None = None, length: int | None = None) -> None:
        iface = self.interface(interface)
        ns = int(round(time * 1e9))
        opts = []
        if direction in _DIRECTION_FLAGS:
            opts.append((_EPB_FLAGS, struct.pack("<I", _DIRECTION_FLAGS[direction])))
        if comment:
            opts.append((_OPT_COMMENT, comment.encode()))
        body = struct.pack("<IIIII", iface, ns >> 32, ns & 0xFFFFFFFF, len(data), max(length or 0, len(data)))
        self._f.write(_block(_EPB, body + _pad(data) + _options(opts)))


def write_frames(path: str, frames, name_of) -> int:
    """Write frames (sniff.Frame, any order) time-ordered to path; name_of(frame) -> (interface name, comment)."""
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        count = 0
        for frame in sorted(frames, key=lambda fr: fr.time):
            iface, comment = name_of(frame)
            w.packet(iface, frame.time, frame.data, direction=frame.direction, comment=comment, length=frame.length)
            count += 1
    return count

"""One frame, decoded down to what a person debugging a path reads: MACs, IPs,
ports, TCP flags, the ICMP error and the packet it quotes, and VXLAN taken
apart (the lab's port, 8472 by default; outer header kept beside the inner
frame). Only the scapy layers needed are imported (`import scapy.all` costs
more than a whole trace).
"""
from __future__ import annotations

from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

DEFAULT_VXLAN_PORT = 8472

_ICMP_TYPES = {0: "echo-reply", 3: "dest-unreach", 8: "echo-request", 11: "time-exceeded", 5: "redirect"}
_UNREACH = {0: "net-unreachable", 1: "host-unreachable", 2: "protocol-unreachable", 3: "port-unreachable",
            4: "frag-needed", 9: "net-prohibited", 10: "host-prohibited", 13: "admin-prohibited"}
_TCP_FLAGS = "FSRPAUEC"   # bit order of the flags byte, as tcpdump prints them: [S], [S.], [R.]


@dataclass(frozen=True)
class Encap:
    """The outer headers of a VXLAN frame."""

    vni: int
    outer_src: str
    outer_dst: str
    port: int            # outer UDP destination port
    sport: int           # outer UDP source port (the kernel hashes the inner flow into it)
    outer_src_mac: str
    outer_dst_mac: str

    def to_dict(self) -> dict:
        return {"type": "vxlan", "vni": self.vni, "outerSrc": self.outer_src, "outerDst": self.outer_dst,
                "port": self.port, "outerSport": self.sport}


@dataclass(frozen=True)
class Quoted:
    """The packet an ICMP error quotes (its first bytes, as the sender saw it)."""

    src: str
    dst: str
    proto: str
    ip_id: int
    sport: int | None
    dport: int | None


@dataclass(frozen=True)
class Decoded:
    src_mac: str
    dst_mac: str
    ethertype: int
    src: str | None = None
    dst: str | None = None
    proto: str | None = None          # TCP | UDP | ICMP | ARP | another IP protocol's number
    sport: int | None = None
    dport: int | None = None
    ip_id: int | None = None
    length: int | None = None         # IP total length
    df: bool = False
    tcp_flags: str = ""
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    next_hop_mtu: int | None = None   # ICMP frag-needed
    quoted: Quoted | None = None
    encap: Encap | None = None
    arp: str | None = None            # "who-has 10.244.1.3 tell 10.244.1.2"

    @property
    def is_ip(self) -> bool:
        return self.src is not None

    @property
    def is_icmp_error(self) -> bool:
        return self.icmp_type in (3, 11, 5) and self.quoted is not None

    def endpoint(self, side: str) -> str | None:
        """"10.244.1.2:41234" (or the bare IP for ICMP and others) for side "src" or "dst"."""
        ip, port = (self.src, self.sport) if side == "src" else (self.dst, self.dport)
        if ip is None:
            return None
        return f"{ip}:{port}" if port is not None else ip

    def line(self) -> str:
        """One line a packet: `VXLAN vni 1 192.168.56.11 > 192.168.56.12 | 10.244.1.2 > 10.244.2.3 TCP 8080 [S]`."""
        head = ""
        if self.encap:
            head = f"VXLAN vni {self.encap.vni} {self.encap.outer_src} > {self.encap.outer_dst} | "
        return head + self._inner_line()

    def _inner_line(self) -> str:
        if self.arp:
            return f"ARP {self.arp}"
        if not self.is_ip:
            return f"ethertype 0x{self.ethertype:04x} {self.src_mac} > {self.dst_mac}"
        text = f"{self.src} > {self.dst} {self.proto}"
        if self.proto in ("TCP", "UDP"):
            text += f" {self.dport}"
            if self.tcp_flags:
                text += f" [{self.tcp_flags}]"
            text += f" sport {self.sport}"
        elif self.proto == "ICMP":
            text += " " + icmp_name(self.icmp_type, self.icmp_code)
            if self.icmp_id is not None and self.icmp_type in (0, 8):
                text += f" id {self.icmp_id}"
            if self.next_hop_mtu:
                text += f" mtu {self.next_hop_mtu}"
            if self.quoted:
                q = self.quoted
                text += f" for {q.src} > {q.dst} {q.proto}" + (f" {q.dport}" if q.dport is not None else "")
        text += f" ipid {self.ip_id} len {self.length}" + (" DF" if self.df else "")
        return text


def icmp_name(kind: int | None, code: int | None) -> str:
    name = _ICMP_TYPES.get(kind, f"type {kind}")
    if kind == 3:
        name += " " + _UNREACH.get(code, f"code {code}")
    return name


def tcp_flags(value: int) -> str:
    """tcpdump's notation: S, S., R., F., P. ("." is ACK)."""
    letters = "".join(ch for bit, ch in enumerate(_TCP_FLAGS) if value & (1 << bit) and ch != "A")
    return letters + ("." if value & 0x10 else "")


def _ports(l4) -> tuple[int | None, int | None]:
    return (int(l4.sport), int(l4.dport)) if l4 is not None else (None, None)


def _quoted(icmp) -> Quoted | None:
    inner = icmp.getlayer(IPerror)
    if inner is None:
        return None
    l4 = inner.getlayer(TCPerror) or inner.getlayer(UDPerror)
    sport, dport = _ports(l4)
    return Quoted(inner.src, inner.dst, _proto_name(int(inner.proto)), int(inner.id), sport, dport)


def _proto_name(number: int) -> str:
    return {6: "TCP", 17: "UDP", 1: "ICMP"}.get(number, str(number))


def decode(data: bytes, vxlan_port: int = DEFAULT_VXLAN_PORT) -> Decoded:
    """Decode an Ethernet frame; a UDP datagram to vxlan_port is decoded as VXLAN, the
    fields then describe the inner frame and encap the outer one."""
    eth = Ether(data)
    outer = _decode_eth(eth)
    udp = eth.getlayer(UDP)
    if udp is not None and vxlan_port in (udp.dport,) and len(bytes(udp.payload)) >= 8 + 14:
        vx = VXLAN(bytes(udp.payload))
        inner_eth = vx.payload if isinstance(vx.payload, Ether) else Ether(bytes(vx.payload))
        inner = _decode_eth(inner_eth)
        encap = Encap(int(vx.vni), outer.src, outer.dst, int(udp.dport), int(udp.sport),
                      outer.src_mac, outer.dst_mac)
        return _with(inner, encap=encap)
    return outer


def _with(d: Decoded, **changes) -> Decoded:
    from dataclasses import replace
    return replace(d, **changes)


def _decode_eth(eth) -> Decoded:
    base = dict(src_mac=str(eth.src), dst_mac=str(eth.dst), ethertype=int(eth.type))
    arp = eth.getlayer(ARP)
    if arp is not None:
        text = (f"who-has {arp.pdst} tell {arp.psrc}" if arp.op == 1 else f"reply {arp.psrc} is-at {arp.hwsrc}")
        return Decoded(**base, proto="ARP", arp=text)
    ip = eth.getlayer(IP)
    if ip is None:
        return Decoded(**base)
    fields = dict(src=str(ip.src), dst=str(ip.dst), ip_id=int(ip.id), length=int(ip.len),
                  df=bool(int(ip.flags) & 0x2), proto=_proto_name(int(ip.proto)))
    tcp = ip.getlayer(TCP)
    udp = ip.getlayer(UDP)
    if isinstance(ip.payload, TCP):
        fields.update(zip(("sport", "dport"), _ports(tcp)), tcp_flags=tcp_flags(int(tcp.flags)))
    elif isinstance(ip.payload, UDP):
        fields.update(zip(("sport", "dport"), _ports(udp)))
    elif isinstance(ip.payload, ICMP):
        icmp = ip.payload
        fields.update(icmp_type=int(icmp.type), icmp_code=int(icmp.code))
        if icmp.type in (0, 8):
            fields["icmp_id"] = int(icmp.id)
        if icmp.type == 3 and icmp.code == 4:
            fields["next_hop_mtu"] = int(icmp.nexthopmtu)
        if icmp.type in (3, 5, 11):
            fields["quoted"] = _quoted(icmp)
    return Decoded(**base, **fields)

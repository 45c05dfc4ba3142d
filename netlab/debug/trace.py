"""kube-netlab trace: one marked probe through the real stack, seen on every
interface it crosses, with the reply's path, each NAT and the rule that did it,
and, when it is dropped, where and why (checked against the kernel).

The probe is a single IP packet written with a raw socket in the source's
namespace (IP_HDRINCL), so the kernel routes it like any of the pod's packets;
its IP ID marks it (NAT and VXLAN keep the IP ID), and the destination's own
stack answers (SYN-ACK or RST, the UDP echo, the echo reply, an ICMP error).
Reply packets are recognised by their tuple: the reverse of a tuple the probe
had on some hop (before or after NAT), or an ICMP error quoting the probe.
"""
from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cni import netns as _netns
from netlab.engine import LabError

from . import nat as natmod
from . import path as pathmod
from .sniff import Frame, Sniffer

SETTLE = 0.03          # seconds to keep reading after the reply reached the source (other sockets' last frames)
_MARKER = b"kube-netlab trace probe "


@dataclass(frozen=True)
class Probe:
    src: str
    dst: str
    proto: str            # tcp | udp | icmp
    sport: int | None
    dport: int | None
    ip_id: int
    size: int | None = None     # total IP length wanted (padding)
    df: bool = True

    @classmethod
    def new(cls, src: str, dst: str, proto: str, dport: int | None, *, size: int | None = None, df: bool = True,
            rng: random.Random | None = None) -> "Probe":
        rng = rng or random.SystemRandom()
        sport = rng.randrange(33000, 60999) if proto != "icmp" else None
        return cls(src, dst, proto, sport, dport, rng.randrange(1, 65535), size, df)

    def to_bytes(self) -> bytes:
        from scapy.layers.inet import ICMP, IP, TCP, UDP
        ip = IP(src=self.src, dst=self.dst, id=self.ip_id, flags="DF" if self.df else 0, ttl=64)
        if self.proto == "tcp":
            l4 = TCP(sport=self.sport, dport=self.dport, flags="S", seq=self.ip_id << 16, window=64240)
            header = 40
        elif self.proto == "udp":
            l4 = UDP(sport=self.sport, dport=self.dport)
            header = 28
        else:
            l4 = ICMP(type=8, id=self.ip_id, seq=1)
            header = 28
        payload = _MARKER + str(self.ip_id).encode()
        if self.proto == "tcp" and not self.size:
            payload = b""   # a plain SYN, as connect() sends
        if self.size:
            payload = (payload * (self.size // max(len(payload), 1) + 1))[: max(self.size - header, 0)]
        return bytes(ip / l4 / payload)

    def marks(self, d) -> bool:
        """Is this decoded packet the probe (on any hop, NATed or encapsulated)?"""
        return (d.is_ip and d.ip_id == self.ip_id and d.proto == self.proto.upper()
                and not (self.proto == "icmp" and d.icmp_type != 8))


@dataclass
class Seen:
    """A captured frame decoded, with where it was seen."""

    frame: Frame
    d: object                  # decode.Decoded
    where: str                 # node/node-a, default/echo-..., underlay, external

    def hop(self) -> dict:
        d = self.d
        # the MACs on the wire there: an encapsulated hop's are the outer frame's, the inner ones go with encap
        macs = (d.encap.outer_src_mac, d.encap.outer_dst_mac) if d.encap else (d.src_mac, d.dst_mac)
        encap = None
        if d.encap:
            encap = {**d.encap.to_dict(), "innerSrcMAC": d.src_mac, "innerDstMAC": d.dst_mac}
        return {"netns": self.frame.netns, "interface": self.frame.interface, "direction": self.frame.direction,
                "src": d.endpoint("src"), "dst": d.endpoint("dst"), "srcMAC": macs[0], "dstMAC": macs[1],
                "encap": encap,
                "where": self.where, "time": self.frame.time, "proto": d.proto,
                "flags": d.tcp_flags or None, "length": d.length, "summary": d.line()}


# --- pure analysis ---------------------------------------------------------------------------

_BRIDGE_LIKE = ("cni0", "flannel.", "underlay")


def _rank(seen: Seen) -> tuple:
    """Order frames with the same kernel timestamp the way the packet met them: a device's
    transmit before the peer's receive, and on receive the port or outer frame before the
    bridge or VXLAN device it feeds (on transmit the other way round)."""
    inner_dev = seen.frame.interface.startswith(_BRIDGE_LIKE)
    if seen.frame.direction == "out":
        return (seen.frame.time, 0, 0 if inner_dev else 1)
    return (seen.frame.time, 1, 1 if inner_dev else 0)


def order(seen: list[Seen]) -> list[Seen]:
    return sorted(seen, key=_rank)


def _tuple(d) -> tuple:
    return (d.src, d.sport, d.dst, d.dport)


def split_paths(seen: list[Seen], probe: Probe) -> tuple[list[Seen], list[Seen]]:
    """(the probe's hops, the reply's hops), each in the order the packet met them."""
    ordered = order([s for s in seen if s.d.is_ip])
    forward = [s for s in ordered if probe.marks(s.d)]
    tuples = {_tuple(s.d) for s in forward} | {(probe.src, probe.sport, probe.dst, probe.dport)}
    reply = []
    for s in ordered:
        d = s.d
        if probe.marks(d):
            continue
        if d.is_icmp_error and d.quoted.ip_id == probe.ip_id:
            reply.append(s)
        elif (d.dst, d.dport, d.src, d.sport) in tuples and not (d.proto == "ICMP" and d.icmp_type != 0):
            if d.proto == probe.proto.upper():
                reply.append(s)
    return forward, reply


def nat_steps(hops: list[Seen], probe: Probe, source_netns: str) -> list[dict]:
    """DNAT/SNAT where the probe's tuple changed inside one namespace (the packet as sent counts as
    the source namespace's first view: a node's own OUTPUT DNAT happens before any capture point)."""
    steps = []
    groups: list[tuple[str, list[Seen]]] = []
    for s in hops:
        if groups and groups[-1][0] == s.frame.netns:
            groups[-1][1].append(s)
        else:
            groups.append((s.frame.netns, [s]))
    for n, (netns, group) in enumerate(groups):
        first_src, first_dst = group[0].d.endpoint("src"), group[0].d.endpoint("dst")
        if n == 0 and netns == source_netns:
            first_src = f"{probe.src}:{probe.sport}" if probe.sport else probe.src
            first_dst = f"{probe.dst}:{probe.dport}" if probe.dport else probe.dst
        last = group[-1].d
        entry = "OUTPUT" if netns == source_netns else "PREROUTING"
        if last.endpoint("dst") != first_dst:
            steps.append({"type": "DNAT", "netns": netns, "where": group[0].where,
                          "from": first_dst, "to": last.endpoint("dst"), "rule": None, "entry": entry})
        if last.endpoint("src") != first_src:
            steps.append({"type": "SNAT", "netns": netns, "where": group[0].where,
                          "from": first_src, "to": last.endpoint("src"), "rule": None})
    return steps


def attribute(steps: list[dict], counted: dict[str, list], nft_listing: dict[str, str],
              service: str | None = None) -> None:
    """Fill each NAT step's rule: the counted iptables rule, else kube-proxy's nftables chain
    (of service, "ns/name", when known)."""
    for step in steps:
        rules = counted.get(step["netns"], [])
        listing = nft_listing.get(step["netns"], "")
        if step["type"] == "DNAT":
            found = natmod.dnat_rule(rules, step["to"], step.pop("entry", None)) or (
                listing and natmod.nft_dnat_rule(listing, _ip_and_port(step["from"])[0], step["to"], service,
                                                 _ip_and_port(step["from"])[1]))
        else:
            found = natmod.snat_rule(rules) or (listing and natmod.nft_masquerade_rule(listing))
        if found:
            step.update(found)


def _ip_and_port(address: str) -> tuple[str, str | None]:
    ip, _, port = address.partition(":")
    return ip, port or None


def verdict_of(forward: list[Seen], reply: list[Seen], probe: Probe) -> tuple[str, str | None]:
    """("delivered" | "dropped", a note): delivered when the destination's stack answered."""
    answers = [s for s in reply if not s.d.is_icmp_error]
    if answers:
        return "delivered", None
    errors = [s for s in reply if s.d.is_icmp_error]
    if errors and forward:
        err = errors[0].d
        final_dst = forward[-1].d.dst
        if err.icmp_type == 3 and err.icmp_code == 3 and err.src == final_dst:
            return "delivered", f"{final_dst} has nothing listening on {probe.proto.upper()} {forward[-1].d.dport}"
    return "dropped", None


def result_shape(src: str, dst: str, verdict: str, hops: list[dict], nat: list[dict], reply_hops: list[dict],
                 drop: dict | None, **more) -> dict:
    """The JSON trace -o json prints (issue 8's shape; the extra keys after it)."""
    return {"src": src, "dst": dst, "verdict": verdict, "hops": hops, "nat": nat,
            "reply": {"hops": reply_hops}, "drop": drop, **more}


# --- the kernel side ---------------------------------------------------------------------------

def _send(netns: str, packet: bytes, dst: str) -> OSError | None:
    with _netns.entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        sock.sendto(packet, (dst, 0))
        return None
    except OSError as e:
        return e
    finally:
        sock.close()


def _snapshots(node_netns: list[str]) -> dict[str, dict]:
    """iptables counters of every node (both backends: whichever the proxy or flannel used)."""
    def one(ns):
        snap = {}
        for backend in ("nft", "legacy"):
            for k, v in natmod.parse_counters(natmod.iptables_save(ns, backend)).items():
                snap[(backend,) + k] = v
        return ns, snap
    with ThreadPoolExecutor(max_workers=max(len(node_netns), 1)) as pool:
        return dict(pool.map(one, node_netns))


@dataclass
class TraceRun:
    """Everything one trace found; render with table() or as_dict()."""

    src: str
    dst: str
    probe: Probe
    forward: list[Seen] = field(default_factory=list)
    reply: list[Seen] = field(default_factory=list)
    nat: list[dict] = field(default_factory=list)
    verdict: str = "dropped"
    note: str | None = None
    drop: dict | None = None
    frames: list[Frame] = field(default_factory=list)
    elapsed: float = 0.0
    mode: str = ""
    unseen: list[str] = field(default_factory=list)   # places on another machine

    def as_dict(self) -> dict:
        p = self.probe
        return result_shape(self.src, self.dst, self.verdict, [s.hop() for s in self.forward], self.nat,
                            [s.hop() for s in self.reply], self.drop,
                            probe={"src": p.src, "sport": p.sport, "dst": p.dst, "dport": p.dport,
                                   "proto": p.proto, "ipID": p.ip_id, "length": len(p.to_bytes()), "df": p.df},
                            note=self.note, proxyMode=self.mode, seconds=round(self.elapsed, 3),
                            unseen=self.unseen)


def trace(lab_name: str, src: str, dst: str, *, namespace: str | None = None, port: int | None = None,
          proto: str = "tcp", size: int | None = None, df: bool = True, timeout: float = 1.0) -> TraceRun:
    from .decode import decode
    from .drops import diagnose

    started = time.monotonic()
    places = pathmod.LabPlaces(lab_name)
    source = places.place(src, namespace)
    if source.kind == "underlay":
        raise LabError("the underlay is a switch, it sends nothing: trace from a pod, node/NAME or external")
    dest = places.destination(dst, source=source, namespace=namespace, port=port, proto=proto)
    src_ip = source.ip
    if source.kind == "node":   # the node's own address toward dst, as the kernel would pick it
        src_ip = (pathmod.route_get(source.netns, dest.ip) or {}).get("prefsrc", source.ip)
    probe = Probe.new(src_ip, dest.ip, proto, dest.port, size=size, df=df)
    lab = places.lab
    run = TraceRun(f"{source.name} ({src_ip})", f"{dest.text} ({dest.address})", probe, mode=lab.proxy_mode)
    every = places.every_place()
    where = {p.netns: p.name for p in every}
    node_netns = [lab.node_netns(n) for n in lab.node_names]
    before = _snapshots(node_netns)

    with Sniffer() as sniffer:
        for p in every:
            if os.path.exists(_netns.path_of(p.netns)):
                sniffer.open(p.netns)
            else:   # a node of a multi-machine lab runs elsewhere: its hops cannot be seen from here
                run.unseen.append(p.name)
        error = _send(source.netns, probe.to_bytes(), dest.ip)
        deadline = time.monotonic() + (0 if error else timeout)
        answered_at = None
        while time.monotonic() < deadline:
            got = sniffer.read(min(deadline - time.monotonic(), 0.05))
            run.frames.extend(got)
            if answered_at is None and any(f.netns == source.netns and f.direction == "in" and _to(f, src_ip)
                                           for f in got):
                answered_at = time.monotonic()
                deadline = min(deadline, answered_at + SETTLE)
        run.frames.extend(sniffer.read(0))   # what reached the rings during the last wait

    seen = [Seen(f, decode(f.data, lab.vxlan.port), where.get(f.netns, f.netns)) for f in run.frames]
    run.forward, run.reply = split_paths(seen, probe)
    run.frames = [s.frame for s in run.forward + run.reply]
    after = _snapshots(node_netns)
    counted = {ns: natmod.counter_diff(before[ns], after[ns]) for ns in node_netns}
    run.nat = nat_steps(run.forward, probe, source.netns)
    nft = {}
    if lab.proxy_mode == "nftables":
        nft = {s["netns"]: natmod.nft_table(s["netns"]) for s in run.nat}
    attribute(run.nat, counted, nft, places.service_of(dest))
    for step in run.nat:
        step["conntrack"] = natmod.conntrack_entry(step["netns"], proto, probe.src, probe.sport)
    run.verdict, run.note = verdict_of(run.forward, run.reply, probe)
    if run.verdict == "dropped":
        run.drop = diagnose(places, probe, source, run.forward, run.reply, counted, send_error=error, dest=dest)
    run.elapsed = time.monotonic() - started
    return run


def _to(frame: Frame, ip: str) -> bool:
    """Cheap check on raw bytes: an IPv4 frame addressed to ip (the reply or an error reaching the source)."""
    data = frame.data
    return len(data) >= 34 and data[12:14] == b"\x08\x00" and socket.inet_ntoa(data[30:34]) == ip


# --- output ----------------------------------------------------------------------------------

def _hop_row(i: int, h: dict) -> list[str]:
    what = h["proto"] + (f" {h['flags']}" if h.get("flags") else "")
    return [str(i), h["where"], h["interface"], h["direction"], h["src"] or "-", h["dst"] or "-", what,
            h["srcMAC"], h["dstMAC"]]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _encap_line(h: dict) -> str | None:
    e = h.get("encap")
    return (f"      VXLAN vni {e['vni']} {e['outerSrc']} > {e['outerDst']} udp {e['outerSport']} > {e['port']}"
            if e else None)


def _path_lines(hops: list[dict]) -> list[str]:
    header = ["#", "WHERE", "INTERFACE", "DIR", "SRC", "DST", "PROTO", "SRC-MAC", "DST-MAC"]
    rows = _table([header] + [_hop_row(i, h) for i, h in enumerate(hops, 1)])
    out = [rows[0]]
    for i, h in enumerate(hops):
        out.append(rows[i + 1])
        if _encap_line(h):
            out.append(_encap_line(h))
    return out


def table(result: dict) -> str:
    p = result["probe"]
    lines = [f"trace {result['src']} -> {result['dst']}  {p['proto'].upper()} ipid {p['ipID']} "
             f"{p['length']} bytes{' DF' if p['df'] else ''}  [{result['proxyMode']} mode]"]
    lines.append("")
    lines += _path_lines(result["hops"]) if result["hops"] else ["(the probe was seen nowhere)"]
    for step in result["nat"]:
        lines.append("")
        lines.append(f"{step['type']} in {step['where']} ({step['netns']}): {step['from']} -> {step['to']}")
        if step.get("chains"):
            lines.append("  chains: " + " -> ".join(step["chains"]))
        lines.append(f"  rule:   {step['rule'] or '(not found: no counted rule or chain)'}")
        if step.get("conntrack"):
            lines.append(f"  conntrack: {step['conntrack']}")
    if result["reply"]["hops"]:
        lines += ["", "reply:"] + _path_lines(result["reply"]["hops"])
    lines.append("")
    if result.get("unseen"):
        lines.append("not seen (on another machine: run trace there too): " + ", ".join(result["unseen"]))
    verdict = result["verdict"].upper()
    if result["drop"]:
        d = result["drop"]
        lines.append(f"{verdict} at {d.get('where', d['netns'])}" + (f" {d['interface']}" if d["interface"] else "")
                     + f": {d['reason']}")
        if d.get("check"):
            lines.append(f"  check: {d['check']}")
    else:
        lines.append(verdict + (f" ({result['note']})" if result.get("note") else "")
                     + f" in {result['seconds']:.2f} s")
    return "\n".join(lines)


def write_svg(lab_name: str, result: dict, path: str) -> None:
    """The traced path (probe then reply) on the lab's graph, NAT steps and the drop noted."""
    from .graph import lab_graph, path_from_trace, render
    # a note names the chain that did it (KUBE-SEP-...); the whole rule is in the table and the JSON
    short = {**result, "nat": [{**n, "rule": n.get("chain") or n.get("rule")} for n in result["nat"]]}
    hops, notes = path_from_trace(short)
    svg = render(lab_graph(lab_name), "svg", highlight=hops, notes=notes)
    with open(path, "wb") as f:
        f.write(svg if isinstance(svg, bytes) else svg.encode())


def cmd_trace(a) -> int:
    from netlab.engine import resolve_lab
    if a.size is not None and not 28 <= a.size <= 65535:
        raise LabError(f"--size {a.size}: the probe's IP length must be 28..65535 bytes")
    if a.timeout <= 0:
        raise LabError(f"--timeout {a.timeout}: must be more than 0 seconds")
    run = trace(resolve_lab(a.lab), a.src, a.dst, namespace=a.namespace, port=a.port, proto=a.proto,
                size=a.size, df=not a.no_df, timeout=a.timeout)
    result = run.as_dict()
    if a.write:
        from .pcapng import write_frames
        write_frames(a.write, run.frames, lambda f: (f"{f.netns}:{f.interface}", f"{f.direction}"))
    if a.svg:
        write_svg(resolve_lab(a.lab), result, a.svg)
    if a.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(table(result))
    if a.write:
        print(f"{len(run.frames)} packets written to {a.write}", file=sys.stderr)
    return 0 if run.verdict == "delivered" else 1

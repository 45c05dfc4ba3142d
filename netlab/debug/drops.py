"""Why a probe died where it was last seen, each reason checked against the
kernel of that namespace: the send itself refused (MTU), an ICMP error someone
sent back, a REJECT/DROP rule whose counter moved (a Service without
endpoints), no route, no neighbour or FDB entry for the peer VTEP, an MTU
below the probe's size with DF, rp_filter.
"""
from __future__ import annotations

import errno
import json
import subprocess

from .decode import icmp_name
from .path import LabPlaces, Place, route_get


def _ip_json(netns: str, *argv: str) -> list:
    res = subprocess.run(["ip", "-n", netns, "-j", *argv], capture_output=True, text=True)
    try:
        return json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else []
    except ValueError:
        return []


def _bridge_fdb(netns: str, dev: str) -> list:
    res = subprocess.run(["bridge", "-n", netns, "-j", "fdb", "show", "dev", dev], capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else []


def _mtu(netns: str, dev: str) -> int | None:
    links = _ip_json(netns, "link", "show", "dev", dev)
    return links[0].get("mtu") if links else None


def _drop(netns: str, interface: str | None, reason: str, where: str, check: str | None = None) -> dict:
    return {"netns": netns, "interface": interface, "reason": reason, "where": where, "check": check}


def rule_reason(rule) -> str:
    """A refusing rule in words: kube-proxy's comment says when a Service has no endpoints."""
    if "has no endpoints" in rule.rule or "has no local endpoints" in rule.rule:
        return f"no endpoints: {rule.table} rule {rule.rule}"
    return f"{rule.target} by {rule.table} rule {rule.rule}"


def diagnose(places: LabPlaces, probe, source: Place, forward: list, reply: list, counted: dict,
             *, send_error: OSError | None = None, dest=None) -> dict:
    found = _diagnose(places, probe, source, forward, reply, counted, send_error)
    empty = _service_without_endpoints(places, dest)
    if empty:   # the cause a student needs first; what the kernel did about it stays in the reason
        found["reason"] = f"no endpoints: Service {empty} has no ready endpoints; " + found["reason"]
    return found


def _service_without_endpoints(places: LabPlaces, dest) -> str | None:
    if dest is None or dest.kind != "service":
        return None
    ready = [e for s in places.state.endpoint_slices(dest.name) for e in s.endpoints if e.ready]
    return None if ready else dest.name


def _diagnose(places: LabPlaces, probe, source: Place, forward: list, reply: list, counted: dict,
              send_error: OSError | None) -> dict:
    where = {p.netns: p.name for p in places.every_place()}
    length = len(probe.to_bytes())
    if send_error is not None:
        route = route_get(source.netns, probe.dst) or {}
        dev = route.get("dev")
        if send_error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return _drop(source.netns, dev, f"no route to {probe.dst} in {source.name}", source.name,
                         f"ip -n {source.netns} route get {probe.dst}")
        if send_error.errno == errno.EMSGSIZE:
            mtu = _mtu(source.netns, dev) if dev else None
            return _drop(source.netns, dev, f"MTU: the probe is {length} bytes with DF and {dev}'s MTU is {mtu}; "
                         "the sender's own stack refuses it", source.name, f"ip -n {source.netns} link show {dev}")
        return _drop(source.netns, dev, f"the send failed: {send_error.strerror}", source.name)

    for s in reply:   # someone said why
        d = s.d
        if not d.is_icmp_error:
            continue
        sender = where.get(s.frame.netns, s.frame.netns)
        if d.icmp_type == 3 and d.icmp_code == 4:
            return _drop(forward[-1].frame.netns if forward else source.netns,
                         forward[-1].frame.interface if forward else None,
                         f"MTU: {d.src} answered ICMP frag-needed (next-hop MTU {d.next_hop_mtu}) for a "
                         f"{length}-byte packet with DF", where.get(forward[-1].frame.netns) if forward else sender)
        refusing = [r for ns, rules in counted.items() for r in rules if r.target in ("REJECT", "DROP")]
        if refusing:
            ns = next(ns for ns, rules in counted.items() if refusing[0] in rules)
            return _drop(ns, None, rule_reason(refusing[0]) + f" (it answered ICMP {icmp_name(d.icmp_type, d.icmp_code)})",
                         where.get(ns, ns), f"ip netns exec {ns} iptables-save -c | grep -- '{refusing[0].chain}'")
        said = f"{d.src} answered ICMP {icmp_name(d.icmp_type, d.icmp_code)}"
        # the first frame of the error is where the kernel made it (an error is sent, never forwarded first)
        origin = s.frame.netns
        target = forward[-1].d.dst if forward else probe.dst
        if d.icmp_type == 3 and d.icmp_code in (0, 1) and route_get(origin, target) is None:
            return _drop(origin, forward[-1].frame.interface if forward else None,
                         f"no route to {target} in {sender} ({said})", sender, f"ip -n {origin} route get {target}")
        return _drop(s.frame.netns, None, said, sender)

    for ns, rules in counted.items():
        refusing = [r for r in rules if r.target in ("REJECT", "DROP")]
        if refusing:
            return _drop(ns, None, rule_reason(refusing[0]), where.get(ns, ns),
                         f"ip netns exec {ns} iptables-save -c | grep -- '{refusing[0].chain}'")

    if not forward:
        return _drop(source.netns, None, "the probe was seen on no interface, not even the source's", source.name)
    last = forward[-1]
    return at_last_hop(places, probe, last, length, where)


def at_last_hop(places: LabPlaces, probe, last, length: int, where: dict) -> dict:
    lab = places.lab
    ns, iface, name = last.frame.netns, last.frame.interface, where.get(last.frame.netns, last.frame.netns)
    dst, src = last.d.dst, last.d.src
    vxlan_dev = lab.vxlan.device
    if last.frame.direction == "out" and iface == vxlan_dev:
        return _vtep_reason(places, ns, iface, dst, name) or _unknown(ns, iface, name, last)
    if last.frame.direction == "out":
        # the next device refused it: a veth's peer checks its own MTU (is_skb_forwardable)
        peer = places.place_of_ip(dst)
        if peer is not None and peer.kind == "pod":
            mtu = _mtu(peer.netns, "eth0")
            if mtu and probe.df and length > mtu:
                return _drop(ns, iface, f"MTU: {peer.name}'s eth0 has MTU {mtu}, the probe is {length} bytes "
                             f"with DF; the veth drops it silently", name, f"ip -n {peer.netns} link show eth0")
        return _unknown(ns, iface, name, last)
    # seen coming in, never going out: routing, rp_filter, MTU of the way out
    route = route_get(ns, dst, "from", src, "iif", iface)
    if route is None:
        rp = _rp_filter(ns, iface)
        if rp and rp != "0":
            back = route_get(ns, src) or {}
            if back.get("dev") != iface:
                return _drop(ns, iface, f"rp_filter={rp} on {iface}: the way back to {src} is via "
                             f"{back.get('dev')}, not {iface}", name, f"ip netns exec {ns} sysctl net.ipv4.conf.{iface}.rp_filter")
        return _drop(ns, iface, f"no route to {dst} in {name}", name, f"ip -n {ns} route get {dst} from {src} iif {iface}")
    out_dev = route.get("dev")
    mtu = _mtu(ns, out_dev) if out_dev else None
    if mtu and probe.df and length > mtu:
        return _drop(ns, out_dev, f"MTU: {out_dev} has MTU {mtu}, the probe is {length} bytes with DF", name,
                     f"ip -n {ns} link show {out_dev}")
    if out_dev == places.lab.vxlan.device:
        found = _vtep_reason(places, ns, out_dev, dst, name)
        if found:
            return found
    return _unknown(ns, iface, name, last)


def _rp_filter(ns: str, iface: str) -> str | None:
    from netlab.realize.namespace import get_sysctl
    values = [get_sysctl(ns, f"net/ipv4/conf/{i}/rp_filter") for i in ("all", iface)]
    return max((v for v in values if v is not None), default=None)


def _vtep_reason(places: LabPlaces, ns: str, dev: str, dst: str, name: str) -> dict | None:
    """The overlay's three entries per peer (route via the peer's .0, its neighbour, its FDB entry)."""
    route = route_get(ns, dst)
    if route is None:
        return _drop(ns, dev, f"no route to {dst} in {name}", name, f"ip -n {ns} route get {dst}")
    gateway = route.get("gateway")
    if not gateway:
        return None
    peer = _peer_node(places, gateway)
    neigh = [n for n in _ip_json(ns, "neigh", "show", gateway, "dev", dev) if n.get("lladdr")]
    if not neigh:
        return _drop(ns, dev, f"no neighbour entry for {gateway} ({peer or 'the peer'}'s VTEP) on {dev}: "
                     "the kernel cannot address the inner frame", name, f"ip -n {ns} neigh show dev {dev}")
    mac = neigh[0]["lladdr"]
    fdb = [e for e in _bridge_fdb(ns, dev) if e.get("mac") == mac and e.get("dst")]
    if not fdb:
        peer_ip = str(places.lab.node(peer).underlay_ip) if peer else "its underlay IP"
        return _drop(ns, dev, f"no FDB entry for VTEP MAC {mac} ({peer or 'the peer'}, {peer_ip}) on {dev}: "
                     "the kernel does not know where to send the VXLAN packet and drops it", name,
                     f"bridge -n {ns} fdb show dev {dev}")
    return None


def _peer_node(places: LabPlaces, gateway: str) -> str | None:
    """The node whose flannel.1 address (the .0 of its subnet) is gateway."""
    for name, st in places.state.node_statuses().items():
        cidr = getattr(st, "pod_cidr", None)
        if cidr and cidr.split("/")[0] == gateway:
            return name
    return None


def _unknown(ns: str, iface: str, name: str, last) -> dict:
    return _drop(ns, iface, f"last seen going {last.frame.direction} on {iface}; no missing route, neighbour, "
                 f"FDB entry, MTU or counted rule found (look at drop counters: ip -n {ns} -s link)", name)

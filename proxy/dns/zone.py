"""Authoritative data: a Zone answers (name, type) from records, pure.

`cluster_zone()` builds the records of the Kubernetes DNS specification 1.1.0
from typed Services and EndpointSlices (kubernetes/dns docs/specification.md):

    dns-version.<zone>                         TXT "1.1.0"
    <svc>.<ns>.svc.<zone>                      A <clusterIP>          (ClusterIP, NodePort)
    _<port>._<proto>.<svc>.<ns>.svc.<zone>     SRV 0 100 <port> <svc>.<ns>.svc.<zone>.   (named ports)
    <d>.<c>.<b>.<a>.in-addr.arpa               PTR <svc>.<ns>.svc.<zone>.
    headless: <svc>... A per ready endpoint (none ready: NXDOMAIN), <hostname>.<svc>... A,
              SRV per ready endpoint x named port, PTR to <hostname>.<svc>...
              (no hostname: the dashed address, CoreDNS's choice of "system-assigned identifier")
    ExternalName: <svc>... CNAME <externalName>.
    <a>-<b>-<c>-<d>.<ns>.pod.<zone>            A a.b.c.d              (kubeadm's `pods insecure`)

plus the apex SOA and NS (CoreDNS's shape: ns.dns.<zone>, hostmaster.<zone>).
Reverse names are answered only for addresses inside the service and pod CIDRs;
other names are not ours (lookup returns None: forward them).
"""
from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from . import wire
from .wire import RR, A, AAAA, ANY, CNAME, NS, PTR, SOA, SRV, TXT

SPEC_VERSION = "1.1.0"
DEFAULT_TTL = 30
MAX_CNAME_CHAIN = 8


@dataclass
class Answer:
    rcode: int
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    chase: bytes | None = None   # a CNAME target outside our zones: the caller may ask the upstream


@dataclass(frozen=True)
class Apex:
    name: bytes                                       # wire, lower-case
    soa: RR
    claims: Callable[[bytes], bool] = lambda _name: True   # is this name (under the apex) ours?


class Zone:
    """Records by lower-case wire name and type, the apexes we are authoritative for,
    and synthesizers for names too many to list (pod records)."""

    def __init__(self, apexes: Iterable[Apex], records: Iterable[RR] = (),
                 synthesize: Callable[[bytes], list[RR] | None] | None = None):
        self.apexes = sorted(apexes, key=lambda a: -len(a.name))   # longest (most specific) first
        self.records: dict[bytes, dict[int, list[RR]]] = {}
        for rr in records:
            by_type = self.records.setdefault(rr.name, {})
            bucket = by_type.setdefault(rr.type, [])
            if rr not in bucket:
                bucket.append(rr)
        for apex in self.apexes:
            self.records.setdefault(apex.name, {}).setdefault(SOA, [apex.soa])
        # empty non-terminals exist (NODATA, not NXDOMAIN): every ancestor of a name up to its apex
        self.empty_non_terminals: set[bytes] = set()
        for name in self.records:
            apex = self.apex_of(name)
            for parent in list(wire.suffixes(name))[1:]:
                if apex is None or len(parent) < len(apex.name):
                    break
                if parent not in self.records:
                    self.empty_non_terminals.add(parent)
        self.synthesize = synthesize

    def apex_of(self, name: bytes) -> Apex | None:
        for apex in self.apexes:
            if wire.is_subdomain(name, apex.name) and apex.claims(name):
                return apex
        return None

    def names(self) -> list[bytes]:
        return list(self.records) + list(self.empty_non_terminals)

    def lookup(self, name: bytes, qtype: int) -> Answer | None:
        """The answer for a lower-case wire name, or None when the name is not in our zones."""
        apex = self.apex_of(name)
        if apex is None:
            return None
        ans = Answer(wire.NOERROR)
        seen = set()
        while True:
            by_type = self.records.get(name)
            if by_type is None and self.synthesize is not None:
                synthesized = self.synthesize(name)
                if synthesized is not None:
                    by_type = {}
                    for rr in synthesized:
                        by_type.setdefault(rr.type, []).append(rr)
            if by_type is None:
                if name not in self.empty_non_terminals:
                    if not ans.answer:
                        ans.rcode = wire.NXDOMAIN
                ans.authority.append(apex.soa)
                return ans
            cname = by_type.get(CNAME)
            if cname and qtype not in (CNAME, ANY):
                ans.answer += cname
                target = cname[0].rdata
                seen.add(name)
                target_apex = self.apex_of(target)
                if target in seen or len(seen) > MAX_CNAME_CHAIN:
                    return ans
                if target_apex is None:
                    ans.chase = target
                    return ans
                name, apex = target, target_apex
                continue
            if qtype == ANY:
                found = [rr for rrs in by_type.values() for rr in rrs]
            else:
                found = by_type.get(qtype, [])
            if not found:
                ans.authority.append(apex.soa)
                return ans
            ans.answer += found
            self._add_glue(ans, found)
            return ans

    def _add_glue(self, ans: Answer, found: list[RR]) -> None:
        """SRV and NS targets' addresses in the additional section, as CoreDNS sends them."""
        for rr in found:
            target = rr.rdata[3] if rr.type == SRV else rr.rdata if rr.type == NS else None
            if target is not None:
                for rr2 in self.records.get(target, {}).get(A, []):
                    if rr2 not in ans.additional:
                        ans.additional.append(rr2)


def soa_record(apex: bytes, mname: bytes, rname: bytes, ttl: int, serial: int = 1) -> RR:
    # CoreDNS's values: refresh 7200, retry 1800, expire 86400, minimum = the zone's TTL
    return RR(apex, SOA, ttl, (mname, rname, serial, 7200, 1800, 86400, ttl))


# --- the cluster zone ------------------------------------------------------

def reverse_name(ip: str) -> bytes:
    return wire.encode_name(ipaddress.ip_address(ip).reverse_pointer)


def reverse_apex(cidr: ipaddress.IPv4Network) -> bytes:
    """The in-addr.arpa zone holding a CIDR, cut at the octet boundary above it (10.96.0.0/12 -> 10.in-addr.arpa)."""
    octets = str(cidr.network_address).split(".")[:cidr.prefixlen // 8]
    return wire.encode_name(".".join(reversed(octets)) + ".in-addr.arpa")


def _reverse_address(name: bytes) -> ipaddress.IPv4Address | None:
    labels = wire.labels_of(name)
    if len(labels) != 6 or [x.lower() for x in labels[4:]] != [b"in-addr", b"arpa"]:
        return None
    try:
        if any(not x.isdigit() or (len(x) > 1 and x[0:1] == b"0") for x in labels[:4]):
            return None
        return ipaddress.IPv4Address(".".join(x.decode() for x in reversed(labels[:4])))
    except ValueError:
        return None


def dashed(ip: str) -> str:
    return ip.replace(".", "-").replace(":", "-")


def _pod_synthesizer(domain: bytes, ttl: int):
    """<a>-<b>-<c>-<d>.<ns>.pod.<zone> -> A a.b.c.d for any address (`pods insecure`);
    <ns>.pod.<zone> and pod.<zone> exist without records."""
    pod_zone = b"\x03pod" + domain
    depth = len(wire.labels_of(pod_zone))

    def synthesize(name: bytes) -> list[RR] | None:
        if not wire.is_subdomain(name, pod_zone):
            return None
        labels = wire.labels_of(name)[:-depth]
        if len(labels) < 2:
            return []
        if len(labels) != 2:
            return None
        parts = labels[0].split(b"-")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
            return None
        return [RR(name, A, ttl, ".".join(str(int(p)) for p in parts))]
    return synthesize


def cluster_zone(services: Iterable, slices: Iterable, *, domain: str = "cluster.local", ttl: int = DEFAULT_TTL,
                 service_cidr: str = "10.96.0.0/12", pod_cidr: str = "10.244.0.0/16",
                 dns_ip: str | None = None, serial: int = 1) -> Zone:
    """The cluster's zone and reverse zones from model.Service objects and EndpointSlices."""
    zone_name = wire.encode_name(domain)
    ns_name = wire.encode_name(f"ns.dns.{domain}")
    soa = soa_record(zone_name, ns_name, wire.encode_name(f"hostmaster.{domain}"), ttl, serial)
    records = [RR(zone_name, NS, ttl, ns_name), RR(wire.encode_name(f"dns-version.{domain}"), TXT, ttl, (SPEC_VERSION,))]
    if dns_ip:
        records.append(RR(ns_name, A, ttl, str(dns_ip)))

    cidrs = [ipaddress.IPv4Network(service_cidr), ipaddress.IPv4Network(pod_cidr)]
    apexes = [Apex(zone_name, soa)]
    for apex_name in dict.fromkeys(reverse_apex(c) for c in cidrs):
        apexes.append(Apex(apex_name, soa_record(apex_name, ns_name, soa.rdata[1], ttl, serial),
                           claims=lambda n: (ip := _reverse_address(n)) is not None and any(ip in c for c in cidrs)))

    ready_by_service: dict[str, dict] = {}
    for s in slices:
        for ep in s.endpoints:
            if ep.ready:
                entry = ready_by_service.setdefault(s.service_key, {}).setdefault(ep.address, [ep, set()])
                entry[1].update((p.name, p.protocol, p.port) for p in s.ports if p.name)

    for svc in services:
        records += service_records(svc, ready_by_service.get(f"{svc.namespace}/{svc.name}", {}), domain, ttl)
    return Zone(apexes, records, _pod_synthesizer(zone_name, ttl))


def service_records(svc, ready: dict, domain: str, ttl: int) -> list[RR]:
    """One Service's records; ready maps endpoint address -> [SliceEndpoint, {(port name, protocol, port)}]."""
    fqdn = f"{svc.name}.{svc.namespace}.svc.{domain}"
    name = wire.encode_name(fqdn)
    kind = getattr(svc, "type", "ClusterIP")
    out: list[RR] = []
    if kind == "ExternalName":
        target = getattr(svc, "external_name", None)
        if target:
            out.append(RR(name, CNAME, ttl, wire.encode_name(target)))
        return out
    if not svc.headless:
        if not svc.cluster_ip:
            return out   # not allocated yet
        out.append(RR(name, A, ttl, svc.cluster_ip))
        out.append(RR(reverse_name(svc.cluster_ip), PTR, ttl, name))
        for p in svc.ports:
            if p.name:
                out.append(RR(wire.encode_name(f"_{p.name}._{p.protocol.lower()}.{fqdn}"), SRV, ttl,
                              (0, 100, p.port, name)))
        return out
    # headless: the ready endpoints themselves; the SRV weights of one name share 100, as CoreDNS's do
    per_port = Counter((port_name, proto) for _ep, named in ready.values() for port_name, proto, _n in named)
    for address, (ep, named) in sorted(ready.items()):
        host = wire.encode_name(f"{ep.hostname or dashed(address)}.{fqdn}")
        out += [RR(name, A, ttl, address), RR(host, A, ttl, address), RR(reverse_name(address), PTR, ttl, host)]
        for port_name, proto, number in sorted(named):
            out.append(RR(wire.encode_name(f"_{port_name}._{proto.lower()}.{fqdn}"), SRV, ttl,
                          (0, max(1, 100 // per_port[port_name, proto]), number, host)))
    return out


def static_zone(answers: dict[str, str], ttl: int = 300) -> Zone:
    """The outside world as the lab's external host plays it: authoritative for every name,
    the given names' A records, NXDOMAIN for the rest."""
    soa = soa_record(wire.ROOT, wire.encode_name("ns.upstream.invalid"), wire.encode_name("hostmaster.upstream.invalid"),
                     ttl)
    records = []
    for name, ip in answers.items():
        rtype = AAAA if ipaddress.ip_address(ip).version == 6 else A
        records.append(RR(wire.encode_name(name), rtype, ttl, ip))
    return Zone([Apex(wire.ROOT, soa)], records)

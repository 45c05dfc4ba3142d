"""Service addresses: ClusterIPs from the lab's serviceCIDR and NodePorts
from its nodePortRange, as the API server's allocators hand them out. Pure.

    allocated = allocate_services(lab, lab.services, existing=state.services())

Rules, in order of precedence:
1. a Service keeps the addresses it already has (in `existing`, as stored
   after the last apply) while its manifest does not ask for others, so
   re-applying never moves a running Service;
2. an address the manifest asks for (`clusterIP`, `nodePort`) is honoured
   when it is in range and no other Service holds it;
3. the rest get the lowest free address (a bitmap allocator's first free
   bit). kube-apiserver picks at random; deterministic addresses mean a
   lab's ClusterIPs and NodePorts are the same on every run, which is what
   course material and tests need.
Reserved: the serviceCIDR's network and broadcast addresses, the kubernetes
Service's address (the first) and the cluster DNS address (spec.dnsIP).

Every problem is collected and raised together as ModelError, each naming
file, line, field and fix; nothing is returned half-allocated.
"""
from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

from . import addressing
from .errors import ModelError, Problem, show
from .workloads import Service, ServicePort, describe, problem_at

if TYPE_CHECKING:
    from .lab import Lab

KUBERNETES_SERVICE = "default/kubernetes"
DNS_SERVICE = "kube-system/kube-dns"


def allocate_services(lab: "Lab", services: Iterable[Service],
                      existing: Mapping[str, Service] | None = None) -> list[Service]:
    """services (the lab's whole desired set) with cluster_ip and every NodePort
    port's node_port set; headless and ExternalName Services unchanged.

    existing: the Services as allocated before, by "namespace/name" (what
    LabState.services() returns); those not in services are being deleted and
    free their addresses. Raises ModelError."""
    allocated, problems = _allocate(lab, list(services), existing or {})
    if problems:
        raise ModelError(problems)
    return allocated


def service_problems(lab: "Lab", services: Iterable[Service]) -> list[Problem]:
    """What allocate_services would refuse, without existing allocations."""
    return _allocate(lab, list(services), {})[1]


def _reserved(lab: "Lab") -> dict[IPv4Address, tuple[str, str]]:
    """Address -> (the Service it is kept for, what it is)."""
    return {lab.kubernetes_service_ip: (KUBERNETES_SERVICE, "belongs to the kubernetes Service"),
            lab.dns_ip: (DNS_SERVICE, "is the cluster DNS address (spec.dnsIP)")}


def _allocate(lab: "Lab", services: list[Service],
              existing: Mapping[str, Service]) -> tuple[list[Service], list[Problem]]:
    problems: list[Problem] = []
    ips = _cluster_ips(lab, services, existing, problems)
    node_ports = _node_ports(lab, services, existing, problems)
    out = []
    for i, svc in enumerate(services):
        ports = tuple(replace(p, node_port=node_ports.get((i, j), p.node_port)) for j, p in enumerate(svc.ports))
        out.append(replace(svc, cluster_ip=str(ips[i]) if i in ips else svc.cluster_ip, ports=ports))
    return out, problems


def _ip(text: str | None) -> IPv4Address | None:
    return IPv4Address(text) if text and text != "None" else None


def _cluster_ips(lab: "Lab", services: list[Service], existing: Mapping[str, Service],
                 problems: list[Problem]) -> dict[int, IPv4Address]:
    cidr = lab.service_cidr
    reserved = _reserved(lab)
    owner: dict[IPv4Address, Service] = {}
    chosen: dict[int, IPv4Address] = {}

    def usable(ip: IPv4Address, svc: Service) -> bool:
        return addressing.is_host_address(cidr, ip) and reserved.get(ip, (svc.key,))[0] == svc.key

    # 1. addresses Services already hold, unless their manifest now asks for another
    for i, svc in enumerate(services):
        old = existing.get(svc.key)
        held = _ip(old.cluster_ip) if old is not None and old.has_cluster_ip else None
        if svc.has_cluster_ip and held and _ip(svc.cluster_ip) in (None, held) and usable(held, svc) \
                and held not in owner:
            owner[held] = svc
            chosen[i] = held
    # 2. addresses asked for
    failed = set()
    for i, svc in enumerate(services):
        want = _ip(svc.cluster_ip)
        if i in chosen or want is None or not svc.has_cluster_ip:
            continue
        message = None
        if not addressing.is_host_address(cidr, want):
            message = f"{show(svc.cluster_ip)} is not in serviceCIDR {cidr}; use an address inside it or remove " \
                      "clusterIP to have one allocated"
        elif want in reserved and reserved[want][0] != svc.key:
            message = f"{show(svc.cluster_ip)} {reserved[want][1]}; use another or remove clusterIP"
        elif want in owner:
            message = f"{show(svc.cluster_ip)} is already used by {describe(owner[want])}; use another or " \
                      "remove clusterIP to have one allocated"
        if message:
            problems.append(problem_at(svc, "spec.clusterIP", message))
            failed.add(i)
            continue
        owner[want] = svc
        chosen[i] = want
    # 3. the lowest free address for the rest
    free = (ip for ip in _hosts(cidr) if ip not in owner and ip not in reserved)
    for i, svc in enumerate(services):
        if i in chosen or i in failed or not svc.has_cluster_ip:
            continue
        ip = next(free, None)
        if ip is None:
            problems.append(problem_at(svc, "spec", f"serviceCIDR {cidr} has no free address left for this "
                                                    "Service; use a larger spec.serviceCIDR or delete Services"))
            failed.add(i)
            continue
        chosen[i] = ip
    return chosen


def _hosts(cidr) -> Iterator[IPv4Address]:
    # IPv4Network.hosts() builds the whole list first; a /12 has a million addresses
    first, last = int(cidr.network_address) + 1, int(cidr.broadcast_address) - 1
    return (IPv4Address(n) for n in range(first, last + 1))


def _old_port(old: Service | None, port: ServicePort) -> ServicePort | None:
    """The port of the Service as allocated before that this port continues:
    same number and protocol, else same name and protocol."""
    if old is None or old.type != "NodePort":
        return None
    for match in (lambda p: (p.port, p.protocol) == (port.port, port.protocol),
                  lambda p: port.name is not None and (p.name, p.protocol) == (port.name, port.protocol)):
        for p in old.ports:
            if match(p) and p.node_port:
                return p
    return None


def _node_ports(lab: "Lab", services: list[Service], existing: Mapping[str, Service],
                problems: list[Problem]) -> dict[tuple[int, int], int]:
    """(service index, port index) -> nodePort. One nodePort belongs to one
    Service (the API server's allocator ignores the protocol), and within it to
    one port per protocol: a TCP and a UDP port may share it."""
    lo, hi = lab.node_port_range
    owner: dict[int, tuple[int, int]] = {}        # nodePort -> the first (service, port) holding it
    protocols: dict[int, set[str]] = {}
    chosen: dict[tuple[int, int], int] = {}

    def take(number: int, at: tuple[int, int]) -> None:
        owner.setdefault(number, at)
        protocols.setdefault(number, set()).add(services[at[0]].ports[at[1]].protocol)
        chosen[at] = number

    def node_port_ports() -> Iterator[tuple[int, int, Service, ServicePort]]:
        for i, svc in enumerate(services):
            if svc.type == "NodePort":
                for j, port in enumerate(svc.ports):
                    yield i, j, svc, port

    # 1. held
    for i, j, svc, port in node_port_ports():
        old = _old_port(existing.get(svc.key), port)
        held = old.node_port if old else None
        if held and port.node_port in (None, held) and lo <= held <= hi and held not in owner:
            take(held, (i, j))
    # 2. asked for
    failed = set()
    for i, j, svc, port in node_port_ports():
        want = port.node_port
        if (i, j) in chosen or want is None:
            continue
        rel = f"spec.ports[{j}].nodePort"
        message = None
        holder = owner.get(want)
        if not lo <= want <= hi:
            message = f"{want} is outside the lab's nodePortRange {lo}-{hi}; use a port inside it or remove " \
                      "nodePort to have one allocated"
        elif holder is not None and holder[0] != i:
            message = f"{want}/{port.protocol} is already used by {describe(services[holder[0]])}; use another " \
                      "or remove nodePort to have one allocated"
        elif holder is not None and port.protocol in protocols[want]:
            message = f"{want}/{port.protocol} is already used by spec.ports[{holder[1]}] of this Service; " \
                      "give each port its own nodePort"
        if message:
            problems.append(problem_at(svc, rel, message))
            failed.add((i, j))
            continue
        take(want, (i, j))
    # 3. the rest: a port number's TCP and UDP share a nodePort, as kube-apiserver allocates them
    free = (n for n in range(lo, hi + 1) if n not in owner)
    for i, j, svc, port in node_port_ports():
        if (i, j) in chosen or (i, j) in failed:
            continue
        sibling = next((chosen[(i, k)] for k, p in enumerate(svc.ports)
                        if (i, k) in chosen and p.port == port.port and p.protocol != port.protocol
                        and port.protocol not in protocols[chosen[(i, k)]]), None)
        number = sibling if sibling is not None else next(free, None)
        if number is None:
            problems.append(problem_at(svc, f"spec.ports[{j}]", f"nodePortRange {lo}-{hi} has no free port left; "
                                                                "use a larger spec.nodePortRange or delete "
                                                                "NodePort Services"))
            failed.add((i, j))
            continue
        take(number, (i, j))
    return chosen

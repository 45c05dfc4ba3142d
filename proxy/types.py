"""What a proxy backend is given, as kube-proxy's ServicePortName, ServicePort
and Endpoint: one record per service port, its endpoints, and the node it
runs on. Pure data and pure functions; the three backends (iptables,
nftables, ipvs) render these and nothing else.

Headless and ExternalName Services never reach a proxy (DNS serves them).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Protocol

MASQUERADE_MARK = 0x4000          # 1 << masqueradeBit (14), kube-proxy's default
DEFAULT_SYNC_PERIOD = 30.0        # kube-proxy's syncPeriod: full resync, repairs outside interference
DEFAULT_MIN_SYNC_PERIOD = 1.0     # kube-proxy's minSyncPeriod
PROTOCOLS = ("TCP", "UDP")


@dataclass(frozen=True, order=True)
class ServicePortName:
    """namespace/name plus the port's name; str() is kube-proxy's
    ServicePortName.String(), the input of its chain-name hashes."""

    namespace: str
    name: str
    port: str = ""          # the Service port's name; "" for a single unnamed port

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port}" if self.port else base

    @property
    def service(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service with a cluster IP, as a proxy sees it."""

    name: ServicePortName
    protocol: str                     # "TCP" | "UDP"
    cluster_ip: str
    port: int
    node_port: int = 0                # 0: not a NodePort
    external_ips: tuple[str, ...] = ()
    affinity_timeout: int = 0         # seconds of ClientIP affinity; 0: none
    external_policy_local: bool = False   # externalTrafficPolicy: Local
    internal_policy_local: bool = False   # internalTrafficPolicy: Local

    @property
    def proto(self) -> str:
        """Lower case, as iptables, nft and kube-proxy's hashes write it."""
        return self.protocol.lower()

    @property
    def has_external(self) -> bool:
        """Reached from outside the cluster (NodePort or externalIPs): gets a KUBE-EXT chain."""
        return bool(self.node_port or self.external_ips)


@dataclass(frozen=True, order=True)
class Endpoint:
    """One backend of one service port (EndpointSlice endpoint + resolved port)."""

    ip: str
    port: int
    node: str = ""
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"

    def is_local(self, node: str) -> bool:
        return self.node == node


@dataclass(frozen=True)
class ProxyNode:
    """The node a proxy programs: NodePorts answer on node_ips; traffic to a
    ClusterIP from outside cluster_cidr (the lab-wide pod CIDR, never the
    node's /24) is masqueraded."""

    name: str
    node_ips: tuple[str, ...]
    cluster_cidr: str
    masquerade_mark: int = MASQUERADE_MARK

    @property
    def mark(self) -> str:
        return f"{self.masquerade_mark:#x}"


def check_node(node: ProxyNode) -> ProxyNode:
    """Refuse a node the rules cannot be written for, naming the field and the fix."""
    try:
        ipaddress.ip_network(node.cluster_cidr, strict=False)
    except ValueError:
        raise ValueError(f"ProxyNode.cluster_cidr={node.cluster_cidr!r} is not a CIDR; "
                         "give the lab-wide pod CIDR, e.g. 10.244.0.0/16") from None
    for ip in node.node_ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"ProxyNode.node_ips has {ip!r}, not an IP address; "
                             "give the node's addresses, e.g. ('192.168.56.11',)") from None
    if not 0 < node.masquerade_mark < 2 ** 32:
        raise ValueError(f"ProxyNode.masquerade_mark={node.masquerade_mark!r}: give one bit, e.g. 0x4000")
    return node


@dataclass(frozen=True)
class ProxyState:
    """Everything one sync needs: services by name, endpoints by service port."""

    services: Mapping[ServicePortName, ServicePort] = field(default_factory=dict)
    endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]] = field(default_factory=dict)

    def endpoints_of(self, name: ServicePortName) -> tuple[Endpoint, ...]:
        return tuple(self.endpoints.get(name, ()))


@dataclass(frozen=True)
class Endpoints:
    """Which endpoints a node sends a service port's traffic to
    (kube-proxy's CategorizeEndpoints, pkg/proxy/topology.go)."""

    cluster: tuple[Endpoint, ...]     # for traffic under the Cluster policy
    local: tuple[Endpoint, ...]       # for traffic under the Local policy (this node's)
    all_reachable: tuple[Endpoint, ...]  # union: every endpoint some rule may DNAT to
    has_any: bool                     # any endpoint at all (no endpoints: REJECT)


def _usable(eps: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """Ready endpoints; with none ready, serving-and-terminating ones (graceful termination)."""
    ready = tuple(e for e in eps if e.ready)
    if ready:
        return ready
    return tuple(e for e in eps if e.serving and e.terminating)


def categorize(svc: ServicePort, eps: tuple[Endpoint, ...], node: str) -> Endpoints:
    """Cluster and Local endpoint lists for svc on node, sorted for stable rules."""
    eps = tuple(sorted(eps, key=lambda e: (e.ip, e.port)))
    usable = _usable(eps)
    cluster = usable if not svc.internal_policy_local else ()
    local: tuple[Endpoint, ...] = ()
    if svc.internal_policy_local or (svc.external_policy_local and svc.has_external):
        local = _usable(tuple(e for e in eps if e.is_local(node)))
    if svc.internal_policy_local and not svc.external_policy_local and svc.has_external:
        cluster = usable  # external traffic still goes cluster-wide
    reachable = tuple(sorted(set(cluster) | set(local), key=lambda e: (e.ip, e.port)))
    return Endpoints(cluster, local, reachable, bool(usable))


def stale_udp_endpoints(old: ProxyState, new: ProxyState) -> list[tuple[ServicePort, Endpoint]]:
    """UDP endpoints that went away (or stopped being usable): their conntrack
    entries must be flushed, or a client reusing its socket keeps DNAT-ing to
    the dead pod (kubernetes#19029)."""
    out = []
    for name, svc in old.services.items():
        if svc.protocol != "UDP":
            continue
        before = set(_usable(old.endpoints_of(name)))
        after = set(_usable(new.endpoints_of(name))) if name in new.services else set()
        out += [(svc, e) for e in sorted(before - after, key=lambda e: (e.ip, e.port))]
    return out


def udp_services_gaining_endpoints(old: ProxyState, new: ProxyState) -> list[ServicePort]:
    """UDP service ports that had no usable endpoint and now have one: conntrack
    entries made while packets were rejected must go (kubernetes#48370)."""
    out = []
    for name, svc in new.services.items():
        if svc.protocol == "UDP" and _usable(new.endpoints_of(name)) and not _usable(old.endpoints_of(name)):
            out.append(svc)
    return out


def changed_services(old: ProxyState, new: ProxyState) -> frozenset[ServicePortName]:
    """Service ports whose definition or endpoints differ: what a partial sync rewrites."""
    names = set(old.services) | set(new.services)
    return frozenset(n for n in names
                     if old.services.get(n) != new.services.get(n)
                     or sorted(old.endpoints_of(n)) != sorted(new.endpoints_of(n)))


@dataclass
class SyncResult:
    full: bool                        # a full sync (everything rewritten)
    seconds: float = 0.0
    size: int = 0                     # rule lines / elements written
    error: str | None = None          # the kernel refused; previous rules stay, next sync is full


class Proxier(Protocol):
    """A proxy backend for one node, run inside that node's network namespace."""

    mode: str

    def sync(self, state: ProxyState, changed: frozenset[ServicePortName] | None = None) -> SyncResult:
        """Converge the kernel to state. changed: the service ports that differ from
        the last successful sync (None: a full sync). Never raises for a rejected
        rule set: returns it in SyncResult.error and does a full sync next time."""
        ...

    def cleanup(self) -> None:
        """Remove every rule, chain, table, set, virtual server and device of this mode."""
        ...

"""What IPVS mode wants in the kernel for one state, as pure data: virtual
servers with their real servers, the addresses on kube-ipvs0, and the
iptables-restore text of the KUBE-* rules IPVS mode still needs (K/K
pkg/proxy/ipvs/proxier.go). No kernel access; the proxier diffs this against
what the kernel has.

Sets: kube-proxy matches ClusterIPs, NodePorts and hairpin endpoints through
ipsets (KUBE-CLUSTER-IP, KUBE-NODE-PORT-TCP/UDP, KUBE-LOOP-BACK). The `ipset`
tool is not part of this lab's toolset (Debian's iptables does not pull it
in), so each set member becomes one iptables rule (commented with the
service port's name) matching exactly what the set entry would.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from proxy.types import check_node  # noqa: F401  (one check of ProxyNode for every mode)
from proxy.types import Endpoint, ProxyNode, ProxyState, ServicePortName, categorize

DUMMY_DEVICE = "kube-ipvs0"          # kube-proxy's defaultDummyDevice
SCHEDULER = "rr"                     # kube-proxy's defaultScheduler
FLAG_PERSISTENT = 0x0001             # IP_VS_SVC_F_PERSISTENT: ClientIP affinity
SYSCTLS = {                          # what kube-proxy sets in IPVS mode
    "net/ipv4/vs/conntrack": 1,      # keep conntrack entries, so iptables NAT (masquerade) applies
    "net/ipv4/vs/expire_nodest_conn": 1,        # drop connections to removed real servers at once
    "net/ipv4/vs/expire_quiescent_template": 1,  # affinity templates of removed servers expire
    "net/ipv4/ip_forward": 1,
}

# Our chains per table; each is declared (and so flushed) in every restore.
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODE-PORT")
FILTER_CHAINS = ("KUBE-FORWARD",)
# (table, built-in chain, our chain, comment): installed at the top, as kube-proxy's Prepend
JUMPS = (
    ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
    ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
)


@dataclass(frozen=True, order=True)
class VirtualServerKey:
    """What identifies an IPVS virtual service: `ipvsadm -Ln` prints it as `TCP  10.96.0.10:53`."""

    protocol: str      # "TCP" | "UDP"
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.protocol} {self.address}:{self.port}"


@dataclass(frozen=True, order=True)
class RealServer:
    address: str
    port: int
    weight: int = 1

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class VirtualServer:
    key: VirtualServerKey
    service: ServicePortName
    real_servers: tuple[RealServer, ...]
    scheduler: str = SCHEDULER
    affinity_timeout: int = 0          # seconds; 0: no persistence

    @property
    def flags(self) -> int:
        return FLAG_PERSISTENT if self.affinity_timeout else 0

    def same_settings(self, scheduler: str, flags: int, timeout: int) -> bool:
        """True when a kernel virtual server with these settings needs no edit."""
        return (scheduler, flags & FLAG_PERSISTENT, timeout if flags & FLAG_PERSISTENT else 0) == \
            (self.scheduler, self.flags, self.affinity_timeout)


@dataclass(frozen=True)
class IpvsPlan:
    virtual_servers: dict[VirtualServerKey, VirtualServer] = field(default_factory=dict)
    addresses: frozenset[str] = frozenset()       # /32s on kube-ipvs0

    def of_services(self, names: frozenset[ServicePortName]) -> list[VirtualServer]:
        return [vs for vs in self.virtual_servers.values() if vs.service in names]


def _real_servers(eps: tuple[Endpoint, ...]) -> tuple[RealServer, ...]:
    return tuple(sorted({RealServer(e.ip, e.port) for e in eps}))


def plan(state: ProxyState, node: ProxyNode) -> IpvsPlan:
    """Virtual servers: one per ClusterIP, per externalIP and per (node IP, nodePort);
    addresses: every ClusterIP and externalIP that is not already a node IP."""
    servers: dict[VirtualServerKey, VirtualServer] = {}
    addresses: set[str] = set()
    for name, svc in sorted(state.services.items()):
        eps = categorize(svc, state.endpoints_of(name), node.name)
        internal = _real_servers(eps.local if svc.internal_policy_local else eps.cluster)
        external = _real_servers(eps.local if svc.external_policy_local else eps.cluster)

        def add(address: str, port: int, reals: tuple[RealServer, ...]) -> None:
            key = VirtualServerKey(svc.protocol, address, port)
            servers[key] = VirtualServer(key, name, reals, affinity_timeout=svc.affinity_timeout)

        add(svc.cluster_ip, svc.port, internal)
        addresses.add(svc.cluster_ip)
        for ip in svc.external_ips:
            add(ip, svc.port, external)
            if ip not in node.node_ips:
                addresses.add(ip)
        if svc.node_port:
            for ip in node.node_ips:
                add(ip, svc.node_port, external)
    return IpvsPlan(servers, frozenset(addresses))


# --- iptables ----------------------------------------------------------------

def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


def _match(proto: str, port: int) -> str:
    return f"-p {proto} -m {proto} --dport {port}"


def iptables_rules(state: ProxyState, node: ProxyNode) -> str:
    """The iptables-restore input (for `--noflush`) of kube-proxy's IPVS-mode rules."""
    mark = node.mark
    nat_services: list[str] = []
    nodeports: list[str] = []
    hairpin: set[tuple[str, str, int]] = set()
    for name, svc in sorted(state.services.items()):
        proto = svc.proto
        nat_services.append(
            f"-A KUBE-SERVICES ! -s {node.cluster_cidr} -d {svc.cluster_ip}/32 {_match(proto, svc.port)} "
            f"{_comment(f'{name} cluster IP')} "
            f"-j KUBE-MARK-MASQ")
        if not svc.external_policy_local:   # Local policy keeps the client's address
            for ip in svc.external_ips:
                nat_services.append(
                    f"-A KUBE-SERVICES -d {ip}/32 {_match(proto, svc.port)} "
                    f"{_comment(f'{name} external IP')} "
                    f"-j KUBE-MARK-MASQ")
            if svc.node_port:
                nodeports.append(
                    f"-A KUBE-NODE-PORT {_match(proto, svc.node_port)} "
                    f"{_comment(f'{name} nodePort')} "
                    f"-j KUBE-MARK-MASQ")
        for ep in categorize(svc, state.endpoints_of(name), node.name).all_reachable:
            hairpin.add((ep.ip, proto, ep.port))
    loop_back = [f"-A KUBE-POSTROUTING -s {ip}/32 -d {ip}/32 {_match(proto, port)} "
                 f"{_comment('Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose')} "
                 f"-j MASQUERADE" for ip, proto, port in sorted(hairpin)]
    lines = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS),
             *nat_services,
             "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
             *nodeports,
             f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}",
             *loop_back,
             f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
             f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
             f"-A KUBE-POSTROUTING {_comment('kubernetes service traffic requiring SNAT')} -j MASQUERADE",
             "COMMIT",
             "*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS),
             "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
             f"-A KUBE-FORWARD {_comment('kubernetes forwarding rules')} -m mark --mark {mark}/{mark} -j ACCEPT",
             f"-A KUBE-FORWARD {_comment('kubernetes forwarding conntrack rule')} "
             "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
             "COMMIT"]
    return "\n".join(lines) + "\n"


def jump_rule(table: str, builtin: str, chain: str, comment: str) -> list[str]:
    """The argv tail (after `-t table -I/-C/-D`) of one jump rule."""
    return [builtin, "-m", "comment", "--comment", comment, "-j", chain]

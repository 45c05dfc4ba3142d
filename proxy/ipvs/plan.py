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
from typing import Iterable

from proxy.types import check_node  # noqa: F401  (one check of ProxyNode for every mode)
from proxy.types import Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName, categorize

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
class ServicePlan:
    """What one service port wants in the kernel: its virtual servers, its
    addresses on kube-ipvs0 and its nat rules as (chain, rule) pairs."""

    virtual_servers: tuple[VirtualServer, ...] = ()
    addresses: frozenset[str] = frozenset()
    rules: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IpvsPlan:
    virtual_servers: dict[VirtualServerKey, VirtualServer] = field(default_factory=dict)
    addresses: frozenset[str] = frozenset()       # /32s on kube-ipvs0
    services: dict[ServicePortName, ServicePlan] = field(default_factory=dict)
    # how many service ports want each address and nat rule: shared ones (an
    # externalIP, an endpoint's hairpin rule) go only when the last user goes
    address_users: dict[str, int] = field(default_factory=dict)
    rule_users: dict[tuple[str, str], int] = field(default_factory=dict)

    def of_services(self, names: frozenset[ServicePortName]) -> list[VirtualServer]:
        return [vs for vs in self.virtual_servers.values() if vs.service in names]


@dataclass(frozen=True)
class RuleChanges:
    """The nat rules a partial sync adds and deletes (those whose user count went from or to 0)."""

    added: tuple[tuple[str, str], ...] = ()
    deleted: tuple[tuple[str, str], ...] = ()

    def restore_text(self) -> str:
        """iptables-restore --noflush input: no chain is declared (so none is flushed);
        new rules go first in their chain, ahead of the fixed rules that end each chain."""
        if not (self.added or self.deleted):
            return ""
        return "\n".join(["*nat", *(f"-D {chain} {rule}" for chain, rule in self.deleted),
                           *(f"-I {chain} 1 {rule}" for chain, rule in self.added), "COMMIT"]) + "\n"


def _real_servers(eps: tuple[Endpoint, ...]) -> tuple[RealServer, ...]:
    return tuple(sorted({RealServer(e.ip, e.port) for e in eps}))


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


def _match(proto: str, port: int) -> str:
    return f"-p {proto} -m {proto} --dport {port}"


HAIRPIN_COMMENT = "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"


def plan_service(name: ServicePortName, svc: ServicePort, eps: tuple[Endpoint, ...], node: ProxyNode) -> ServicePlan:
    """Virtual servers: one per ClusterIP, per externalIP and per (node IP, nodePort);
    addresses: the ClusterIP and each externalIP that is not already a node IP;
    rules: kube-proxy's IPVS-mode masquerade matches (ipset members, see above)."""
    c = categorize(svc, eps, node.name)
    internal = _real_servers(c.local if svc.internal_policy_local else c.cluster)
    external = _real_servers(c.local if svc.external_policy_local else c.cluster)
    servers = []

    def add(address: str, port: int, reals: tuple[RealServer, ...]) -> None:
        key = VirtualServerKey(svc.protocol, address, port)
        servers.append(VirtualServer(key, name, reals, affinity_timeout=svc.affinity_timeout))

    add(svc.cluster_ip, svc.port, internal)
    addresses = {svc.cluster_ip}
    for ip in svc.external_ips:
        add(ip, svc.port, external)
        if ip not in node.node_ips:
            addresses.add(ip)
    if svc.node_port:
        for ip in node.node_ips:
            add(ip, svc.node_port, external)
    proto = svc.proto
    rules = [("KUBE-SERVICES", f"! -s {node.cluster_cidr} -d {svc.cluster_ip}/32 {_match(proto, svc.port)} "
                               f"{_comment(f'{name} cluster IP')} -j KUBE-MARK-MASQ")]
    if not svc.external_policy_local:   # Local policy keeps the client's address
        rules += [("KUBE-SERVICES", f"-d {ip}/32 {_match(proto, svc.port)} {_comment(f'{name} external IP')} "
                                    "-j KUBE-MARK-MASQ") for ip in svc.external_ips]
        if svc.node_port:
            rules.append(("KUBE-NODE-PORT", f"{_match(proto, svc.node_port)} {_comment(f'{name} nodePort')} "
                                            "-j KUBE-MARK-MASQ"))
    rules += [("KUBE-POSTROUTING", f"-s {ep.ip}/32 -d {ep.ip}/32 {_match(proto, ep.port)} "
                                   f"{_comment(HAIRPIN_COMMENT)} -j MASQUERADE") for ep in c.all_reachable]
    return ServicePlan(tuple(servers), frozenset(addresses), tuple(dict.fromkeys(rules)))


def _count(users: dict, keys, step: int) -> list:
    """Add step to each key's user count; the keys whose count went from or to 0."""
    crossed = []
    for key in keys:
        count = users.get(key, 0) + step
        if count:
            users[key] = count
        else:
            users.pop(key, None)
        if count == (1 if step > 0 else 0):
            crossed.append(key)
    return crossed


def plan(state: ProxyState, node: ProxyNode) -> IpvsPlan:
    """Everything state wants on node."""
    return replan(IpvsPlan(), state, node, frozenset(state.services))[0]


def replan(previous: IpvsPlan, state: ProxyState, node: ProxyNode,
           changed: frozenset[ServicePortName]) -> tuple[IpvsPlan, RuleChanges]:
    """previous with the changed service ports planned again from state (the
    others kept as they are), and the nat rules that came and went."""
    services, servers = dict(previous.services), dict(previous.virtual_servers)
    address_users, rule_users = dict(previous.address_users), dict(previous.rule_users)
    added: list[tuple[str, str]] = []
    deleted: list[tuple[str, str]] = []
    for name in sorted(changed):
        old = services.pop(name, None)
        if old is not None:
            for vs in old.virtual_servers:
                servers.pop(vs.key, None)
            _count(address_users, old.addresses, -1)
            deleted += _count(rule_users, old.rules, -1)
        svc = state.services.get(name)
        if svc is not None:
            new = services[name] = plan_service(name, svc, state.endpoints_of(name), node)
            servers.update((vs.key, vs) for vs in new.virtual_servers)
            _count(address_users, new.addresses, +1)
            added += _count(rule_users, new.rules, +1)
    # a rule deleted for one service port and added for another stays as it is
    gone, came = set(deleted) - set(added), set(added) - set(deleted)
    changes = RuleChanges(tuple(r for r in added if r in came), tuple(r for r in deleted if r in gone))
    return IpvsPlan(servers, frozenset(address_users), services, address_users, rule_users), changes


# --- iptables ----------------------------------------------------------------

def restore_text(want: IpvsPlan, node: ProxyNode, jumps: Iterable[tuple[str, str, str, str]] = ()) -> str:
    """The iptables-restore input (for `--noflush`) of kube-proxy's IPVS-mode rules:
    every chain declared, so rewritten whole; jumps (of JUMPS) inserted at the top
    of their built-in chains."""
    mark = node.mark
    inserts = {table: [f"-I {builtin} 1 {_comment(comment)} -j {chain}" for t, builtin, chain, comment in jumps
                       if t == table] for table in ("nat", "filter")}
    by_chain: dict[str, dict[str, None]] = {"KUBE-SERVICES": {}, "KUBE-NODE-PORT": {}, "KUBE-POSTROUTING": {}}
    for name in sorted(want.services):
        for chain, rule in want.services[name].rules:
            by_chain[chain][rule] = None
    lines = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS),
             *(f"-A KUBE-SERVICES {rule}" for rule in by_chain["KUBE-SERVICES"]),
             "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
             *(f"-A KUBE-NODE-PORT {rule}" for rule in by_chain["KUBE-NODE-PORT"]),
             f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}",
             *(f"-A KUBE-POSTROUTING {rule}" for rule in sorted(by_chain["KUBE-POSTROUTING"])),
             f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
             f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
             f"-A KUBE-POSTROUTING {_comment('kubernetes service traffic requiring SNAT')} -j MASQUERADE",
             *inserts["nat"],
             "COMMIT",
             "*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS),
             "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
             f"-A KUBE-FORWARD {_comment('kubernetes forwarding rules')} -m mark --mark {mark}/{mark} -j ACCEPT",
             f"-A KUBE-FORWARD {_comment('kubernetes forwarding conntrack rule')} "
             "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
             *inserts["filter"],
             "COMMIT"]
    return "\n".join(lines) + "\n"


def iptables_rules(state: ProxyState, node: ProxyNode) -> str:
    """The iptables-restore input (for `--noflush`) of kube-proxy's IPVS-mode rules for state."""
    return restore_text(plan(state, node), node)


def missing_jumps(saved: str) -> list[tuple[str, str, str, str]]:
    """The JUMPS that iptables-save output lacks (it orders a rule's options its own
    way: match the chain, the comment and the target)."""
    table, found = "", set()
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A "):
            for jump in JUMPS:
                t, builtin, chain, comment = jump
                if (t == table and line.startswith(f"-A {builtin} ") and line.rstrip().endswith(f"-j {chain}")
                        and _comment(comment) in line):
                    found.add(jump)
    return [jump for jump in JUMPS if jump not in found]


def jump_rule(table: str, builtin: str, chain: str, comment: str) -> list[str]:
    """The argv tail (after `-t table -I/-C/-D`) of one jump rule."""
    return [builtin, "-m", "comment", "--comment", comment, "-j", chain]

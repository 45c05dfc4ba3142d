"""The iptables-restore text of one sync, built from state in buffers the way
kube-proxy's syncProxyRules builds it (K/K pkg/proxy/iptables/proxier.go).

Pure: no kernel access. The proxier hands the result to one
`iptables-restore --noflush`. Declaring a chain (`:CHAIN - [0:0]`) in restore
input flushes it, so every chain named here is rewritten whole and every
other chain (flannel's, a CNI's) is left alone.

Full sync: every chain. Partial sync (KEP-3453): the dispatch chains
(KUBE-SERVICES, KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES, the filter chains)
plus the SVC/SVL/EXT/SEP chains of the changed service ports; chains that
existed before and are no longer used are flushed and deleted (`-X`).
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

from proxy.types import Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName, categorize

from . import names as n

NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"


@dataclass(frozen=True)
class JumpRule:
    """A rule in a built-in chain that leads into one of ours (kube-proxy's iptablesJumpChains)."""

    table: str
    src: str            # built-in chain
    dst: str            # our chain
    comment: str
    extra: str = ""     # match before the comment, e.g. "-m conntrack --ctstate NEW"

    def spec(self) -> str:
        head = f"{self.extra} " if self.extra else ""
        return f"{head}{_comment(self.comment)} -j {self.dst}"

    def found_in(self, saved_rules: Iterable[str]) -> bool:
        """True when iptables-save output has this jump (its normalized argument
        order differs from ours, so match the chain, the comment and the target)."""
        start, end, quoted = f"-A {self.src} ", f"-j {self.dst}", _comment(self.comment)
        return any(r.startswith(start) and r.rstrip().endswith(end) and quoted in r for r in saved_rules)


_NEW = "-m conntrack --ctstate NEW"
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule("filter", "INPUT", n.KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "FORWARD", n.KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "INPUT", n.KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule("filter", "FORWARD", n.KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "OUTPUT", n.KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "FORWARD", n.KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("filter", "INPUT", n.KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "OUTPUT", n.KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "FORWARD", n.KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("nat", "OUTPUT", n.KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", n.KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", n.KUBE_POSTROUTING, "kubernetes postrouting rules"),
)
FILTER_CHAINS = (n.KUBE_SERVICES, n.KUBE_EXTERNAL_SERVICES, n.KUBE_FORWARD, n.KUBE_NODEPORTS, n.KUBE_PROXY_FIREWALL)
NAT_CHAINS = (n.KUBE_SERVICES, n.KUBE_NODEPORTS, n.KUBE_POSTROUTING, n.KUBE_MARK_MASQ)
CANARY_TABLES = ("mangle", "nat", "filter")   # mangle first: it is the one checked before a partial sync


def _comment(text: str) -> str:
    # kube-proxy quotes exactly the comments with spaces; a bare ns/name:port stays bare
    return f'-m comment --comment "{text}"' if " " in text else f"-m comment --comment {text}"


def _chain_line(chain: str) -> str:
    return f":{chain} - [0:0]"


@dataclass
class Rendered:
    text: str
    active_chains: frozenset[str]          # per-service nat chains that exist after this sync
    written: frozenset[ServicePortName]    # service ports whose own chains were (re)written
    deleted_chains: tuple[str, ...] = ()
    lines: int = 0                         # rule lines (-A/-I/-X), what SyncResult.size reports


@dataclass
class _Buffers:
    filter_chains: list[str] = field(default_factory=list)
    filter_rules: list[str] = field(default_factory=list)
    nat_chains: list[str] = field(default_factory=list)
    nat_rules: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Plan:
    """Which chains one service port uses on this node, and where its traffic goes
    (the variable block at the top of kube-proxy's per-service loop)."""

    svc: ServicePort
    cluster_eps: tuple[Endpoint, ...]
    local_eps: tuple[Endpoint, ...]
    reachable: tuple[Endpoint, ...]
    has_any: bool                 # usable endpoints anywhere (none: REJECT)
    svc_chain: str
    svl_chain: str
    ext_chain: str
    internal_chain: str           # where ClusterIP traffic goes: SVC, or SVL under internalTrafficPolicy Local
    has_internal: bool
    external_policy_chain: str    # where EXT sends outside traffic: SVC, or SVL under externalTrafficPolicy Local
    has_external: bool

    @property
    def label(self) -> str:
        return str(self.svc.name)

    @property
    def uses_cluster_chain(self) -> bool:
        return bool(self.cluster_eps)

    @property
    def uses_local_chain(self) -> bool:
        return bool(self.local_eps)

    @property
    def uses_ext_chain(self) -> bool:
        return self.has_any and self.svc.has_external

    def sep(self, ep: Endpoint) -> str:
        return n.endpoint_chain(self.svc.name, self.svc.proto, ep)

    @functools.cached_property
    def chains(self) -> tuple[str, ...]:
        out = []
        if self.uses_ext_chain:
            out.append(self.ext_chain)
        if self.uses_cluster_chain:
            out.append(self.svc_chain)
        if self.uses_local_chain:
            out.append(self.svl_chain)
        return (*out, *(self.sep(ep) for ep in self.reachable))

    def filter_verdicts(self) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
        """(comment, target) for internal and external traffic that finds no endpoint, or None."""
        if not self.has_any:
            reject = (f"{self.label} has no endpoints", "REJECT")
            return reject, reject
        drop = (f"{self.label} has no local endpoints", "DROP")
        return (None if self.has_internal else drop), (None if self.has_external else drop)


@functools.lru_cache(maxsize=65536)   # unchanged services cost nothing on the next sync
def plan(svc: ServicePort, eps: tuple[Endpoint, ...], node: ProxyNode) -> _Plan:
    c = categorize(svc, eps, node.name)
    svc_chain, svl_chain = n.service_chain(svc.name, svc.proto), n.local_chain(svc.name, svc.proto)

    def policy(local: bool) -> tuple[str, bool]:
        return (svl_chain, bool(c.local)) if local else (svc_chain, c.has_any)

    return _Plan(svc, c.cluster, c.local, c.all_reachable, c.has_any, svc_chain, svl_chain,
                 n.external_chain(svc.name, svc.proto),
                 *policy(svc.internal_policy_local), *policy(svc.external_policy_local))


def render(state: ProxyState, node: ProxyNode, *, changed: frozenset[ServicePortName] | None = None,
           existing_chains: Iterable[str] = (), missing_jumps: Iterable[JumpRule] = (),
           canary: bool = False, tcp_liberal: bool = False) -> Rendered:
    """The restore input of one sync.

    changed: None for a full sync, else the service ports to rewrite (a service
    whose chains are missing from existing_chains is rewritten as well).
    existing_chains: the per-service nat chains in the kernel now; those not used
    any more are deleted. missing_jumps: built-in chain jumps to insert at the
    top (full syncs). canary: declare KUBE-PROXY-CANARY in mangle, nat, filter.
    """
    existing = frozenset(existing_chains)
    cluster_cidr = str(ipaddress.ip_network(node.cluster_cidr, strict=False))
    mark = node.mark
    b = _Buffers()
    b.filter_chains += [_chain_line(c) for c in FILTER_CHAINS]
    b.nat_chains += [_chain_line(c) for c in NAT_CHAINS]
    b.nat_rules += [
        f"-A {n.KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
        # clear the mark so a packet that re-traverses the stack is not masqueraded twice
        f"-A {n.KUBE_POSTROUTING} -j MARK --xor-mark {mark}",
        f"-A {n.KUBE_POSTROUTING} {_comment('kubernetes service traffic requiring SNAT')} -j MASQUERADE --random-fully",
        f"-A {n.KUBE_MARK_MASQ} -j MARK --or-mark {mark}",
    ]
    total_eps = sum(len(state.endpoints_of(name)) for name in state.services)
    large = total_eps > n.LARGE_CLUSTER_ENDPOINTS
    active: set[str] = set()
    written: set[ServicePortName] = set()
    for name in sorted(state.services):
        p = plan(state.services[name], state.endpoints_of(name), node)
        chains = p.chains
        active.update(chains)
        nat, filter_ = _dispatch_rules(p)
        b.nat_rules += nat
        b.filter_rules += filter_
        if changed is None or name in changed or not existing.issuperset(chains):
            written.add(name)
            _service_chains(b, p, cluster_cidr, large)
    stale = tuple(sorted(c for c in existing - active if n.is_service_chain(c)))
    for chain in stale:
        b.nat_chains.append(_chain_line(chain))    # flushes it, so -X finds it empty
        b.nat_rules.append(f"-X {chain}")
    # the NodePort dispatch must be the last KUBE-SERVICES rule; localhost NodePorts are off
    b.nat_rules.append(f"-A {n.KUBE_SERVICES} {_comment(NODEPORTS_COMMENT)} -m addrtype --dst-type LOCAL "
                       f"! -d 127.0.0.0/8 -j {n.KUBE_NODEPORTS}")
    if not tcp_liberal:
        # conntrack-INVALID packets would otherwise reach a pod and earn spurious RSTs (kubernetes#74839)
        b.filter_rules.append(f"-A {n.KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP")
    b.filter_rules += [
        f"-A {n.KUBE_FORWARD} {_comment('kubernetes forwarding rules')} -m mark --mark {mark}/{mark} -j ACCEPT",
        f"-A {n.KUBE_FORWARD} {_comment('kubernetes forwarding conntrack rule')} "
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    jumps = list(missing_jumps)
    canary_line = [_chain_line(n.KUBE_PROXY_CANARY)] if canary else []
    parts: list[str] = []
    if canary:
        parts += ["*mangle", *canary_line, "COMMIT"]
    for table, chains, rules in (("filter", b.filter_chains, b.filter_rules), ("nat", b.nat_chains, b.nat_rules)):
        inserts = [f"-I {j.src} 1 {j.spec()}" for j in jumps if j.table == table]
        parts += [f"*{table}", *canary_line, *chains, *rules, *inserts, "COMMIT"]
    size = len(b.filter_rules) + len(b.nat_rules) + len(jumps)
    return Rendered("\n".join(parts) + "\n", frozenset(active), frozenset(written), stale, size)


@functools.lru_cache(maxsize=65536)
def _dispatch_rules(p: _Plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The service's (nat, filter) rules in KUBE-SERVICES, KUBE-NODEPORTS and the
    filter chains: rewritten on every sync, partial or full."""
    b = _Buffers()
    svc, label = p.svc, p.label
    match = f"-m {svc.proto} -p {svc.proto}"
    internal_verdict, external_verdict = p.filter_verdicts()

    def capture(rules: list[str], chain: str, where: str, comment: str, target: str) -> None:
        rules.append(f"-A {chain} {_comment(comment)} {where} -j {target}")

    cluster_ip = f"{match} -d {svc.cluster_ip} --dport {svc.port}"
    if p.has_internal:
        capture(b.nat_rules, n.KUBE_SERVICES, cluster_ip, f"{label} cluster IP", p.internal_chain)
    elif internal_verdict:
        capture(b.filter_rules, n.KUBE_SERVICES, cluster_ip, *internal_verdict)
    for ip in svc.external_ips:
        external_ip = f"{match} -d {ip} --dport {svc.port}"
        if p.has_any:
            capture(b.nat_rules, n.KUBE_SERVICES, external_ip, f"{label} external IP", p.ext_chain)
        if external_verdict:
            capture(b.filter_rules, n.KUBE_EXTERNAL_SERVICES, external_ip, *external_verdict)
    if svc.node_port:
        if p.has_any:
            capture(b.nat_rules, n.KUBE_NODEPORTS, f"{match} --dport {svc.node_port}", label, p.ext_chain)
        if external_verdict:
            capture(b.filter_rules, n.KUBE_EXTERNAL_SERVICES,
                    f"-m addrtype --dst-type LOCAL {match} --dport {svc.node_port}", *external_verdict)
    return tuple(b.nat_rules), tuple(b.filter_rules)


def _service_chains(b: _Buffers, p: _Plan, cluster_cidr: str, large: bool) -> None:
    """The service's own chains: SVC/SVL (load balancing), EXT, one SEP per endpoint."""
    svc, label = p.svc, p.label
    match = f"-m {svc.proto} -p {svc.proto}"
    if p.has_internal:
        # off-cluster sources reaching a ClusterIP (a route to the service range via
        # this node) may be answered from another node: masquerade them
        b.nat_rules.append(f"-A {p.internal_chain} {_comment(f'{label} cluster IP')} {match} "
                           f"-d {svc.cluster_ip} --dport {svc.port} ! -s {cluster_cidr} -j {n.KUBE_MARK_MASQ}")
    if p.uses_ext_chain:
        b.nat_chains.append(_chain_line(p.ext_chain))
        _external_rules(b, p, cluster_cidr)
    for used, chain, eps in ((p.uses_cluster_chain, p.svc_chain, p.cluster_eps),
                             (p.uses_local_chain, p.svl_chain, p.local_eps)):
        if used:
            b.nat_chains.append(_chain_line(chain))
            _balance_rules(b, p, chain, eps, large)
    for ep in p.reachable:
        sep = p.sep(ep)
        b.nat_chains.append(_chain_line(sep))
        head = f"-A {sep}" if large else f"-A {sep} {_comment(label)}"
        # hairpin: a pod reaching itself through its Service must see the node as source
        b.nat_rules.append(f"{head} -s {ep.ip} -j {n.KUBE_MARK_MASQ}")
        recent = f" -m recent --name {sep} --set" if svc.affinity_timeout else ""
        b.nat_rules.append(f"{head}{recent} {match} -j DNAT --to-destination {ep}")


def _external_rules(b: _Buffers, p: _Plan, cluster_cidr: str) -> None:
    label, ext = p.label, p.ext_chain
    if not p.svc.external_policy_local:
        # Cluster policy may send it to another node: masquerade so the reply comes back here
        b.nat_rules.append(f"-A {ext} {_comment(f'masquerade traffic for {label} external destinations')} "
                           f"-j {n.KUBE_MARK_MASQ}")
    else:
        # pods and the node itself are not subject to the Local policy (as if they went
        # out to a load balancer and came back); only outside clients keep their IP
        short_circuit = p.svc_chain if p.uses_cluster_chain else (p.internal_chain if p.has_internal else "")
        if short_circuit:
            b.nat_rules.append(f"-A {ext} {_comment(f'pod traffic for {label} external destinations')} "
                               f"-s {cluster_cidr} -j {short_circuit}")
        b.nat_rules.append(f"-A {ext} {_comment(f'masquerade LOCAL traffic for {label} external destinations')} "
                           f"-m addrtype --src-type LOCAL -j {n.KUBE_MARK_MASQ}")
        if short_circuit:
            b.nat_rules.append(f"-A {ext} {_comment(f'route LOCAL traffic for {label} external destinations')} "
                               f"-m addrtype --src-type LOCAL -j {short_circuit}")
    if p.has_external:
        b.nat_rules.append(f"-A {ext} -j {p.external_policy_chain}")


def _balance_rules(b: _Buffers, p: _Plan, chain: str, eps: tuple[Endpoint, ...], large: bool) -> None:
    """writeServiceToEndpointRules: affinity checks first, then 1/(n-i) random picks."""
    def head(ep: Endpoint) -> str:
        return f"-A {chain}" if large else f"-A {chain} {_comment(f'{p.label} -> {ep}')}"
    if p.svc.affinity_timeout:
        for ep in eps:
            sep = p.sep(ep)
            b.nat_rules.append(f"{head(ep)} -m recent --name {sep} --rcheck --seconds {p.svc.affinity_timeout} "
                               f"--reap -j {sep}")
    count = len(eps)
    for i, ep in enumerate(eps):
        pick = f" -m statistic --mode random --probability {n.probability(count - i)}" if i < count - 1 else ""
        b.nat_rules.append(f"{head(ep)}{pick} -j {p.sep(ep)}")

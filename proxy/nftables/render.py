"""Pure rendering: a node and a ProxyState in, `nft -f` text out.

Two layouts (the lab file's spec.nftables.layout):

- "kube-proxy": kube-proxy's own nftables layout (pkg/proxy/nftables/proxier.go),
  to be read beside its docs: one `ip kube-proxy` table, dispatch through the
  `service-ips` / `service-nodeports` verdict maps, a chain per service port
  and per endpoint, `numgen random mod N vmap` load balancing, one dynamic
  `affinity-` set per endpoint for ClientIP affinity.
- "maps": the same table, skeleton, maps and names, but no chain per Service
  or endpoint on the common path: the dispatch map jumps to a chain shared by
  every service port with N endpoints (`lb-N`), which DNATs through one map
  keyed on `daddr . proto . dport . numgen random mod N`. Map elements are
  cheap to load and change; chains are not (reference file, section 6).
  Services with ClientIP affinity or externalTrafficPolicy Local are few and
  need per-client or per-source decisions, so they keep kube-proxy's chains.

A service port renders to a Piece (its chains, affinity sets and map
elements); the table is the skeleton plus the union of the pieces, so a
change to one Service rewrites only its Piece (table.Written.partial_text).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..types import Endpoint, ProxyNode, ServicePort, categorize
from . import names

FAMILY = "ip"
TABLE = "kube-proxy"
T = f"{FAMILY} {TABLE}"
LAYOUTS = ("kube-proxy", "maps")
DEFAULT_LAYOUT = "kube-proxy"

# skeleton chains (kube-proxy's names)
SERVICES = "services"
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"
REJECT_CHAIN = "reject-chain"

# sets and maps
CLUSTER_IPS = "cluster-ips"
NODEPORT_IPS = "nodeport-ips"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
# maps layout only
SERVICE_ENDPOINTS = "service-endpoints"
NODEPORT_ENDPOINTS = "nodeport-endpoints"
HAIRPIN_ENDPOINTS = "hairpin-endpoints"

VIP_KEY = "ipv4_addr . inet_proto . inet_service"
CONTAINERS = {  # name: (set|map, declaration)
    CLUSTER_IPS: ("set", 'type ipv4_addr; comment "Active ClusterIPs";'),
    NODEPORT_IPS: ("set", 'type ipv4_addr; comment "IPs that accept NodePort traffic";'),
    NO_ENDPOINT_SERVICES: ("map", f'type {VIP_KEY} : verdict; '
                                  'comment "vmap to drop or reject packets to services with no endpoints";'),
    NO_ENDPOINT_NODEPORTS: ("map", 'type inet_proto . inet_service : verdict; '
                                   'comment "vmap to drop or reject packets to service nodeports with no endpoints";'),
    FIREWALL_IPS: ("map", f'type {VIP_KEY} : verdict; '
                          'comment "destinations that are subject to LoadBalancerSourceRanges";'),
    SERVICE_IPS: ("map", f'type {VIP_KEY} : verdict; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic";'),
    SERVICE_NODEPORTS: ("map", 'type inet_proto . inet_service : verdict; comment "NodePort traffic";'),
}
# typeof, because a numgen result has no named type; the modulus here only
# describes the key (every lb-N chain looks up the same maps). One map per
# protocol: a typeof of `ip daddr . th dport` as data makes nft 1.0.6 fail to
# read the map back ("conflicting protocols"), and `tcp dport` as data makes
# the DNAT rule match TCP only, which is right for the TCP map.
PROTOCOLS = ("tcp", "udp")


def endpoints_map(kind: str, proto: str) -> str:
    return f"{kind}-{proto}"


MAPS_CONTAINERS = {
    **{endpoints_map(SERVICE_ENDPOINTS, proto): (
        "map", f'typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . {proto} dport; '
               f'comment "slot i of a {proto.upper()} ClusterIP or external IP: endpoint i";')
       for proto in PROTOCOLS},
    **{endpoints_map(NODEPORT_ENDPOINTS, proto): (
        "map", f'typeof meta l4proto . th dport . numgen random mod 1 : ip daddr . {proto} dport; '
               f'comment "slot i of a {proto.upper()} NodePort: endpoint i";')
       for proto in PROTOCOLS},
    HAIRPIN_ENDPOINTS: ("set", 'type ipv4_addr . ipv4_addr; comment "endpoint reaching itself through a Service";'),
}

# (name, type, hook, priority): filtering sees pre-DNAT addresses, as
# kube-proxy's. Numbers, because nft accepts the names dstnat/srcnat only on
# some hooks: dstnat = -100, srcnat = 100.
BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)
# (to, from, match): kube-proxy's nftablesJumpChains, in its order
JUMPS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    (SERVICES, "nat-output", ""),
    (SERVICES, "nat-prerouting", ""),
    (MASQUERADING, "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
)


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"spec.nftables.layout: {layout!r} is not a layout; "
                         f"use one of {', '.join(LAYOUTS)} (default {DEFAULT_LAYOUT})")
    return layout


def containers(layout: str) -> dict[str, tuple[str, str]]:
    return {**CONTAINERS, **MAPS_CONTAINERS} if layout == "maps" else dict(CONTAINERS)


def quote(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'


# ---- skeleton ---------------------------------------------------------------

def skeleton_chains(node: ProxyNode, layout: str) -> dict[str, list[str]]:
    """Every chain that is not per service: lines of its block, header first."""
    chains: dict[str, list[str]] = {}
    for name, kind, hook, prio in BASE_CHAINS:
        chains[name] = [f"type {kind} hook {hook} priority {prio}; policy accept;"]
    for to, _, _ in JUMPS:
        chains.setdefault(to, [])
    for to, frm, match in JUMPS:
        chains[frm].append(f"{match} jump {to}".strip())
    mark = node.mark
    chains[MARK_MASQ] = [f"mark set mark or {mark}"]
    chains[MASQUERADING] = [f"mark and {mark} == 0 return", f"mark set mark xor {mark}",
                            "masquerade fully-random"]
    if layout == "maps":
        # hairpin without a chain per endpoint: after DNAT a pod reaching
        # itself has saddr == daddr
        chains[MASQUERADING].insert(0, f"ct status dnat ip saddr . ip daddr @{HAIRPIN_ENDPOINTS} jump {MARK_MASQ}")
    chains[REJECT_CHAIN] = [f"comment {quote('helper for @no-endpoint-services / @no-endpoint-nodeports')}", "reject"]
    chains["cluster-ips-check"] = [
        f"ip daddr @{CLUSTER_IPS} reject comment {quote('Reject traffic to invalid ports of ClusterIPs')}"]
    chains["firewall-check"] = [f"ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"]
    chains["service-endpoints-check"] = [f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"]
    # NodePorts answer on the node's IPs (kube-proxy's default since 1.31:
    # the primary IPs, in nodeport-ips); without any, on every local address
    nodeport_match = f"ip daddr @{NODEPORT_IPS}" if node.node_ips else "ip daddr != 127.0.0.0/8"
    chains["nodeport-endpoints-check"] = [
        f"{nodeport_match} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"]
    dispatch = [f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"]
    if node.node_ips:
        dispatch.append(f"ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}")
    else:
        dispatch.append(f"fib daddr type local ip daddr != 127.0.0.0/8 "
                        f"meta l4proto . th dport vmap @{SERVICE_NODEPORTS}")
    if layout == "maps":
        # kube-proxy writes this per service chain; one rule serves all here
        dispatch.insert(0, f"ip saddr != {node.cluster_cidr} ip daddr @{CLUSTER_IPS} jump {MARK_MASQ}")
    chains[SERVICES] = dispatch
    return chains


# ---- one service port -------------------------------------------------------

@dataclass
class Piece:
    """What one service port adds to the table."""

    chains: dict[str, list[str]] = field(default_factory=dict)     # own chains: rules
    sets: dict[str, str] = field(default_factory=dict)             # affinity sets: declaration
    elements: dict[tuple[str, str], str] = field(default_factory=dict)  # (container, key): " : value" or ""
    shared: frozenset[str] = frozenset()                           # lb chains of the maps layout
    service: ServicePort | None = None                             # what it was rendered from
    endpoints: tuple[Endpoint, ...] = ()

    def element(self, container: str, key: str, value: str = "", comment: str = "") -> None:
        self.elements[(container, key)] = (f" comment {quote(comment)}" if comment else "") + \
            (f" : {value}" if value else "")

    def rule(self, chain: str, rule: str) -> None:
        self.chains.setdefault(chain, []).append(rule)


def _vip(ip: str, svc: ServicePort) -> str:
    return f"{ip} . {svc.proto} . {svc.port}"


def _nodeport(svc: ServicePort) -> str:
    return f"{svc.proto} . {svc.node_port}"


def kube_proxy_piece(node: ProxyNode, svc: ServicePort, eps: tuple[Endpoint, ...]) -> Piece:
    """kube-proxy's syncProxyRules for one service port."""
    cat = categorize(svc, eps, node.name)
    p = Piece()
    cluster, local, external = names.cluster_chain(svc), names.local_chain(svc), names.external_chain(svc)
    internal = local if svc.internal_policy_local else cluster
    has_internal = cat.has_any and (not svc.internal_policy_local or bool(cat.local))
    has_external = cat.has_any and (not svc.external_policy_local or bool(cat.local))
    # no endpoints at all: reject; none for this policy on this node: drop
    no_internal = "drop" if cat.has_any else f"goto {REJECT_CHAIN}"
    no_external = no_internal
    comment = str(svc.name)

    p.element(CLUSTER_IPS, svc.cluster_ip)
    if has_internal:
        p.element(SERVICE_IPS, _vip(svc.cluster_ip, svc), f"goto {internal}")
        # off-cluster traffic to a ClusterIP may leave the node again: masquerade
        p.rule(internal, f"ip daddr {svc.cluster_ip} {svc.proto} dport {svc.port} "
                         f"ip saddr != {node.cluster_cidr} jump {MARK_MASQ}")
    else:
        p.element(NO_ENDPOINT_SERVICES, _vip(svc.cluster_ip, svc), no_internal, comment)
    for ip in svc.external_ips:
        if cat.has_any:
            p.element(SERVICE_IPS, _vip(ip, svc), f"goto {external}")
        if not has_external:
            p.element(NO_ENDPOINT_SERVICES, _vip(ip, svc), no_external, comment)
    if svc.node_port:
        if cat.has_any:
            p.element(SERVICE_NODEPORTS, _nodeport(svc), f"goto {external}")
        if not has_external:
            p.element(NO_ENDPOINT_NODEPORTS, _nodeport(svc), no_external, comment)

    if cat.has_any and svc.has_external:
        if not svc.external_policy_local:
            p.rule(external, f"jump {MARK_MASQ}")   # endpoints may be on other nodes
        else:
            if cat.cluster:
                # pods and the node itself reaching an external address are
                # not external clients: they get the Cluster policy
                p.rule(external, f"ip saddr {node.cluster_cidr} goto {cluster} "
                                 f"comment {quote('short-circuit pod traffic')}")
            p.rule(external, f"fib saddr type local jump {MARK_MASQ} comment {quote('masquerade local traffic')}")
            if cat.cluster:
                p.rule(external, f"fib saddr type local goto {cluster} comment {quote('short-circuit local traffic')}")
        if has_external:
            p.rule(external, f"goto {local if svc.external_policy_local else cluster}")

    if svc.affinity_timeout:
        for ep in cat.all_reachable:
            p.sets[names.affinity_set(svc, ep)] = \
                f"type ipv4_addr; flags dynamic,timeout; timeout {svc.affinity_timeout}s;"
    for chain, group in ((cluster, cat.cluster), (local, cat.local)):
        if group:
            _endpoint_choice(p, svc, chain, group)
    for ep in cat.all_reachable:
        chain = names.endpoint_chain(svc, ep)
        p.rule(chain, f"ip saddr {ep.ip} jump {MARK_MASQ}")    # hairpin: a pod reaching itself
        if svc.affinity_timeout:
            p.rule(chain, f"update @{names.affinity_set(svc, ep)} {{ ip saddr }}")
        p.rule(chain, f"meta l4proto {svc.proto} dnat to {ep.ip}:{ep.port}")
    return p


def _endpoint_choice(p: Piece, svc: ServicePort, chain: str, group: tuple[Endpoint, ...]) -> None:
    if svc.affinity_timeout:
        for ep in group:
            p.rule(chain, f"ip saddr @{names.affinity_set(svc, ep)} goto {names.endpoint_chain(svc, ep)}")
    targets = ", ".join(f"{i} : goto {names.endpoint_chain(svc, ep)}" for i, ep in enumerate(group))
    p.rule(chain, f"numgen random mod {len(group)} vmap {{ {targets} }}")


# maps layout: chains shared by every service port with N endpoints
LB = "lb-"                   # ClusterIP (and external IP after marking): DNAT by slot
EXTERNAL_LB = "external-lb-"  # external IP, Cluster policy: masquerade, then lb-N
NODEPORT_LB = "nodeport-lb-"  # NodePort, Cluster policy: masquerade, DNAT by slot


def shared_chain_rules(chain: str) -> list[str]:
    kind, n = chain.rsplit("-", 1)[0] + "-", int(chain.rsplit("-", 1)[1])
    if kind == LB:
        return [f"dnat ip to ip daddr . meta l4proto . th dport . numgen random mod {n} "
                f"map @{endpoints_map(SERVICE_ENDPOINTS, proto)}" for proto in PROTOCOLS]
    if kind == EXTERNAL_LB:
        return [f"jump {MARK_MASQ}", f"goto {LB}{n}"]
    if kind == NODEPORT_LB:
        return [f"jump {MARK_MASQ}"] + [f"dnat ip to meta l4proto . th dport . numgen random mod {n} "
                                        f"map @{endpoints_map(NODEPORT_ENDPOINTS, proto)}" for proto in PROTOCOLS]
    raise ValueError(f"not a shared chain: {chain}")


def maps_piece(node: ProxyNode, svc: ServicePort, eps: tuple[Endpoint, ...]) -> Piece:
    # ClientIP affinity and externalTrafficPolicy Local decide per client or
    # per source: those (few) services keep kube-proxy's own chains
    if svc.affinity_timeout or (svc.external_policy_local and svc.has_external):
        return kube_proxy_piece(node, svc, eps)
    cat = categorize(svc, eps, node.name)
    p = Piece()
    comment = str(svc.name)
    p.element(CLUSTER_IPS, svc.cluster_ip)
    if not cat.has_any:
        for ip in (svc.cluster_ip, *svc.external_ips):
            p.element(NO_ENDPOINT_SERVICES, _vip(ip, svc), f"goto {REJECT_CHAIN}", comment)
        if svc.node_port:
            p.element(NO_ENDPOINT_NODEPORTS, _nodeport(svc), f"goto {REJECT_CHAIN}", comment)
        return p
    internal = cat.local if svc.internal_policy_local else cat.cluster
    external = cat.cluster          # externalTrafficPolicy Cluster here
    shared = set()

    def slots(kind: str, key: str, group: tuple[Endpoint, ...]) -> None:
        for i, ep in enumerate(group):
            p.element(endpoints_map(kind, svc.proto), f"{key} . {i}", f"{ep.ip} . {ep.port}")
            p.element(HAIRPIN_ENDPOINTS, f"{ep.ip} . {ep.ip}")

    if internal:
        p.element(SERVICE_IPS, _vip(svc.cluster_ip, svc), f"goto {LB}{len(internal)}")
        slots(SERVICE_ENDPOINTS, _vip(svc.cluster_ip, svc), internal)
        shared.add(f"{LB}{len(internal)}")
    else:
        p.element(NO_ENDPOINT_SERVICES, _vip(svc.cluster_ip, svc), "drop", comment)
    for ip in svc.external_ips:
        p.element(SERVICE_IPS, _vip(ip, svc), f"goto {EXTERNAL_LB}{len(external)}")
        slots(SERVICE_ENDPOINTS, _vip(ip, svc), external)
        shared |= {f"{EXTERNAL_LB}{len(external)}", f"{LB}{len(external)}"}
    if svc.node_port:
        p.element(SERVICE_NODEPORTS, _nodeport(svc), f"goto {NODEPORT_LB}{len(external)}")
        slots(NODEPORT_ENDPOINTS, _nodeport(svc), external)
        shared.add(f"{NODEPORT_LB}{len(external)}")
    p.shared = frozenset(shared)
    return p


def render_piece(node: ProxyNode, svc: ServicePort, eps: tuple[Endpoint, ...], layout: str) -> Piece:
    eps = tuple(eps)
    piece = (maps_piece if layout == "maps" else kube_proxy_piece)(node, svc, eps)
    piece.service, piece.endpoints = svc, eps
    return piece

"""kube-netlab explain: what serves a Service, a pod or a node, in the order a packet
meets it, each piece with the exact command that shows it on the live lab and what
that command printed now (read from the kernel, not from the store).

    kube-netlab explain svc NAME [-n NS] [--node NODE]   DNS, dispatch, service and endpoint
                                                         rules (iptables, nftables or IPVS), the
                                                         routes, neighbours and FDB entries to
                                                         each endpoint, the masquerade on the way out
    kube-netlab explain pod [NS/]NAME [-n NS]            its DNS records, eth0, routes, resolv.conf,
                                                         its veth on cni0, the way to it from the
                                                         other nodes, the rules that DNAT to it
    kube-netlab explain node NAME                        underlay, lease, flannel.1, cni0, routes,
                                                         and each peer's route, neighbour and FDB entry

The plan (steps and their commands) is made from the lab's records by pure functions
(unit-tested); run() then executes each command once (`cmd | grep -F ...` is run as the
command and filtered here the way grep -F does), so what is shown is what the command
prints when a student pastes it.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field, replace
from typing import Iterable

from .. import engine, state
from ..engine import LabError
from .path import split_pod_ref

KINDS = {"svc": "svc", "service": "svc", "services": "svc", "pod": "pod", "pods": "pod", "po": "pod",
         "node": "node", "nodes": "node", "no": "node"}
NFT_TABLE = ("ip", "kube-proxy")


@dataclass(frozen=True)
class Probe:
    """A command that shows one piece of the path: argv run in a namespace (ip netns exec),
    its output kept whole or filtered to the lines holding any of grep's strings (grep -F)."""

    netns: str | None
    argv: tuple[str, ...]
    grep: tuple[str, ...] = ()

    @property
    def base(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns, *self.argv) if self.netns else self.argv

    @property
    def command(self) -> str:
        text = shlex.join(self.base)
        if self.grep:
            text += " | grep -F" + "".join(f" -e {shlex.quote(g)}" for g in self.grep)
        return text

    def select(self, output: str) -> list[str]:
        lines = output.splitlines()
        return [line for line in lines if any(g in line for g in self.grep)] if self.grep else lines


@dataclass(frozen=True)
class Step:
    title: str                      # what this piece does to the packet
    probe: Probe
    expect: str | None = None       # a string the output must hold (else the piece is missing)
    output: tuple[str, ...] = ()
    error: str | None = None        # the command failed (stderr)

    @property
    def missing(self) -> bool:
        return self.error is not None or (self.expect is not None and not any(self.expect in o for o in self.output))

    def to_dict(self) -> dict:
        return {"title": self.title, "command": self.probe.command, "output": list(self.output),
                "expect": self.expect, "missing": self.missing, "error": self.error}


@dataclass
class Explanation:
    kind: str                       # Service | Pod | Node
    name: str
    summary: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    def add(self, title: str, netns: str | None, argv: Iterable[str], grep: Iterable[str] = (),
            expect: str | None = None) -> None:
        self.steps.append(Step(title, Probe(netns, tuple(argv), tuple(grep)), expect))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "summary": self.summary,
                "steps": [s.to_dict() for s in self.steps]}

    def text(self) -> str:
        out = [f"{self.kind} {self.name}", *(f"  {line}" for line in self.summary), ""]
        for i, s in enumerate(self.steps, 1):
            out.append(f"{i}. {s.title}")
            out.append(f"   $ {s.probe.command}")
            out += [f"   {line}" for line in s.output]
            if s.error:
                out.append(f"   ! {s.error}")
            elif s.missing:
                out.append(f"   ! MISSING: expected a line with {s.expect!r}")
            elif not s.output:
                out.append("   (nothing)")
            out.append("")
        return "\n".join(out).rstrip() + "\n"


# --- running the commands ------------------------------------------------------------------

def run(ex: Explanation, runner=None) -> Explanation:
    """Each distinct command once; every step's output from it."""
    runner = runner or _run_command
    cache: dict[tuple[str, ...], tuple[str, str | None]] = {}
    steps = []
    for s in ex.steps:
        if s.probe.base not in cache:
            cache[s.probe.base] = runner(s.probe.base)
        text, error = cache[s.probe.base]
        steps.append(replace(s, output=tuple(s.probe.select(text)), error=error))
    ex.steps = steps
    return ex


def _run_command(argv: tuple[str, ...]) -> tuple[str, str | None]:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "", str(e)
    if res.returncode != 0 and not res.stdout:
        return "", (res.stderr.strip() or f"exit {res.returncode}").splitlines()[-1]
    return res.stdout, None


# --- what a lab is made of, as explain needs it ----------------------------------------------

@dataclass(frozen=True)
class NodeFacts:
    name: str
    netns: str
    underlay_ip: str
    pod_cidr: str | None
    vtep_mac: str | None

    @property
    def vtep_ip(self) -> str | None:
        """flannel.1's address on the node: the network address of its /24 (10.244.2.0)."""
        return self.pod_cidr.split("/")[0] if self.pod_cidr else None


def node_facts(lab, statuses: dict[str, state.NodeStatus]) -> list[NodeFacts]:
    out = []
    for n in lab.nodes:
        st = statuses.get(n.name)
        out.append(NodeFacts(n.name, lab.node_netns(n.name), str(n.underlay_ip),
                             st.pod_cidr if st else None, st.vtep_mac if st else None))
    return out


def iptables_save(backend: str | None) -> str:
    """The iptables-save the node's rules are read with: plain when it is the system's own
    (what a student types), iptables-nft-save / iptables-legacy-save otherwise."""
    from proxy.iptables import backend as be
    if backend is None or backend == be.binary_backend():
        return "iptables-save"
    return be.tool(backend, "iptables-save")


# --- the peers' part: a route, a neighbour and an FDB entry per remote node ---------------

def _way_to(ex: Explanation, here: NodeFacts, there: NodeFacts, device: str, what: str) -> None:
    """How `here` reaches pods of `there` over VXLAN: flannel's three entries."""
    if not there.pod_cidr:
        ex.summary.append(f"{there.name} holds no subnet lease yet: nothing routes to it")
        return
    ex.add(f"route on {here.name}: {there.pod_cidr} ({what}) via {there.vtep_ip}, {there.name}'s VTEP, "
           f"out {device}", here.netns, ("ip", "route", "show", there.pod_cidr), expect=device)
    ex.add(f"neighbour on {here.name}: {there.vtep_ip} is VTEP MAC {there.vtep_mac} (no ARP over the overlay)",
           here.netns, ("ip", "neigh", "show", there.vtep_ip, "dev", device), expect=there.vtep_mac)
    ex.add(f"FDB on {here.name}: frames for {there.vtep_mac} go in VXLAN to {there.underlay_ip} "
           f"({there.name}'s underlay address)", here.netns, ("bridge", "fdb", "show", "dev", device),
           grep=(str(there.vtep_mac),), expect=f"dst {there.underlay_ip}")


# --- svc ---------------------------------------------------------------------------------

def explain_service(lab, svc, slices, node: NodeFacts, nodes: list[NodeFacts], *, client_netns: str | None,
                    pod_netns: dict[str, str], backend: str | None = None) -> Explanation:
    """The path of a packet from a pod on `node` to svc. pod_netns: endpoint IP -> its pod's netns."""
    from proxy.source import service_ports, slice_endpoints

    from ..agent.proxy import proxy_node
    ex = Explanation("Service", f"{svc.namespace}/{svc.name}")
    ports = service_ports(svc)
    fqdn = f"{svc.name}.{svc.namespace}.svc.{lab.cluster_domain}"
    ex.summary.append(f"type {svc.type}, cluster IP {svc.cluster_ip or 'None'}, ports "
                      + (", ".join(f"{p.name.port or '-'} {p.port}/{p.protocol}"
                                   + (f" (NodePort {p.node_port})" if p.node_port else "") for p in ports) or "none"))
    ex.summary.append(f"seen from {node.name} ({node.netns}), proxy mode {lab.proxy_mode}"
                      + (f", layout {lab.nftables_layout}" if lab.proxy_mode == "nftables" else ""))
    if client_netns:
        ex.add(f"DNS: a pod asks {lab.dns_ip} (its resolv.conf) for {fqdn}", client_netns,
               ("dig", "+short", "A", fqdn), expect=svc.cluster_ip if ports else None)
        for p in ports:
            if p.name.port:
                ex.add(f"DNS: the SRV record of port {p.name.port}", client_netns,
                       ("dig", "+short", "SRV", f"_{p.name.port}._{p.proto}.{fqdn}"), expect=str(p.port))
    else:
        ex.summary.append(f"no running pod on {node.name} to ask the DNS from")
    if not ports:
        ex.summary.append("no cluster IP: no proxy rules; the DNS alone answers for it")
        return ex
    pnode = proxy_node(lab, lab.node(node.name))
    by_name = {n.name: n for n in nodes}
    reached: list = []
    for p in ports:
        eps = slice_endpoints(p, slices)
        if lab.proxy_mode == "iptables":
            reached += _iptables_steps(ex, p, eps, pnode, node, backend)
        elif lab.proxy_mode == "nftables":
            reached += _nftables_steps(ex, p, eps, pnode, node, lab.nftables_layout)
        else:
            reached += _ipvs_steps(ex, p, eps, node)
    seen_nodes = set()
    for ep in sorted(set(reached), key=lambda e: (e.ip, e.port)):
        owner = by_name.get(ep.node)
        if ep.node == node.name or owner is None:
            ex.add(f"route to {ep.ip}: on this node, out cni0 (the bridge)", node.netns,
                   ("ip", "route", "get", ep.ip), expect="dev cni0")
            if ep.ip in pod_netns:
                ex.add(f"{ep.ip}'s veth on cni0 (its peer is eth0 in {pod_netns[ep.ip]})", node.netns,
                       ("ip", "-o", "link", "show", "master", "cni0"), grep=(f"link-netns {pod_netns[ep.ip]}",),
                       expect="master cni0")
        else:
            ex.add(f"route to {ep.ip}: on {ep.node}, over VXLAN", node.netns, ("ip", "route", "get", ep.ip),
                   expect=lab.vxlan.device)
            if ep.node not in seen_nodes:
                seen_nodes.add(ep.node)
                _way_to(ex, node, owner, lab.vxlan.device, f"{ep.node}'s pods")
    if reached:
        _masquerade_steps(ex, lab, node, backend)
    return ex


def _iptables_steps(ex: Explanation, p, eps, pnode, node: NodeFacts, backend: str | None) -> list:
    """kube-proxy's chains for one service port (the names of proxy/iptables/names.py)."""
    from proxy.iptables import names as ipt
    from proxy.types import categorize
    c = categorize(p, eps, pnode.name)
    svc_chain, svl_chain = ipt.service_chain(p.name, p.proto), ipt.local_chain(p.name, p.proto)
    internal = svl_chain if p.internal_policy_local else svc_chain
    save_nat = (iptables_save(backend), "-t", "nat")
    label = f"{p.name} {p.port}/{p.protocol}"
    if not c.has_any:
        ex.add(f"{label}: no endpoints, so the filter table rejects (the client is told at once)", node.netns,
               (iptables_save(backend), "-t", "filter"), grep=(f'"{p.name} has no endpoints"',), expect="REJECT")
        return []
    has_internal = bool(c.local) if p.internal_policy_local else True
    ex.add(f"{label}: {ipt.KUBE_SERVICES} (from PREROUTING and OUTPUT) matches {p.cluster_ip}:{p.port} and jumps "
           f"to the service chain", node.netns, save_nat, grep=(f"-j {internal}",),
           expect=f"-A {ipt.KUBE_SERVICES} -d {p.cluster_ip}/32" if has_internal else None)
    if p.has_external:
        ext = ipt.external_chain(p.name, p.proto)
        ex.add(f"{label}: NodePort {p.node_port} on the node's addresses: {ipt.KUBE_NODEPORTS} -> {ext} "
               f"(masquerade mark, then the policy's chain)", node.netns, save_nat, grep=(ext,),
               expect=f"-A {ext}")
    for chain, group in ((svc_chain, c.cluster), (svl_chain, c.local)):
        if group:
            ex.add(f"{label}: {chain} marks off-cluster clients for masquerade and picks one of {len(group)} "
                   f"endpoints at random", node.netns, save_nat, grep=(f"-A {chain} ",), expect=f"-A {chain} ")
    for ep in c.all_reachable:
        sep = ipt.endpoint_chain(p.name, p.proto, ep)
        ex.add(f"{label}: {sep} DNATs to {ep} ({ep.node or 'no node'}); a pod reaching itself is masqueraded",
               node.netns, save_nat, grep=(f"-A {sep} ",), expect=f"--to-destination {ep}")
    return list(c.all_reachable)


def _nftables_steps(ex: Explanation, p, eps, pnode, node: NodeFacts, layout: str) -> list:
    """In packet order: the dispatch maps, the chains (a NodePort's external chain first, the
    maps layout's shared lb chains last), then what they look up (endpoint slots, hairpin)."""
    from proxy.nftables.render import CLUSTER_IPS, containers, render_piece
    from proxy.types import categorize
    piece = render_piece(pnode, p, eps, layout)
    kinds = containers(layout)
    label = f"{p.name} {p.port}/{p.protocol}"
    elements = sorted(((c, k, v) for (c, k), v in piece.elements.items() if c != CLUSTER_IPS),
                      key=lambda e: _container_order(e[0]))   # cluster-ips: a bare address set, not greppable
    dispatch = [e for e in elements if _container_order(e[0]) < len(DISPATCH)]
    for container, key, value in dispatch:
        _nft_element(ex, label, node, kinds[container][0], container, key, value)
    external = [c for c in piece.chains if c.startswith("external-")]
    for chain in [*external, *(c for c in piece.chains if c not in external), *sorted(piece.shared)]:
        ex.add(f"{label}: chain {chain}", node.netns, ("nft", "list", "chain", *NFT_TABLE, chain),
               expect=f"chain {chain}")
    # then the endpoint slots, and last the hairpin set the masquerading chain checks
    for container, key, value in sorted(elements[len(dispatch):], key=lambda e: kinds[e[0]][0] == "set"):
        _nft_element(ex, label, node, kinds[container][0], container, key, value)
    return list(categorize(p, eps, node.name).all_reachable)


def _nft_element(ex: Explanation, label: str, node: NodeFacts, kind: str, container: str, key: str,
                 value: str) -> None:
    # an element's text ends its key with " :" in a map, with "," or " }" in a set
    grep = (f"{key} ",) if kind == "map" else (f"{key},", f"{key} }}")
    probe = Probe(node.netns, ("nft", "list", kind, *NFT_TABLE, container), grep)
    if any(s.probe == probe for s in ex.steps):   # shared by the Service's ports (hairpin-endpoints)
        return
    target = f" -> {value.split(' : ', 1)[1]}" if " : " in value else ""
    ex.steps.append(Step(f"{label}: {container} {'maps' if kind == 'map' else 'holds'} {key}{target}", probe, key))


# the maps and sets a packet meets first, in that order (then its chains)
DISPATCH = ("service-ips", "no-endpoint-services", "nodeport-ips", "service-nodeports", "no-endpoint-nodeports")


def _container_order(container: str) -> int:
    return DISPATCH.index(container) if container in DISPATCH else len(DISPATCH)


def _ipvs_steps(ex: Explanation, p, eps, node: NodeFacts) -> list:
    from proxy.types import categorize
    flag = "-t" if p.protocol == "TCP" else "-u"
    ex.add(f"{p.name} {p.port}/{p.protocol}: IPVS virtual server {p.cluster_ip}:{p.port} (the address is on "
           f"kube-ipvs0) and its real servers", node.netns, ("ipvsadm", "-Ln", flag, f"{p.cluster_ip}:{p.port}"),
           expect=f"{p.cluster_ip}:{p.port}")
    if p.node_port:
        ex.add(f"{p.name}: NodePort {p.node_port} on {node.underlay_ip}", node.netns,
               ("ipvsadm", "-Ln", flag, f"{node.underlay_ip}:{p.node_port}"), expect=str(p.node_port))
    return list(categorize(p, eps, node.name).all_reachable)


def _masquerade_steps(ex: Explanation, lab, node: NodeFacts, backend: str | None) -> None:
    if lab.proxy_mode == "nftables":
        ex.add("on the way out: traffic marked 0x4000 is masqueraded", node.netns,
               ("nft", "list", "chain", *NFT_TABLE, "masquerading"), expect="masquerade")
    else:
        ex.add("on the way out: KUBE-POSTROUTING masquerades what KUBE-MARK-MASQ marked (0x4000)", node.netns,
               (iptables_save(backend), "-t", "nat"), grep=("-A KUBE-POSTROUTING", "-A KUBE-MARK-MASQ"),
               expect="MASQUERADE")


# --- pod ---------------------------------------------------------------------------------

def explain_pod(lab, pod, st: state.PodStatus, node: NodeFacts, nodes: list[NodeFacts], serving: list,
                *, backend: str | None = None) -> Explanation:
    """serving: (ServicePort, Endpoint) pairs whose rules DNAT to this pod."""
    ex = Explanation("Pod", f"{pod.namespace}/{pod.name}")
    ip = st.pod_ip
    ex.summary.append(f"{st.phase} on {node.name}, IP {ip}, netns {st.netns}")
    pod_name = f"{ip.replace('.', '-')}.{pod.namespace}.pod.{lab.cluster_domain}" if ip else None
    running = bool(ip) and st.phase == "Running"
    if running:
        ex.add(f"DNS: the pod's own record {pod_name}", st.netns, ("dig", "+short", "A", pod_name), expect=ip)
        for svc_port, _ in serving:
            fqdn = f"{svc_port.name.name}.{svc_port.name.namespace}.svc.{lab.cluster_domain}"
            if not any(s.probe.argv[-1] == fqdn for s in ex.steps):
                ex.add(f"DNS: Service {svc_port.name.service}, which sends to this pod", st.netns,
                       ("dig", "+short", "A", fqdn), expect=svc_port.cluster_ip)
    for svc_port, ep in serving:   # a packet to a Service is DNATed before it is routed
        _dnat_step(ex, lab, svc_port, ep, node, backend)
    if ip:
        for other in nodes:
            if other.name != node.name:
                ex.add(f"from {other.name}: {ip} is reached over {lab.vxlan.device}", other.netns,
                       ("ip", "route", "get", ip), expect=lab.vxlan.device)
                _way_to(ex, other, node, lab.vxlan.device, f"{node.name}'s pods")
        ex.add(f"on {node.name}: {ip} is reached out cni0", node.netns, ("ip", "route", "get", ip), expect="dev cni0")
    ex.add(f"on {node.name}: the pod's veth is a port of cni0", node.netns,
           ("ip", "-o", "link", "show", "master", "cni0"), grep=(f"link-netns {st.netns}",), expect="master cni0")
    if running:
        ex.add("in the pod: eth0 with the pod's address (the veth's other end is on the node)", st.netns,
               ("ip", "-o", "-4", "addr", "show", "dev", "eth0"), expect=f"inet {ip}/")
        ex.add("in the pod: replies leave by eth0, the default route via cni0's address", st.netns,
               ("ip", "route", "show"), expect="default via")
        ex.add("in the pod: resolv.conf as the kubelet writes it (ip netns exec mounts it over /etc)", None,
               ("cat", f"/etc/netns/{st.netns}/resolv.conf"), expect="nameserver")
    return ex


def _dnat_step(ex: Explanation, lab, p, ep, node: NodeFacts, backend: str | None) -> None:
    label = f"Service {p.name} {p.port}/{p.protocol}"
    if lab.proxy_mode == "iptables":
        from proxy.iptables import names as ipt
        sep = ipt.endpoint_chain(p.name, p.proto, ep)
        ex.add(f"{label} DNATs to it in {sep} (on every node)", node.netns, (iptables_save(backend), "-t", "nat"),
               grep=(f"-A {sep} ",), expect=f"--to-destination {ep}")
    elif lab.proxy_mode == "nftables":
        from proxy.nftables import names as nftn
        if lab.nftables_layout == "maps" and not (p.affinity_timeout or p.external_policy_local):
            ex.add(f"{label} DNATs to it through a slot of service-endpoints-{p.proto}", node.netns,
                   ("nft", "list", "map", *NFT_TABLE, f"service-endpoints-{p.proto}"),
                   grep=(f": {ep.ip} . {ep.port}",), expect=f"{ep.ip} . {ep.port}")
        else:
            chain = nftn.endpoint_chain(p, ep)
            ex.add(f"{label} DNATs to it in {chain}", node.netns, ("nft", "list", "chain", *NFT_TABLE, chain),
                   expect=f"dnat to {ep}")
    else:
        flag = "-t" if p.protocol == "TCP" else "-u"
        ex.add(f"{label}: a real server of IPVS {p.cluster_ip}:{p.port}", node.netns,
               ("ipvsadm", "-Ln", flag, f"{p.cluster_ip}:{p.port}"), expect=str(ep))


# --- node --------------------------------------------------------------------------------

def explain_node(lab, node: NodeFacts, nodes: list[NodeFacts], paths: state.LabPaths, proxy_mode: str | None,
                 *, backend: str | None = None) -> Explanation:
    ex = Explanation("Node", node.name)
    dev = lab.vxlan.device
    ex.summary.append(f"netns {node.netns}, underlay {node.underlay_ip}, pods {node.pod_cidr or '(no lease)'}, "
                      f"VTEP MAC {node.vtep_mac or '-'}, proxy mode {proxy_mode or lab.proxy_mode}")
    ex.add("underlay: eth0, the node's address on the machines' network", node.netns,
           ("ip", "-o", "-4", "addr", "show", "dev", "eth0"), expect=f"inet {node.underlay_ip}/")
    ex.add("flannel's subnet file (the lease this node holds)", None, ("cat", paths.subnet_env(node.name)),
           expect=f"FLANNEL_SUBNET={node.vtep_ip.rsplit('.', 1)[0]}" if node.vtep_ip else None)
    ex.add(f"{dev}: VXLAN VNI {lab.vxlan.vni}, UDP {lab.vxlan.port}, local {node.underlay_ip}, no learning "
           f"(flannel programs every entry)", node.netns, ("ip", "-d", "link", "show", dev), grep=("vxlan id",),
           expect=f"vxlan id {lab.vxlan.vni} local {node.underlay_ip}")
    ex.add("cni0: the pods' bridge; its address is their gateway", node.netns,
           ("ip", "-o", "-4", "addr", "show", "dev", "cni0"), expect="inet ")
    ex.add("the pods' veths, ports of cni0", node.netns, ("bridge", "link", "show", "master", "cni0"))
    ex.add("forwarding between interfaces is on", node.netns, ("sysctl", "net.ipv4.ip_forward"), expect="= 1")
    ex.add("the routing table: own pods out cni0, each peer's pods over VXLAN, the underlay out eth0", node.netns,
           ("ip", "route", "show"))
    for other in nodes:
        if other.name != node.name:
            _way_to(ex, node, other, dev, f"{other.name}'s pods")
    ex.add("flannel's masquerade: pod traffic leaving the pod network", node.netns,
           (iptables_save(backend), "-t", "nat"), grep=("FLANNEL-POSTRTG",), expect="MASQUERADE")
    mode = proxy_mode or lab.proxy_mode
    if mode == "iptables":
        ex.add("kube-proxy's dispatch: one KUBE-SERVICES rule per cluster IP and port", node.netns,
               (iptables_save(backend), "-t", "nat"), grep=("-A KUBE-SERVICES ",), expect="-A KUBE-SERVICES")
    elif mode == "nftables":
        ex.add("kube-proxy's dispatch map: cluster IP . protocol . port -> its chain", node.netns,
               ("nft", "list", "map", *NFT_TABLE, "service-ips"), expect="map service-ips")
    else:
        ex.add("kube-proxy's IPVS virtual servers", node.netns, ("ipvsadm", "-Ln"))
    return ex


# --- the command -------------------------------------------------------------------------

def add_parser(sub, lab_opt) -> None:
    sp = sub.add_parser("explain", help="what serves a Service, pod or node, with the commands that show it",
                        description="In the order a packet meets them: DNS records, rules, routes, neighbour "
                                    "and FDB entries, each with the command that prints it on the live lab "
                                    "and what it printed now.")
    sp.add_argument("kind", metavar="svc|pod|node")
    sp.add_argument("name", metavar="NAME", help="NAME, or NS/NAME for a Service or pod")
    sp.add_argument("-n", "--namespace", help="default: default")
    sp.add_argument("--node", help="svc: whose rules to read (default: the lab's first node)")
    sp.add_argument("-o", "--output", choices=["text", "json"], default="text")
    lab_opt(sp)
    sp.set_defaults(func=cmd_explain)


def _backend(netns: str, mode: str) -> str | None:
    if mode == "nftables":
        return None
    from proxy.iptables import backend as be
    return be.detect(netns)


def build(lab_name: str, kind: str, name: str, namespace: str | None, node_name: str | None) -> Explanation:
    """The explanation of one object of a lab, commands run."""
    from proxy.source import service_ports, slice_endpoints
    kind = _kind(kind)
    paths, store, lab = engine.open_lab(lab_name)
    ls = state.LabState(store)
    node_statuses = ls.node_statuses()
    nodes = node_facts(lab, node_statuses)
    by_name = {n.name: n for n in nodes}
    if kind == "node":
        if name not in by_name:
            raise LabError(f"no node {name!r} in lab {lab.name} (nodes: {', '.join(by_name)})")
        node = by_name[name]
        mode = (node_statuses.get(name) and node_statuses[name].proxy_mode) or lab.proxy_mode
        return run(explain_node(lab, node, nodes, paths, mode, backend=_backend(node.netns, "iptables")))
    ns, obj = split_pod_ref(name, namespace)
    statuses = ls.pod_statuses()
    if kind == "svc":
        svc = ls.services().get(f"{ns}/{obj}")
        if svc is None:
            raise LabError(f'services "{obj}" not found in namespace {ns}; list them with: kube-netlab get svc -A')
        node = by_name.get(node_name or lab.node_names[0])
        if node is None:
            raise LabError(f"--node {node_name}: no such node (nodes: {', '.join(by_name)})")
        running = {k: s for k, s in sorted(statuses.items()) if s.phase == "Running" and s.pod_ip}
        client = next((s.netns for s in running.values() if s.node == node.name), None)
        pod_netns = {s.pod_ip: s.netns for s in running.values()}
        ex = explain_service(lab, svc, ls.endpoint_slices(svc.key), node, nodes, client_netns=client,
                             pod_netns=pod_netns, backend=_backend(node.netns, lab.proxy_mode))
        return run(ex)
    pod, st = ls.pods().get(f"{ns}/{obj}"), statuses.get(f"{ns}/{obj}")
    if pod is None:
        raise LabError(f'pods "{obj}" not found in namespace {ns}; list them with: kube-netlab get pods -A')
    if st is None or st.node not in by_name:
        raise LabError(f"pod {ns}/{obj} has no status yet (Pending): nothing in the kernel to show")
    serving = []
    for svc in ls.services().values():
        for p in service_ports(svc):
            serving += [(p, ep) for ep in slice_endpoints(p, ls.endpoint_slices(svc.key)) if ep.ip == st.pod_ip]
    node = by_name[st.node]
    return run(explain_pod(lab, pod, st, node, nodes, serving, backend=_backend(node.netns, lab.proxy_mode)))


def _kind(word: str) -> str:
    kind = KINDS.get(word.lower())
    if kind is None:
        raise LabError(f"explain {word}? give svc, pod or node, e.g. kube-netlab explain svc echo")
    return kind


def cmd_explain(a) -> int:
    import os
    _kind(a.kind)   # a wrong word fails before the lab is looked for
    if os.geteuid() != 0:
        raise LabError("explain reads the kernel inside the lab's namespaces (ip netns exec): run it as root")
    ex = build(engine.resolve_lab(a.lab), a.kind, a.name, a.namespace, a.node)
    if a.output == "json":
        print(json.dumps(ex.to_dict(), indent=2))
    else:
        sys.stdout.write(ex.text())
    return 0

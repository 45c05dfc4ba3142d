"""`kube-netlab graph`: a picture of a lab, and the traced path drawn on it.

Two halves, as Mininet keeps topology apart from what builds it:

- `LabGraph`, a pure description (nodes, edges, clusters) built by
  `build_graph()` from the lab's records alone (netlab.state.LabState: pods,
  pod and node statuses, Services, EndpointSlices). No kernel reads: every
  interface name is computed the way the lab computes it (the host veth is
  cni.main.bridge.host_veth_name of the pod's CNI container id).
- renderers, one per format: dot (text), svg and png (Graphviz `dot`),
  mermaid (text, `flowchart LR`) and html (one self-contained page: inline
  SVG, CSS and a little JavaScript that shows an element's details on hover;
  no external resources).

What is drawn, and the hops (netns, interface) each element stands for:

    cluster per node netns   the node: Ready, podCIDR, VTEP MAC, peers, proxy mode
      pod                    (pod netns, eth0)            pod name, IP, phase
      pod -- cni0 edge       (node netns, veth<hash>)     the veth pair
      cni0                   (node netns, cni0)           the bridge, gateway address
      flannel.<vni>          (node netns, flannel.<vni>)  VTEP: address, MAC, VNI, UDP port
      eth0                   (node netns, eth0)           the underlay address
    eth0 -- switch edge      (underlay netns, <node>)     the node's port on the switch
    underlay switch          (underlay netns, underlay)
    external host            (external netns, eth0)
    flannel -- flannel edge  the VXLAN tunnel between two nodes (dashed red: a side lacks the peer)
    Service -> pod edges     the Service's endpoints (grey: not ready)

API for other commands (trace --svg calls this):

    lab_graph(lab: str) -> LabGraph                    read a running lab's records
    build_graph(lab, pods, pod_statuses, node_statuses, services, slices) -> LabGraph   pure
    render(graph, fmt, highlight=None, notes=None) -> str | bytes
        fmt: "dot" | "svg" | "mermaid" | "html" (str) or "png" (bytes)
        highlight: the traced path, in order: (netns, interface) pairs as the trace saw
            them, or element ids; each element gets its step numbers, the edges between
            consecutive elements are drawn bold, hops the graph has no element for are
            listed in a note ("not drawn: ...").
        notes: text attached to an element, e.g. a NAT step:
            {("lab-node-a", "cni0"): "DNAT 10.96.0.10:53 -> 10.244.2.3:53 (KUBE-SEP-...)"}
            keys: a (netns, interface) hop, an element id, or a netns name alone
            (the note goes into that namespace's cluster).
    element_for_hop(graph, netns, interface) -> str | None    the element id for a hop
    path_from_trace(trace: dict) -> (highlight, notes)   from the `trace -o json` shape: probe and
        reply hops in order, each NAT step a note in its netns, the drop a note on its hop

Rendering svg, png (and html, which embeds the svg) needs Graphviz's `dot`
(scripts/bootstrap.sh installs it); dot and mermaid are plain text.
"""
from __future__ import annotations

import subprocess
from ipaddress import IPv4Network
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Mapping

from cni.main.bridge import host_veth_name

from .. import views
from ..model import addressing, names
from ..pods import container_id
from ..state import NodeStatus, PodStatus

FORMATS = ("svg", "png", "dot", "mermaid", "html")
TEXT_FORMATS = ("svg", "dot", "mermaid", "html")

Details = tuple[tuple[str, str], ...]
Hop = tuple[str, str]


@dataclass(frozen=True)
class GraphNode:
    id: str
    label: str                       # lines separated by "\n"
    kind: str                        # pod, bridge, vxlan, uplink, switch, host, service, note
    cluster: str | None = None       # the cluster id it is drawn in
    details: Details = ()            # shown on hover (html), as tooltip (svg)
    hops: tuple[Hop, ...] = ()       # the (netns, interface) pairs it stands for
    steps: tuple[int, ...] = ()      # its places on a highlighted path (1-based)


@dataclass(frozen=True)
class GraphEdge:
    id: str
    src: str
    dst: str
    kind: str                        # veth, route, encap, tunnel, wire, endpoint, note
    label: str = ""
    details: Details = ()
    hops: tuple[Hop, ...] = ()
    steps: tuple[int, ...] = ()
    on_path: bool = False            # between two consecutive elements of a highlighted path
    broken: bool = False             # e.g. a tunnel one side has not programmed, an endpoint not ready
    constraint: bool = True          # False: does not push ranks apart (the tunnel between nodes)


@dataclass(frozen=True)
class GraphCluster:
    id: str
    label: str
    kind: str                        # node, underlay, external, services
    parent: str | None = None
    netns: str | None = None
    details: Details = ()


@dataclass(frozen=True)
class LabGraph:
    title: str
    clusters: tuple[GraphCluster, ...] = ()
    nodes: tuple[GraphNode, ...] = ()
    edges: tuple[GraphEdge, ...] = ()
    path: tuple[str, ...] = ()       # the highlighted path as text lines (step: where), for legends

    def node(self, id_: str) -> GraphNode:
        for n in self.nodes:
            if n.id == id_:
                return n
        raise KeyError(id_)

    def ids(self) -> set[str]:
        return {e.id for e in (*self.clusters, *self.nodes, *self.edges)}

    def nested(self) -> Iterator[tuple[str, object, int]]:
        """The clusters depth first with their nodes, then the nodes outside any, as the
        renderers write them: ("open", cluster, depth), ("node", node, depth),
        ("close", cluster, depth); depth 1 is the top level."""
        children: dict[str | None, list] = {}
        for c in self.clusters:
            children.setdefault(c.parent, []).append(c)
        members: dict[str | None, list] = {}
        for n in self.nodes:
            members.setdefault(n.cluster, []).append(n)

        def walk(cluster, depth):
            yield "open", cluster, depth
            for n in members.get(cluster.id, ()):
                yield "node", n, depth + 1
            for child in children.get(cluster.id, ()):
                yield from walk(child, depth + 1)
            yield "close", cluster, depth

        for c in children.get(None, ()):
            yield from walk(c, 1)
        for n in members.get(None, ()):
            yield "node", n, 1


# colours per kind: (fill, stroke); the renderers share them so every format reads alike
PALETTE = {
    "pod": ("#e3f0ff", "#2f6db5"), "bridge": ("#fff3d6", "#b07d00"), "vxlan": ("#fde4e4", "#b43c3c"),
    "uplink": ("#e6f5e6", "#2e7d32"), "switch": ("#eeeeee", "#555555"), "host": ("#f3e8fb", "#7b3fa0"),
    "service": ("#e0f7f4", "#00796b"), "note": ("#fffbe6", "#c9a400"),
}
CLUSTER_COLOURS = {"node": "#fafafa", "underlay": "#f4f4f4", "external": "#faf5fc", "services": "#f2fbfa"}
PATH_COLOUR = "#e4002b"
BROKEN_COLOUR = "#d32f2f"
MUTED_COLOUR = "#9e9e9e"


# --- building the description from records ------------------------------------------------

def _details(**pairs) -> Details:
    return tuple((k.replace("_", " "), str(v)) for k, v in pairs.items() if v not in (None, "", ()))


def pod_id(namespace: str, name: str) -> str:
    return f"pod/{namespace}/{name}"


def iface_id(netns: str, ifname: str) -> str:
    return f"if/{netns}/{ifname}"


def service_id(namespace: str, name: str) -> str:
    return f"svc/{namespace}/{name}"


def build_graph(lab, pods: Mapping[str, object], pod_statuses: Mapping[str, PodStatus],
                node_statuses: Mapping[str, NodeStatus], services: Mapping[str, object],
                slices: Iterable = ()) -> LabGraph:
    """The lab as a graph, from its records (the shapes LabState returns): pods and
    services by "ns/name", statuses by the same key and by node name."""
    clusters: list[GraphCluster] = []
    nodes: list[GraphNode] = []
    edges: list[GraphEdge] = []
    vxlan = lab.vxlan
    underlay_ns = lab.underlay_netns
    switch = iface_id(underlay_ns, names.UNDERLAY_BRIDGE)
    clusters.append(GraphCluster("cluster/underlay", f"underlay switch\nnetns {underlay_ns}", "underlay",
                                 netns=underlay_ns, details=_details(netns=underlay_ns, cidr=lab.underlay.cidr,
                                                                     mtu=lab.underlay.mtu)))
    nodes.append(GraphNode(switch, f"bridge {names.UNDERLAY_BRIDGE}\n{lab.underlay.cidr}", "switch",
                           "cluster/underlay", _details(netns=underlay_ns, bridge=names.UNDERLAY_BRIDGE,
                                                        cidr=lab.underlay.cidr, mtu=lab.underlay.mtu),
                           hops=((underlay_ns, names.UNDERLAY_BRIDGE),)))
    vteps: dict[str, tuple[str, NodeStatus | None]] = {}
    for node in lab.nodes:
        netns = lab.node_netns(node.name)
        st = node_statuses.get(node.name)
        cid = f"cluster/node/{node.name}"
        cidr = st.pod_cidr if st else None
        ready = "Ready" if st and st.ready else "NotReady"
        failing = ", ".join(c.type for c in (st.conditions if st else ()) if c.status and c.type != "Ready")
        clusters.append(GraphCluster(
            cid, f"node {node.name} ({ready})\nnetns {netns}\npodCIDR {cidr or '-'}", "node", netns=netns,
            details=_details(node=node.name, netns=netns, status=ready, podCIDR=cidr, underlay_IP=node.underlay_ip,
                             VTEP_MAC=st.vtep_mac if st else None, peers=", ".join(st.peers) if st else None,
                             proxy_mode=(st.proxy_mode if st else None) or lab.proxy_mode,
                             failing=failing, message=st.message if st else None)))
        uplink = iface_id(netns, names.NODE_UPLINK)
        mask = lab.underlay.cidr.prefixlen
        nodes.append(GraphNode(uplink, f"{names.NODE_UPLINK}\n{node.underlay_ip}/{mask}", "uplink", cid,
                               _details(netns=netns, interface=names.NODE_UPLINK, address=f"{node.underlay_ip}/{mask}",
                                        mtu=lab.underlay.mtu), hops=((netns, names.NODE_UPLINK),)))
        port = names.underlay_port(node.name)
        edges.append(GraphEdge(f"wire/{node.name}", uplink, switch, "wire", f"port {port}",
                               _details(link=f"{netns} {names.NODE_UPLINK} <-> {underlay_ns} {port}"),
                               hops=((underlay_ns, port),)))
        bridge = iface_id(netns, names.NODE_BRIDGE)
        gw = f"{addressing.gateway(cidr)}/{IPv4Network(cidr).prefixlen}" if cidr else "no lease yet"
        nodes.append(GraphNode(bridge, f"{names.NODE_BRIDGE}\n{gw}", "bridge", cid,
                               _details(netns=netns, interface=names.NODE_BRIDGE, address=gw, mtu=lab.overlay_mtu,
                                        role="pods' default gateway"), hops=((netns, names.NODE_BRIDGE),)))
        vtep = iface_id(netns, vxlan.device)
        vtep_ip = f"{addressing.vtep_address(cidr)}/32" if cidr else "-"
        mac = (st.vtep_mac if st else None) or "-"
        nodes.append(GraphNode(vtep, f"{vxlan.device}\n{vtep_ip}\nVNI {vxlan.vni} UDP {vxlan.port}", "vxlan", cid,
                               _details(netns=netns, interface=vxlan.device, address=vtep_ip, VTEP_MAC=mac,
                                        VNI=vxlan.vni, UDP_port=vxlan.port, local=node.underlay_ip,
                                        mtu=lab.overlay_mtu), hops=((netns, vxlan.device),)))
        edges.append(GraphEdge(f"route/{node.name}/overlay", bridge, vtep, "route", "routed",
                               _details(what=f"routes to other nodes' pod subnets go via {vxlan.device}")))
        edges.append(GraphEdge(f"encap/{node.name}", vtep, uplink, "encap", f"encap UDP {vxlan.port}",
                               _details(what=f"VXLAN VNI {vxlan.vni} in UDP {vxlan.port}, outer source {node.underlay_ip}")))
        edges.append(GraphEdge(f"route/{node.name}/uplink", bridge, uplink, "route", "forwarded",
                               _details(what="NodePort and external traffic, routed by the node (ip_forward=1)")))
        vteps[node.name] = (vtep, st)
    _tunnels(lab, vteps, edges)
    if lab.external:
        ext_ns = lab.external_netns
        clusters.append(GraphCluster("cluster/external", f"external host\nnetns {ext_ns}", "external", netns=ext_ns,
                                     details=_details(netns=ext_ns, role="a machine outside the cluster")))
        ext = iface_id(ext_ns, names.EXTERNAL_UPLINK)
        addr = f"{lab.external.ip}/{lab.underlay.cidr.prefixlen}"
        nodes.append(GraphNode(ext, f"{names.EXTERNAL_UPLINK}\n{addr}", "host", "cluster/external",
                               _details(netns=ext_ns, interface=names.EXTERNAL_UPLINK, address=addr),
                               hops=((ext_ns, names.EXTERNAL_UPLINK),)))
        edges.append(GraphEdge("wire/external", switch, ext, "wire", f"port {names.EXTERNAL_PORT}",
                               _details(link=f"{underlay_ns} {names.EXTERNAL_PORT} <-> {ext_ns} {names.EXTERNAL_UPLINK}"),
                               hops=((underlay_ns, names.EXTERNAL_PORT),)))
    _pods(lab, pods, pod_statuses, nodes, edges)
    _services(lab, services, slices, {n.id for n in nodes}, clusters, nodes, edges)
    return LabGraph(f"lab {lab.name}: {len(lab.nodes)} nodes, proxy mode {lab.proxy_mode}",
                    tuple(clusters), tuple(nodes), tuple(edges))


def _tunnels(lab, vteps: dict, edges: list) -> None:
    """One VXLAN edge per pair of nodes; broken when a side has not programmed the other
    (its NodeStatus.peers lacks the other's podCIDR): the first thing to look at when
    cross-node traffic fails."""
    order = list(vteps)
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            (va, sa), (vb, sb) = vteps[a], vteps[b]
            a_has_b = bool(sa and sb and sb.pod_cidr in sa.peers)
            b_has_a = bool(sa and sb and sa.pod_cidr in sb.peers)
            missing = [f"{x} lacks the peer {y}" for x, y, ok in ((a, b, a_has_b), (b, a, b_has_a)) if not ok]
            ua, ub = lab.node(a).underlay_ip, lab.node(b).underlay_ip
            label = f"VXLAN VNI {lab.vxlan.vni}\n{ua} <-> {ub}" + ("\n" + "; ".join(missing) if missing else "")
            edges.append(GraphEdge(
                f"tunnel/{a}/{b}", va, vb, "tunnel", label,
                _details(VNI=lab.vxlan.vni, UDP_port=lab.vxlan.port, outer=f"{ua} <-> {ub}",
                         VTEP_MACs=f"{(sa.vtep_mac if sa else None) or '-'} <-> {(sb.vtep_mac if sb else None) or '-'}",
                         programmed="both ways" if not missing else "; ".join(missing)),
                broken=bool(missing), constraint=False))


def _pods(lab, pods, pod_statuses, nodes: list, edges: list) -> None:
    for key, pod in sorted(pods.items()):
        st = pod_statuses.get(key)
        node = (st.node if st and st.node else None) or pod.node_name
        if node not in lab.node_names:
            continue  # not scheduled (or its node is gone): nowhere to draw it
        netns = lab.node_netns(node)
        pod_netns = lab.pod_netns(pod)
        phase = st.phase if st else "Pending"
        ip = st.pod_ip if st else None
        name = pod.name if pod.namespace == "default" else f"{pod.namespace}/{pod.name}"
        pid = pod_id(pod.namespace, pod.name)
        nodes.append(GraphNode(pid, f"{name}\n{names.POD_IFNAME} {ip or '-'}" + ("" if phase == "Running" else f"\n{phase}"),
                               "pod", f"cluster/node/{node}",
                               _details(pod=f"{pod.namespace}/{pod.name}", netns=pod_netns, node=node, phase=phase,
                                        IP=ip, hostname=st.hostname if st else None,
                                        ready="yes" if st and st.ready else "no", reason=st.reason if st else None,
                                        restarts=st.restarts if st else None, labels=views.format_labels(pod.labels)),
                               hops=((pod_netns, names.POD_IFNAME),)))
        veth = host_veth_name(container_id(pod), names.POD_IFNAME)
        edges.append(GraphEdge(f"veth/{pod.namespace}/{pod.name}", pid, iface_id(netns, names.NODE_BRIDGE), "veth", veth,
                               _details(pair=f"{pod_netns} {names.POD_IFNAME} <-> {netns} {veth}",
                                        bridge=names.NODE_BRIDGE, mtu=lab.overlay_mtu),
                               hops=((netns, veth),)))


def _services(lab, services, slices, drawn: set[str], clusters: list, nodes: list, edges: list) -> None:
    if not services:
        return
    clusters.append(GraphCluster("cluster/services", f"Services (kube-proxy {lab.proxy_mode} on every node)",
                                 "services", details=_details(proxy_mode=lab.proxy_mode,
                                                              service_CIDR=lab.service_cidr, DNS=lab.dns_ip)))
    by_service: dict[str, list] = {}
    for s in slices:
        by_service.setdefault(s.service_key, []).append(s)
    for key, svc in sorted(services.items()):
        sid = service_id(svc.namespace, svc.name)
        ports = views.service_ports_text([p.to_dict() for p in svc.ports])
        if svc.type == "ExternalName":
            address = f"ExternalName {svc.external_name}"
        else:
            address = f"ClusterIP {svc.cluster_ip or '-'}"
        name = svc.name if svc.namespace == "default" else f"{svc.namespace}/{svc.name}"
        nodes.append(GraphNode(sid, f"svc {name}\n{address}\n{ports}", "service", "cluster/services",
                               _details(service=f"{svc.namespace}/{svc.name}", type=svc.type, address=address,
                                        ports=ports, selector=views.format_labels(svc.selector),
                                        session_affinity=svc.session_affinity,
                                        external_traffic_policy=svc.external_traffic_policy)))
        for s in by_service.get(key, ()):
            port_text = ",".join(f"{p.port}/{p.protocol}" for p in s.ports)
            for ep in s.endpoints:
                target = pod_id(s.namespace, ep.pod)
                if target not in drawn:
                    continue
                state = "ready" if ep.ready else ("terminating" if ep.terminating else "not ready")
                edges.append(GraphEdge(f"ep/{key}/{ep.pod}/{s.name}", sid, target, "endpoint", port_text,
                                       _details(endpoint=f"{ep.address} {port_text}", slice=s.name, node=ep.node,
                                                state=state), broken=not ep.ready))


def lab_graph(lab_name: str) -> LabGraph:
    """The graph of a running lab, from its store (no root needed)."""
    from .. import engine
    from ..state import LabState
    _paths, store, lab = engine.open_lab(lab_name)
    st = LabState(store)
    return build_graph(lab, st.pods(), st.pod_statuses(), st.node_statuses(), st.services(), st.endpoint_slices())


# --- the traced path ---------------------------------------------------------------------

def element_for_hop(graph: LabGraph, netns: str, interface: str) -> str | None:
    hop = (netns, interface)
    for e in (*graph.nodes, *graph.edges):
        if hop in e.hops:
            return e.id
    return None


def _hop_text(hop) -> str:
    return hop if isinstance(hop, str) else f"{hop[0]} {hop[1]}"


def annotate(graph: LabGraph, highlight: Iterable | None = None, notes: Mapping | None = None) -> LabGraph:
    """The graph with a path marked and notes attached (see the module doc); pure."""
    ids = graph.ids()
    steps: dict[str, list[int]] = {}
    sequence: list[str] = []
    unmatched: list[str] = []
    path_lines: list[str] = []
    for i, hop in enumerate(highlight or (), 1):
        target = hop if isinstance(hop, str) and hop in ids else (
            element_for_hop(graph, *hop) if not isinstance(hop, str) else None)
        if target is None:
            unmatched.append(_hop_text(hop))
            continue
        steps.setdefault(target, []).append(i)
        path_lines.append(f"{i}. {_hop_text(hop)}")
        if not sequence or sequence[-1] != target:
            sequence.append(target)
    node_ids = {n.id for n in graph.nodes}
    links = set()   # consecutive nodes of the path, either way round (an edge hop marks itself)
    for a, b in zip(sequence, sequence[1:]):
        if a in node_ids and b in node_ids:
            links |= {(a, b), (b, a)}
    new_nodes = [replace(n, steps=tuple(steps.get(n.id, ()))) for n in graph.nodes]
    # a tunnel both of whose VTEPs the path crossed carried it (the trace sees the outer packet on eth0)
    new_edges = [replace(e, steps=tuple(steps.get(e.id, ())),
                         on_path=(e.src, e.dst) in links or e.id in steps
                         or (e.kind == "tunnel" and e.src in steps and e.dst in steps))
                 for e in graph.edges]
    for n, (key, text) in enumerate((notes or {}).items()):
        target = _note_target(graph, key, ids)
        note_id = f"note/{n}"
        if target is None or target.startswith("cluster/"):
            at = target if target else None
            new_nodes.append(GraphNode(note_id, text, "note", at, _details(note=text, about=_hop_text(key))))
            continue
        owner = next((x for x in graph.nodes if x.id == target), None) or _edge_end(graph, target)
        new_nodes.append(GraphNode(note_id, text, "note", owner.cluster, _details(note=text, about=_hop_text(key))))
        new_edges.append(GraphEdge(f"{note_id}/at", note_id, owner.id, "note", constraint=False))
    if unmatched:
        text = "not drawn: " + ", ".join(unmatched)
        new_nodes.append(GraphNode("note/unmatched", text, "note", None, _details(note=text)))
    return replace(graph, nodes=tuple(new_nodes), edges=tuple(new_edges),
                   path=tuple(path_lines) + tuple(f"{_hop_text(k)}: {v}" for k, v in (notes or {}).items()))


def path_from_trace(trace: Mapping) -> tuple[list[Hop], dict]:
    """highlight and notes for render() from a trace in the `trace -o json` shape: the
    probe's hops then the reply's, each NAT step as a note in the namespace it happened in
    ("DNAT from -> to (rule)"), and the drop, if any, on the hop where it happened."""
    hops = [(h["netns"], h["interface"]) for h in (*trace.get("hops", ()), *(trace.get("reply") or {}).get("hops", ()))]
    notes: dict = {}
    for nat in trace.get("nat", ()):
        rule = nat.get("rule") or nat.get("chain")   # the field name, and the trace's
        text = f"{nat['type']} {nat['from']} -> {nat['to']}" + (f" ({rule})" if rule else "")
        notes[nat["netns"]] = f"{notes[nat['netns']]}\n{text}" if nat["netns"] in notes else text
    drop = trace.get("drop")
    if drop:
        key = (drop["netns"], drop["interface"]) if drop.get("interface") else drop["netns"]
        notes[key] = f"dropped: {drop['reason']}"
    return hops, notes


def _note_target(graph: LabGraph, key, ids: set[str]) -> str | None:
    if isinstance(key, tuple):
        return element_for_hop(graph, *key)
    if key in ids:
        return key
    return next((c.id for c in graph.clusters if c.netns == key), None)


def _edge_end(graph: LabGraph, edge_id: str) -> GraphNode:
    """A note about an edge hangs on the edge's far end (the interface the packet reaches)."""
    edge = next(e for e in graph.edges if e.id == edge_id)
    return graph.node(edge.dst)


# --- rendering ----------------------------------------------------------------------------

def dot_command(args: list[str], stdin: bytes) -> bytes:
    """Graphviz's dot, with a clear error when it is missing or fails."""
    try:
        proc = subprocess.run(["dot", *args], input=stdin, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise GraphError("Graphviz's dot is not installed; install graphviz (scripts/bootstrap.sh does), "
                         "or use -o dot / -o mermaid") from None
    if proc.returncode != 0:
        raise GraphError(f"dot {' '.join(args)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


class GraphError(Exception):
    pass


def render(graph: LabGraph, fmt: str, highlight: Iterable | None = None, notes: Mapping | None = None) -> str | bytes:
    """The graph in one format: str for svg, dot, mermaid, html; bytes for png."""
    from . import render_dot, render_html, render_mermaid
    if fmt not in FORMATS:
        raise GraphError(f"output format {fmt!r} is not one of {', '.join(FORMATS)}; use e.g. -o svg")
    if highlight or notes:
        graph = annotate(graph, highlight, notes)
    if fmt == "mermaid":
        return render_mermaid.render(graph)
    text = render_dot.render(graph)
    if fmt == "dot":
        return text
    if fmt == "png":
        return dot_command(["-Tpng", "-Gdpi=96"], text.encode())
    svg = dot_command(["-Tsvg"], text.encode()).decode()
    return svg if fmt == "svg" else render_html.render(graph, svg)


def format_for(path: str | None, fmt: str | None) -> str:
    """-o as given, else from -f's extension, else svg."""
    if fmt:
        return fmt
    ext = (path or "").rsplit(".", 1)[-1].lower() if path and "." in path else ""
    aliases = {"gv": "dot", "mmd": "mermaid", "htm": "html"}
    ext = aliases.get(ext, ext)
    return ext if ext in FORMATS else "svg"

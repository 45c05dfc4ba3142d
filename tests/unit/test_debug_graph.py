"""netlab.debug.graph: the lab's picture as a pure description (built from
records, no root) and its text renderers (dot, mermaid) and the html page
around an SVG; the traced path and notes drawn on it. Graphviz itself runs in
tests/integration/test_graph.py."""
from __future__ import annotations

import json
import re
from ipaddress import IPv4Address

import pytest

from cni.main.bridge import host_veth_name
from netlab.debug import graph, render_dot, render_html, render_mermaid
from netlab.debug.graph import GraphCluster, GraphEdge, GraphNode, LabGraph
from netlab.model import Container, ContainerPort, Lab, Node, Pod, PodSpec, Service, ServicePort
from netlab.model.endpoints import EndpointPort, EndpointSlice, SliceEndpoint
from netlab.state import ContainerStatus, NodeStatus, PodStatus

# --- a hand-built graph: what the renderers must keep ----------------------------------------

HAND = LabGraph(
    "lab demo",
    clusters=(GraphCluster("cluster/node/a", "node a", "node", netns="demo-a"),
              GraphCluster("cluster/inner", 'inner "quoted"', "node", parent="cluster/node/a")),
    nodes=(GraphNode("pod/default/web", 'web "1"\neth0 10.244.1.2', "pod", "cluster/node/a",
                     (("IP", "10.244.1.2"),), hops=(("demo-default.web", "eth0"),)),
           GraphNode("if/demo-a/cni0", "cni0\n10.244.1.1/24", "bridge", "cluster/inner",
                     hops=(("demo-a", "cni0"),)),
           GraphNode("if/demo-a/eth0", "eth0", "uplink", "cluster/node/a", hops=(("demo-a", "eth0"),)),
           GraphNode("if/demo-underlay/underlay", "switch", "switch", None)),
    edges=(GraphEdge("veth/default/web", "pod/default/web", "if/demo-a/cni0", "veth", "veth1234",
                     hops=(("demo-a", "veth1234"),)),
           GraphEdge("route/a", "if/demo-a/cni0", "if/demo-a/eth0", "route", "forwarded"),
           GraphEdge("wire/a", "if/demo-a/eth0", "if/demo-underlay/underlay", "wire", "port a",
                     hops=(("demo-underlay", "a"),)),
           GraphEdge("tunnel/a/b", "if/demo-a/eth0", "if/demo-underlay/underlay", "tunnel", "VXLAN VNI 1",
                     broken=True, constraint=False)))


def test_dot_text_nests_clusters_and_keeps_ids_labels_and_details():
    text = render_dot.render(HAND)
    assert text.startswith("digraph lab {") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    # clusters nest as the description says: inner inside node a
    outer = text.index('subgraph "cluster_cluster/node/a"')
    inner = text.index('subgraph "cluster_cluster/inner"')
    assert outer < inner < text.index('"if/demo-a/cni0" [')
    # every element carries its id (the SVG element id the html page looks up)
    for e in (*HAND.nodes, *HAND.edges, *HAND.clusters):
        assert f'id="{e.id}"' in text
    # quotes escaped, lines as dot's \n, details as the tooltip
    assert r'label="web \"1\"\neth0 10.244.1.2"' in text
    assert r'label="inner \"quoted\""' in text
    assert 'tooltip="IP: 10.244.1.2"' in text
    assert '"pod/default/web" -> "if/demo-a/cni0" [id="veth/default/web", label="veth1234"' in text
    tunnel = next(line for line in text.splitlines() if 'id="tunnel/a/b"' in line)
    assert 'constraint="false"' in tunnel and f'color="{graph.BROKEN_COLOUR}"' in tunnel
    # the switch belongs to no cluster: drawn at the top level, after the clusters
    assert text.index('"if/demo-underlay/underlay" [') > text.rindex("subgraph")


def test_mermaid_text_has_every_node_subgraph_and_link():
    text = render_mermaid.render(HAND)
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert sum(1 for line in lines if line.strip().startswith("subgraph ")) == 2
    assert sum(1 for line in lines if line.strip() == "end") == 2
    assert '["web #quot;1#quot;<br/>eth0 10.244.1.2"]' in text
    for n in HAND.nodes:
        assert n.label.split("\n")[0].replace('"', "#quot;") in text
    links = [line for line in lines if re.match(r"\s+n\d+ (---|-\.-|-\.->)", line)]
    assert len(links) == len(HAND.edges)
    assert '---|"veth1234"|' in text
    assert "linkStyle 3 stroke:" + graph.BROKEN_COLOUR in text   # the broken tunnel, the 4th link
    # comments only on lines of their own (Mermaid does not allow them after a statement)
    assert all(line.lstrip().startswith("%%") or "%%" not in line for line in lines)


# --- the traced path and notes ---------------------------------------------------------------

def test_highlight_numbers_each_hop_and_draws_the_links_between_them():
    hops = [("demo-default.web", "eth0"), ("demo-a", "veth1234"), ("demo-a", "cni0"), ("demo-a", "eth0"),
            ("demo-underlay", "a"), ("demo-other", "flannel.1")]
    g = graph.annotate(HAND, hops)
    steps = {e.id: e.steps for e in (*g.nodes, *g.edges) if e.steps}
    assert steps == {"pod/default/web": (1,), "veth/default/web": (2,), "if/demo-a/cni0": (3,),
                     "if/demo-a/eth0": (4,), "wire/a": (5,)}
    on_path = {e.id for e in g.edges if e.on_path}
    # cni0 -> eth0 are consecutive nodes: the route between them is on the path; the tunnel is not
    assert on_path == {"veth/default/web", "route/a", "wire/a"}
    unmatched = g.node("note/unmatched")
    assert "demo-other flannel.1" in unmatched.label
    assert g.path[0] == "1. demo-default.web eth0" and len(g.path) == 5
    dot = render_dot.render(g)
    assert 'label="[3] cni0\\n10.244.1.1/24"' in dot
    assert dot.count('penwidth="3"') == 3 + 3   # three marked nodes, three edges on the path
    assert "linkStyle 0,1,2 stroke:" + graph.PATH_COLOUR in render_mermaid.render(g)


def test_highlight_takes_element_ids_and_notes_attach_by_hop_id_or_netns():
    notes = {("demo-a", "cni0"): "DNAT 10.96.0.10:53 -> 10.244.1.2:53 (KUBE-SEP-ABC)",
             "wire/a": "VXLAN VNI 1",
             "demo-a": "SNAT to 192.168.56.11",
             ("nowhere", "eth9"): "lost"}
    g = graph.annotate(HAND, ["pod/default/web", "if/demo-a/cni0"], notes)
    assert g.node("pod/default/web").steps == (1,) and g.node("if/demo-a/cni0").steps == (2,)
    by_text = {n.label: n for n in g.nodes if n.kind == "note"}
    dnat = by_text["DNAT 10.96.0.10:53 -> 10.244.1.2:53 (KUBE-SEP-ABC)"]
    assert dnat.cluster == "cluster/inner"
    assert any(e.src == dnat.id and e.dst == "if/demo-a/cni0" and e.kind == "note" for e in g.edges)
    # a note on an edge hangs on its far end; one on a netns goes into its cluster; an unknown one at the top
    assert any(e.src == by_text["VXLAN VNI 1"].id and e.dst == "if/demo-underlay/underlay" for e in g.edges)
    assert by_text["SNAT to 192.168.56.11"].cluster == "cluster/node/a"
    assert by_text["lost"].cluster is None
    assert render_dot.render(g).count("shape=\"note\"") == 4


def test_render_refuses_an_unknown_format_naming_the_choices():
    with pytest.raises(graph.GraphError, match="'gif' is not one of svg, png, dot, mermaid, html"):
        graph.render(HAND, "gif")


@pytest.mark.parametrize("path, fmt, want", [
    (None, None, "svg"), ("lab.png", None, "png"), ("lab.gv", None, "dot"), ("lab.mmd", None, "mermaid"),
    ("lab.HTML", None, "html"), ("lab.txt", None, "svg"), ("lab.png", "dot", "dot")])
def test_format_from_the_option_or_the_file_name(path, fmt, want):
    assert graph.format_for(path, fmt) == want


def test_html_page_is_self_contained_with_details_for_every_element():
    svg = '<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg xmlns="http://www.w3.org/2000/svg"><g id="pod/default/web"/></svg>'
    page = render_html.render(graph.annotate(HAND, [("demo-a", "cni0")]), svg)
    assert page.startswith("<!DOCTYPE html>") and "<?xml" not in page and "<!DOCTYPE svg" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r'\b(src|href)\s*=\s*["\']?(https?:)?//', page)  # nothing fetched from anywhere
    data = json.loads(re.search(r'<script type="application/json" id="details-data">(.*?)</script>', page, re.S)[1])
    assert set(data) == {e.id for e in (*HAND.clusters, *HAND.nodes, *HAND.edges)}
    assert ["IP", "10.244.1.2"] in data["pod/default/web"]["rows"]
    assert ["path steps", "1"] in data["if/demo-a/cni0"]["rows"]
    assert "1. demo-a cni0" in page


def test_html_data_cannot_close_its_script_element():
    g = LabGraph("t", nodes=(GraphNode("x", "</script><b>", "pod"),))
    page = render_html.render(g, "<svg></svg>")
    assert page.count("</script>") == 2


# --- the description from a lab's records ------------------------------------------------------

ECHO = Container("echo", ports=(ContainerPort(8080, name="http"),))
LAB = Lab("demo", (Node("node-a", IPv4Address("192.168.56.11")), Node("node-b", IPv4Address("192.168.56.12"))))


def pod(name, node, ns="default") -> Pod:
    return Pod(name, PodSpec((ECHO,), node_name=node), ns, {"app": "web"})


def running(p: Pod, ip: str, phase="Running") -> PodStatus:
    state = "running" if phase == "Running" else "waiting"
    return PodStatus(p.node_name, LAB.pod_netns(p), phase, ip, containers=(ContainerStatus("echo", 1, state),))


def records(peers_b=("10.244.1.0/24",)):
    pods = {p.key: p for p in (pod("web-1", "node-a"), pod("web-2", "node-b"), pod("dns", "node-a", "kube-system"),
                               pod("unscheduled", None))}
    statuses = {"default/web-1": running(pods["default/web-1"], "10.244.1.2"),
                "default/web-2": running(pods["default/web-2"], "10.244.2.2", phase="Pending"),
                "kube-system/dns": running(pods["kube-system/dns"], "10.244.1.3")}
    nodes = {"node-a": NodeStatus(True, pod_cidr="10.244.1.0/24", vtep_mac="0a:00:00:00:00:01", peers=("10.244.2.0/24",)),
             "node-b": NodeStatus(True, pod_cidr="10.244.2.0/24", vtep_mac="0a:00:00:00:00:02", peers=peers_b)}
    services = {"default/web": Service("web", (ServicePort(80, 8080, name="http", node_port=30080),), type="NodePort",
                                       selector={"app": "web"}, cluster_ip="10.96.0.20"),
                "default/ext": Service("ext", (), type="ExternalName", external_name="example.org")}
    slices = [EndpointSlice("web-node-a", "default", "web", "node-a", (EndpointPort("http", 8080),),
                            (SliceEndpoint("10.244.1.2", "node-a", "web-1"),)),
              EndpointSlice("web-node-b", "default", "web", "node-b", (EndpointPort("http", 8080),),
                            (SliceEndpoint("10.244.2.2", "node-b", "web-2", ready=False, serving=False),))]
    return pods, statuses, nodes, services, slices


def test_build_graph_draws_every_scheduled_pod_interface_tunnel_and_endpoint():
    g = graph.build_graph(LAB, *records())
    ids = g.ids()
    assert {"pod/default/web-1", "pod/default/web-2", "pod/kube-system/dns"} <= ids
    assert "pod/default/unscheduled" not in ids
    for node in ("node-a", "node-b"):
        for dev in ("eth0", "cni0", "flannel.1"):
            assert f"if/demo-{node}/{dev}" in ids
    assert g.node("if/demo-node-a/cni0").label == "cni0\n10.244.1.1/24"
    assert g.node("if/demo-node-b/flannel.1").label == "flannel.1\n10.244.2.0/32\nVNI 1 UDP 8472"
    assert g.node("pod/default/web-2").label == "web-2\neth0 10.244.2.2\nPending"
    assert g.node("pod/kube-system/dns").label == "kube-system/dns\neth0 10.244.1.3"
    assert g.node("pod/kube-system/dns").cluster == "cluster/node/node-a"
    assert g.node("svc/default/web").label == "svc web\nClusterIP 10.96.0.20\n80:30080/TCP"
    assert g.node("svc/default/ext").label == "svc ext\nExternalName example.org\n<none>"
    edges = {e.id: e for e in g.edges}
    tunnel = edges["tunnel/node-a/node-b"]
    assert not tunnel.broken and "VXLAN VNI 1\n192.168.56.11 <-> 192.168.56.12" == tunnel.label
    assert not edges["ep/default/web/web-1/web-node-a"].broken and edges["ep/default/web/web-2/web-node-b"].broken
    assert edges["ep/default/web/web-1/web-node-a"].label == "8080/TCP"
    # the hops a trace reports map to the elements drawn for them
    veth = host_veth_name("default_web-1", "eth0")
    assert edges["veth/default/web-1"].label == veth
    assert graph.element_for_hop(g, "demo-node-a", veth) == "veth/default/web-1"
    assert graph.element_for_hop(g, "demo-default.web-1", "eth0") == "pod/default/web-1"
    assert graph.element_for_hop(g, "demo-underlay", "node-b") == "wire/node-b"
    assert graph.element_for_hop(g, "demo-underlay", "external") == "wire/external"
    assert graph.element_for_hop(g, "demo-external", "eth0") == "if/demo-external/eth0"
    # every edge joins drawn nodes
    node_ids = {n.id for n in g.nodes}
    assert all(e.src in node_ids and e.dst in node_ids for e in g.edges)


def test_a_tunnel_one_side_has_not_programmed_is_drawn_broken_and_says_which():
    g = graph.build_graph(LAB, *records(peers_b=()))
    tunnel = next(e for e in g.edges if e.kind == "tunnel")
    assert tunnel.broken and "node-b lacks the peer node-a" in tunnel.label


def test_a_node_without_a_lease_yet_and_a_lab_without_services():
    pods, statuses, _nodes, _services, _slices = records()
    g = graph.build_graph(LAB, pods, statuses, {}, {}, [])
    assert g.node("if/demo-node-a/cni0").label == "cni0\nno lease yet"
    assert "cluster/services" not in g.ids()
    assert next(e for e in g.edges if e.kind == "tunnel").broken


def test_path_from_a_trace_result_marks_hops_nat_and_drop():
    trace = {"src": "a", "dst": "svc/web", "verdict": "dropped",
             "hops": [{"netns": "demo-default.web", "interface": "eth0", "direction": "out"},
                      {"netns": "demo-a", "interface": "veth1234", "direction": "in"}],
             "nat": [{"type": "DNAT", "netns": "demo-a", "from": "10.96.0.20:80", "to": "10.244.2.2:8080",
                      "rule": "KUBE-SEP-XYZ"},
                     {"type": "SNAT", "netns": "demo-a", "from": "10.244.1.2", "to": "10.244.1.0", "chain": "KUBE-POSTROUTING"}],
             "reply": {"hops": [{"netns": "demo-a", "interface": "cni0", "direction": "in"}]},
             "drop": {"netns": "demo-a", "interface": "eth0", "reason": "MTU"}}
    hops, notes = graph.path_from_trace(trace)
    assert hops == [("demo-default.web", "eth0"), ("demo-a", "veth1234"), ("demo-a", "cni0")]
    assert notes == {"demo-a": "DNAT 10.96.0.20:80 -> 10.244.2.2:8080 (KUBE-SEP-XYZ)\nSNAT 10.244.1.2 -> 10.244.1.0 (KUBE-POSTROUTING)",
                     ("demo-a", "eth0"): "dropped: MTU"}
    g = graph.annotate(HAND, hops, notes)
    assert g.node("if/demo-a/cni0").steps == (3,)
    assert {n.label for n in g.nodes if n.kind == "note"} == set(notes.values())


def test_a_path_through_both_vteps_marks_the_tunnel_between_them():
    g = graph.build_graph(LAB, *records())
    hops = [("demo-node-a", "cni0"), ("demo-node-a", "flannel.1"), ("demo-node-a", "eth0"),
            ("demo-underlay", "node-a"), ("demo-underlay", "node-b"), ("demo-node-b", "eth0"),
            ("demo-node-b", "flannel.1"), ("demo-node-b", "cni0")]
    on_path = {e.id for e in graph.annotate(g, hops).edges if e.on_path}
    assert on_path == {"route/node-a/overlay", "encap/node-a", "wire/node-a", "wire/node-b", "encap/node-b",
                       "route/node-b/overlay", "tunnel/node-a/node-b"}


def test_a_single_node_lab_without_external_host_has_no_tunnel_and_no_external():
    one = Lab("one", (Node("solo", IPv4Address("192.168.56.11")),), external=None)
    g = graph.build_graph(one, {}, {}, {"solo": NodeStatus(True, pod_cidr="10.244.1.0/24")}, {}, [])
    assert not [e for e in g.edges if e.kind == "tunnel"]
    assert {c.id for c in g.clusters} == {"cluster/underlay", "cluster/node/solo"}
    assert "wire/external" not in g.ids()
    assert render_mermaid.render(g).count("subgraph ") == 2

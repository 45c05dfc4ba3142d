"""The lab file: parsing, defaults, derived values, serialisation, the shipped
topologies, and every validation error (file, line, field, value, fix)."""
from __future__ import annotations

import json
import textwrap
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from netlab.model import Lab, ModelError, load_lab, parse_lab
from netlab.model import names

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"

HEAD = "apiVersion: netlab.dev/v1alpha1\nkind: Lab\nmetadata:\n  name: t\n"


def lab_text(spec: str = "", head: str = HEAD) -> str:
    spec = textwrap.dedent(spec).strip("\n")
    return head + ("spec:\n" + textwrap.indent(spec, "  ") + "\n" if spec else "")


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def problems_of(fn, *args, **kwargs):
    with pytest.raises(ModelError) as ei:
        fn(*args, **kwargs)
    return ei.value.problems


def problem_at(problems, path):
    found = [p for p in problems if p.path == path]
    assert found, f"no problem at {path!r}; got:\n" + "\n".join(map(str, problems))
    return found[0]


def lab_error(spec: str, path: str, *fragments: str, head: str = HEAD, source: str = "lab.yaml"):
    """Parse a lab spec that must fail; check the problem at path names the fix."""
    probs = problems_of(parse_lab, lab_text(spec, head), source)
    p = problem_at(probs, path)
    assert p.source == source
    assert p.line is not None
    for frag in fragments:
        assert frag in p.message, f"{frag!r} not in {p.message!r}"
    return p


# --- defaults ---------------------------------------------------------------

def test_minimal_lab_gets_every_default():
    lab = parse_lab(HEAD)
    assert lab.name == "t"
    assert [(n.name, n.underlay_ip) for n in lab.nodes] == [("node-1", IPv4Address("192.168.56.11"))]
    assert lab.pod_cidr == IPv4Network("10.244.0.0/16")
    assert lab.subnet_len == 24
    assert lab.service_cidr == IPv4Network("10.96.0.0/12")
    assert lab.dns_ip == IPv4Address("10.96.0.10")
    assert lab.cluster_domain == "cluster.local"
    assert lab.underlay.cidr == IPv4Network("192.168.56.0/24")
    assert lab.underlay.mtu == 1500
    assert (lab.vxlan.vni, lab.vxlan.port, lab.vxlan.device) == (1, 8472, "flannel.1")
    assert lab.proxy_mode == "iptables"
    assert lab.node_port_range == (30000, 32767)
    assert lab.external is not None and lab.external.ip == IPv4Address("192.168.56.254")
    assert lab.objects == ()


def test_derived_values():
    lab = parse_lab(lab_text("nodes: 2"))
    assert lab.overlay_mtu == 1450
    assert lab.pods_per_node == 253
    assert lab.kubernetes_service_ip == IPv4Address("10.96.0.1")
    subnets = lab.node_subnets()
    assert subnets[0] == IPv4Network("10.244.1.0/24")   # flannel skips the first
    assert subnets[-1] == IPv4Network("10.244.255.0/24")
    assert len(subnets) == 255
    assert lab.node_names == ["node-1", "node-2"]
    assert lab.node("node-2").underlay_ip == IPv4Address("192.168.56.12")
    with pytest.raises(KeyError):
        lab.node("nope")


def test_nodes_shorthand_number_and_names():
    lab = parse_lab(lab_text("nodes: 3"))
    assert [n.name for n in lab.nodes] == ["node-1", "node-2", "node-3"]
    assert [str(n.underlay_ip) for n in lab.nodes] == ["192.168.56.11", "192.168.56.12", "192.168.56.13"]
    lab = parse_lab(lab_text("nodes: [alpha, beta]"))
    assert [n.name for n in lab.nodes] == ["alpha", "beta"]


def test_auto_addresses_skip_explicit_ones_and_the_external_host():
    lab = parse_lab(lab_text("""
        nodes:
          - {name: a}
          - {name: b, underlayIP: 192.168.56.11}
          - {name: c}
        """))
    assert {n.name: str(n.underlay_ip) for n in lab.nodes} == {
        "a": "192.168.56.12", "b": "192.168.56.11", "c": "192.168.56.13"}
    lab = parse_lab(lab_text("""
        underlay: {cidr: 10.0.0.0/28}
        external: {ip: 10.0.0.12}
        nodes: 3
        """))
    assert [str(n.underlay_ip) for n in lab.nodes] == ["10.0.0.11", "10.0.0.13", "10.0.0.14"]


def test_node_labels():
    lab = parse_lab(lab_text("nodes: [{name: a, labels: {zone: z1, example.com/role: edge}}]"))
    assert lab.nodes[0].labels == {"zone": "z1", "example.com/role": "edge"}


def test_external_host_variants():
    assert parse_lab(lab_text("external: false")).external is None
    assert parse_lab(lab_text("external: false")).external_netns is None
    lab = parse_lab(lab_text("external: {ip: 192.168.56.200}"))
    assert lab.external.ip == IPv4Address("192.168.56.200")
    lab = parse_lab(lab_text("underlay: {cidr: 172.31.0.0/16}"))
    assert lab.external.ip == IPv4Address("172.31.255.254")
    assert lab.nodes[0].underlay_ip == IPv4Address("172.31.0.11")


def test_subnet_len_and_dns_defaults_follow_the_ranges():
    lab = parse_lab(lab_text("podCIDR: 10.200.0.0/23"))
    assert lab.subnet_len == 25          # flannel: network length + 2 below a /22
    lab = parse_lab(lab_text("serviceCIDR: 10.100.0.0/16"))
    assert lab.dns_ip == IPv4Address("10.100.0.10")
    assert lab.kubernetes_service_ip == IPv4Address("10.100.0.1")


def test_every_field_explicit():
    lab = parse_lab(lab_text("""
        nodes: [{name: n1, underlayIP: 10.1.0.5}]
        podCIDR: 10.50.0.0/16
        subnetLen: 26
        serviceCIDR: 10.60.0.0/16
        dnsIP: 10.60.0.53
        clusterDomain: lab.example
        underlay: {cidr: 10.1.0.0/24, mtu: 9000}
        vxlan: {vni: 42, port: 4789}
        proxyMode: nftables
        nodePortRange: 31000-31999
        external: true
        """))
    assert lab.subnet_len == 26 and lab.pods_per_node == 61
    assert lab.dns_ip == IPv4Address("10.60.0.53")
    assert lab.cluster_domain == "lab.example"
    assert lab.overlay_mtu == 8950
    assert lab.vxlan.device == "flannel.42"
    assert lab.proxy_mode == "nftables"
    assert lab.node_port_range == (31000, 31999)
    assert lab.external.ip == IPv4Address("10.1.0.254")


@pytest.mark.parametrize("mode", ["iptables", "nftables", "ipvs"])
def test_proxy_modes(mode):
    assert parse_lab(lab_text(f"proxyMode: {mode}")).proxy_mode == mode


def test_name_override():
    lab = parse_lab(lab_text(), name="nlt42x")
    assert lab.name == "nlt42x"
    # metadata.name may then be absent
    lab = parse_lab("apiVersion: netlab.dev/v1alpha1\nkind: Lab\n", name="other")
    assert lab.name == "other"
    p = problems_of(parse_lab, lab_text(), name="Bad-Name")[0]
    assert "not a valid lab name" in p.message


def test_namespace_names_of_the_lab():
    lab = parse_lab(lab_text("nodes: [node-a, node-b]"), name="demo")
    assert lab.underlay_netns == "demo-underlay"
    assert lab.external_netns == "demo-external"
    assert lab.node_netns("node-a") == "demo-node-a"
    assert lab.nodes[1].netns("demo") == "demo-node-b"
    assert lab.netns_names() == ["demo-underlay", "demo-node-a", "demo-node-b", "demo-external"]


# --- workloads in the lab file ------------------------------------------------

ECHO = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers: [{name: echo, ports: [{containerPort: 8080}]}]
"""


def test_workload_files_are_relative_to_the_lab_file(tmp_path):
    write(tmp_path, "labs/w/echo.yaml", ECHO)
    lab_file = write(tmp_path, "labs/lab.yaml", lab_text("workloads: [w/echo.yaml]"))
    lab = load_lab(lab_file)
    assert [d.name for d in lab.deployments] == ["echo"]
    assert len(lab.pods()) == 2
    assert lab.source == str(lab_file)


def test_workload_directory(tmp_path):
    write(tmp_path, "w/a.yaml", ECHO)
    write(tmp_path, "w/b.yml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n")
    write(tmp_path, "w/notes.txt", "not a manifest")
    lab = load_lab(write(tmp_path, "lab.yaml", lab_text("workloads: [w]")))
    assert [o.kind for o in lab.objects] == ["Deployment", "Namespace"]
    assert "extra" in lab.namespaces


def test_inline_manifests_and_extra_documents():
    text = lab_text("manifests:\n" + textwrap.indent(
        "- apiVersion: v1\n  kind: Namespace\n  metadata: {name: web}\n", "  "))
    text += "---\n" + ECHO.replace("metadata: {name: echo}", "metadata: {name: echo, namespace: web}")
    lab = parse_lab(text)
    assert [(o.kind, o.name) for o in lab.objects] == [("Namespace", "web"), ("Deployment", "echo")]
    assert lab.namespaces == ["default", "kube-system", "kube-public", "kube-node-lease", "web"]
    assert all(p.namespace == "web" for p in lab.pods())


def test_with_objects_validates_like_load():
    from netlab.model import parse_manifests
    lab = parse_lab(lab_text("nodes: [a, b]"))
    objs = parse_manifests(ECHO, "echo.yaml")
    lab2 = lab.with_objects(objs)
    assert lab2.deployments[0].name == "echo" and lab.objects == ()
    bad = parse_manifests(ECHO.replace("containers:", "nodeName: c\n      containers:"), "echo.yaml")
    p = problem_at(problems_of(lab.with_objects, bad), "spec.template.spec.nodeName")
    assert p.source == "echo.yaml" and '"c" is not a node' in p.message and "a, b" in p.message


def test_scheduled_pods_spread_and_stay():
    lab = parse_lab(lab_text("nodes: [a, b]\nmanifests:\n" + textwrap.indent(
        ECHO.replace("replicas: 2", "replicas: 4").strip().replace("\n", "\n  ").join(["- ", ""]), "  ")))
    placed = lab.scheduled_pods()
    assert [p.node_name for p in placed] == ["a", "b", "a", "b"]
    current = {placed[0].key: "b"}
    assert lab.scheduled_pods(current)[0].node_name == "b"


# --- serialisation ------------------------------------------------------------

@pytest.mark.parametrize("topology", ["single-node.yaml", "two-node.yaml", "three-node.yaml"])
def test_to_dict_is_json_and_round_trips(topology):
    lab = load_lab(TOPOLOGIES / topology)
    d = json.loads(json.dumps(lab.to_dict()))
    again = Lab.from_dict(d)
    assert again == lab
    assert again.to_dict() == d
    assert [p.name for p in again.scheduled_pods()] == [p.name for p in lab.scheduled_pods()]
    assert [p.node_name for p in again.scheduled_pods()] == [p.node_name for p in lab.scheduled_pods()]


def test_from_dict_errors_name_the_source():
    d = parse_lab(lab_text()).to_dict()
    d["spec"]["proxyMode"] = "bpf"
    p = problem_at(problems_of(Lab.from_dict, d, "store:/labs/t"), "spec.proxyMode")
    assert p.source == "store:/labs/t"


# --- shipped topologies ---------------------------------------------------------

def test_shipped_topologies_load():
    files = sorted(TOPOLOGIES.glob("*.yaml"))
    assert {f.name for f in files} >= {"single-node.yaml", "two-node.yaml", "three-node.yaml"}
    for f in files:
        lab = load_lab(f)
        assert len(lab.name) <= names.MAX_LAB_NAME
        lab.scheduled_pods()


def test_two_node_topology_has_pods_on_each_node():
    lab = load_lab(TOPOLOGIES / "two-node.yaml")
    assert lab.node_names == ["node-a", "node-b"]
    pods = lab.scheduled_pods()
    by_node = {n: [p for p in pods if p.node_name == n] for n in lab.node_names}
    assert all(len(v) >= 2 for v in by_node.values())
    ports = {(p.container_port, p.protocol) for p in pods[0].ports()}
    assert ports == {(8080, "TCP"), (8080, "UDP")}
    assert all(c.runs_echo_server for p in pods for c in p.containers)


def test_three_node_topology():
    lab = load_lab(TOPOLOGIES / "three-node.yaml")
    assert len(lab.nodes) == 3
    pods = lab.scheduled_pods()
    assert {p.node_name for p in pods} == {"node-a", "node-b", "node-c"}
    client = [p for p in pods if p.name == "client"][0]
    assert client.namespace == "demo" and client.node_name == "node-a"
    assert client.containers[0].argv == ("sleep", "infinity")


def test_topology_name_can_be_overridden_for_a_second_copy():
    a = load_lab(TOPOLOGIES / "two-node.yaml")
    b = load_lab(TOPOLOGIES / "two-node.yaml", name="twonode2")
    assert set(a.netns_names()).isdisjoint(b.netns_names())


# --- validation errors ------------------------------------------------------------

def test_error_message_format_names_file_line_field_value_and_fix(tmp_path):
    f = write(tmp_path, "two-node.yaml", lab_text("""
        nodes:
          - name: node-a
          - name: Node_B
        """))
    with pytest.raises(ModelError) as ei:
        load_lab(f)
    text = str(ei.value)
    assert text == (f'{f}:8: spec.nodes[1].name: "Node_B" is not a valid name; use lowercase letters, digits and '
                    "'-', starting and ending with a letter or digit (RFC 1123 label)")


def test_all_problems_are_reported_at_once_in_line_order():
    probs = problems_of(parse_lab, lab_text("""
        proxyMode: bpf
        nodes: [{name: A}]
        vxlan: {vni: 0}
        """), "lab.yaml")
    assert [p.path for p in probs] == ["spec.proxyMode", "spec.nodes[0].name", "spec.vxlan.vni"]
    assert [p.line for p in probs] == sorted(p.line for p in probs)


@pytest.mark.parametrize("name, fragment", [
    ("two-node", "no '-'"),
    ("Lab1", "lowercase"),
    ("1lab", "starting with a letter"),
    ("abcdefghijk", "at most 10"),
])
def test_bad_lab_names(name, fragment):
    head = HEAD.replace("name: t", f"name: {name}")
    lab_error("", "metadata.name", f'"{name}"', fragment, head=head)


def test_missing_metadata_name_and_wrong_kind_or_version():
    lab_error("", "metadata", "missing", "metadata: {name: demo}",
              head="apiVersion: netlab.dev/v1alpha1\nkind: Lab\n")
    lab_error("", "metadata.name", "missing", "name: demo",
              head="apiVersion: netlab.dev/v1alpha1\nkind: Lab\nmetadata: {labels: {a: b}}\n")
    lab_error("", "kind", '"Deployment"', "use kind: Lab", head=HEAD.replace("kind: Lab", "kind: Deployment"))
    lab_error("", "apiVersion", '"v1"', "use apiVersion: netlab.dev/v1alpha1",
              head=HEAD.replace("netlab.dev/v1alpha1", "v1"))
    lab_error("", "kind", "missing", "kind: Lab", head=HEAD.replace("kind: Lab\n", ""))


def test_unknown_fields_are_errors_with_suggestions():
    lab_error("podCidr: 10.0.0.0/16", "spec.podCidr", "unknown field", "did you mean podCIDR?")
    lab_error("underlay: {mtus: 1500}", "spec.underlay.mtus", "did you mean mtu?")
    lab_error("nodes: [{name: a, ip: 1.2.3.4}]", "spec.nodes[0].ip", "unknown field", "known fields")
    lab_error("colour: blue", "spec.colour", "unknown field", "known fields: clusterDomain")


@pytest.mark.parametrize("node, fragment", [
    ("Node_B", "RFC 1123 label"),
    ("-a", "RFC 1123 label"),
    ("a-very-long-node-name", "at most 15"),
    ("underlay", "reserved"),
    ("external", "reserved"),
    ("lo", "reserved"),
])
def test_bad_node_names(node, fragment):
    lab_error(f"nodes: [{{name: {node}}}]", "spec.nodes[0].name", f'"{node}"', fragment)


def test_node_errors():
    lab_error("nodes: [{name: a}, {name: a}]", "spec.nodes[1].name", "already the name of spec.nodes[0]", "unique")
    lab_error("nodes: [{underlayIP: 192.168.56.20}]", "spec.nodes[0].name", "missing", "name: node-a")
    lab_error("nodes: [{name: a, underlayIP: 10.9.9.9}]", "spec.nodes[0].underlayIP",
              '"10.9.9.9"', "underlay.cidr 192.168.56.0/24", "leave underlayIP out")
    lab_error("nodes: [{name: a, underlayIP: 192.168.56.255}]", "spec.nodes[0].underlayIP", "not a usable address")
    lab_error("nodes: [{name: a, underlayIP: 192.168.56.300}]", "spec.nodes[0].underlayIP", "not an IPv4 address")
    lab_error("nodes: [{name: a, underlayIP: 192.168.56.11}, {name: b, underlayIP: 192.168.56.11}]",
              "spec.nodes[1].underlayIP", "already spec.nodes[0]'s address")
    lab_error("nodes: [{name: a, underlayIP: 192.168.56.254}]", "spec.nodes[0].underlayIP",
              "external host's address", "spec.external.ip")
    lab_error("nodes: 0", "spec.nodes", "at least one node")
    lab_error("nodes: []", "spec.nodes", "is empty")
    lab_error("nodes: true", "spec.nodes", "use a number")
    lab_error("nodes: [42]", "spec.nodes[0]", "not a node", "{name: node-a}")
    lab_error("nodes: [{name: a, labels: {zone: 'a b'}}]", 'spec.nodes[0].labels.zone', "label value")


@pytest.mark.parametrize("spec, path, fragments", [
    ("podCIDR: 10.244.1.0/16", "spec.podCIDR", ["host bits", "use 10.244.0.0/16"]),
    ("podCIDR: 10.244.0.0", "spec.podCIDR", ["not a CIDR", "10.244.0.0/24"]),
    ("podCIDR: banana/16", "spec.podCIDR", ["not an IPv4 CIDR", "like 10.244.0.0/16"]),
    ("podCIDR: fd00::/64", "spec.podCIDR", ["IPv6", "only IPv4"]),
    ("serviceCIDR: 127.0.0.0/16", "spec.serviceCIDR", ["reserved range", "private range"]),
    ("serviceCIDR: 10.244.0.0/20", "spec.serviceCIDR", ["overlaps spec.podCIDR 10.244.0.0/16", "do not overlap"]),
    ("underlay: {cidr: 10.0.0.0/8}", "spec.underlay.cidr", ["overlaps spec.podCIDR", "do not overlap"]),
    ("podCIDR: 10.96.0.0/16", "spec.serviceCIDR", ["overlaps spec.podCIDR 10.96.0.0/16"]),
])
def test_cidr_errors(spec, path, fragments):
    lab_error(spec, path, *fragments)


def test_too_many_nodes_for_the_pod_cidr():
    lab_error("podCIDR: 10.244.0.0/22\nnodes: 4", "spec.nodes", "4 nodes do not fit podCIDR 10.244.0.0/22",
              "3 node subnets", "larger podCIDR")
    parse_lab(lab_text("podCIDR: 10.244.0.0/22\nnodes: 3"))


def test_too_many_nodes_for_the_underlay():
    lab_error("underlay: {cidr: 192.168.56.0/28}\nnodes: 5", "spec.nodes", "no address left", "larger underlay.cidr")


@pytest.mark.parametrize("spec, path, fragments", [
    ("subnetLen: 16", "spec.subnetLen", ["out of range", "from 17 to 30"]),
    ("subnetLen: 31", "spec.subnetLen", ["out of range"]),
    ("subnetLen: '24'", "spec.subnetLen", ['"24" is a string, expected an integer']),
    ("proxyMode: IPVS", "spec.proxyMode", ['"IPVS"', "use ipvs"]),
    ("proxyMode: userspace", "spec.proxyMode", ['"userspace"', "use iptables or nftables or ipvs"]),
    ("nodePortRange: 30000", "spec.nodePortRange", ["not a port range", "30000-32767"]),
    ("nodePortRange: 32767-30000", "spec.nodePortRange", ["not a valid range"]),
    ("nodePortRange: 8000-9000", "spec.nodePortRange", ["VXLAN port 8472", "a range without it"]),
    ("vxlan: {vni: 10000000}", "spec.vxlan.vni", ["from 1 to 9999999", "flannel.<vni>"]),
    ("vxlan: {port: 0}", "spec.vxlan.port", ["from 1 to 65535"]),
    ("underlay: {mtu: 500}", "spec.underlay.mtu", ["from 576"]),
    ("underlay: {mtu: big}", "spec.underlay.mtu", ['"big" is a string, expected an integer']),
    ("dnsIP: 10.244.0.10", "spec.dnsIP", ["not a usable address of serviceCIDR 10.96.0.0/12", "10.96.0.10"]),
    ("dnsIP: 10.96.0.1", "spec.dnsIP", ["kubernetes Service"]),
    ("dnsIP: 10.96.0.0", "spec.dnsIP", ["not a usable address"]),
    ("clusterDomain: cluster.local.", "spec.clusterDomain", ["ends with '.'", "cluster.local"]),
    ("clusterDomain: Cluster_Local", "spec.clusterDomain", ["RFC 1123 subdomain"]),
    ("external: maybe", "spec.external", ["use true, false or {ip:"]),
    ("external: {ip: 10.0.0.1}", "spec.external.ip", ["not a usable address of underlay.cidr"]),
    ("workloads: [{kind: Pod}]", "spec.workloads[0]", ["not a path", "spec.manifests"]),
    ("workloads: [nothere.yaml]", "spec.workloads[0]", ["no such file", "relative to the lab file"]),
    ("manifests: {a: b}", "spec.manifests", ["expected a list"]),
    ("underlay: [1500]", "spec.underlay", ["is a list, expected a mapping"]),
])
def test_field_errors(spec, path, fragments):
    lab_error(spec, path, *fragments)


def test_string_where_a_string_is_expected_gets_a_quote_hint():
    lab_error("clusterDomain: 5", "spec.clusterDomain", "is a number, expected a string", 'quote it')


def test_yaml_syntax_error_names_the_line(tmp_path):
    f = write(tmp_path, "lab.yaml", HEAD + "spec:\n  nodes: [a, b\n  podCIDR: 10.0.0.0/8\n")
    p = problems_of(load_lab, f)[0]
    assert p.source == str(f) and p.line is not None and p.line >= 6
    assert "YAML syntax error" in p.message and "fix the YAML" in p.message


def test_duplicate_keys_are_errors():
    p = problems_of(parse_lab, HEAD + "spec:\n  proxyMode: ipvs\n  proxyMode: iptables\n", "lab.yaml")[0]
    assert p.line == 7 and 'duplicate key "proxyMode"' in p.message


def test_empty_or_non_mapping_files():
    assert "is empty" in problems_of(parse_lab, "", "lab.yaml")[0].message
    assert "is a list" in problems_of(parse_lab, "- a\n- b\n", "lab.yaml")[0].message


def test_missing_lab_file(tmp_path):
    p = problems_of(load_lab, tmp_path / "nope.yaml")[0]
    assert p.source.endswith("nope.yaml") and "no such file" in p.message


def test_errors_in_workload_files_name_that_file(tmp_path):
    write(tmp_path, "w/echo.yaml", ECHO.replace("replicas: 2", "replicas: -2"))
    lab_file = write(tmp_path, "lab.yaml", lab_text("workloads: [w/echo.yaml]"))
    p = problem_at(problems_of(load_lab, lab_file), "spec.replicas")
    assert p.source == str(tmp_path / "w/echo.yaml")
    assert p.line == 5 and p.subject == 'Deployment "echo"'
    assert "-2 is out of range" in p.message and "0 or more" in p.message


def test_errors_in_inline_manifests_carry_the_path_inside_the_lab_file():
    text = lab_text("manifests:\n" + textwrap.indent(
        "- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec: {containers: [{name: c, "
        "ports: [{containerPort: 0}]}]}\n", "  "))
    p = problems_of(parse_lab, text, "lab.yaml")[0]
    assert p.path == "spec.manifests[0].spec.containers[0].ports[0].containerPort"
    assert p.line == 10


# --- errors across objects (second phase) -------------------------------------

def test_unknown_node_name(tmp_path):
    write(tmp_path, "w/p.yaml", """
        apiVersion: v1
        kind: Pod
        metadata: {name: p}
        spec:
          nodeName: node-z
          containers: [{name: c}]
        """)
    lab_file = write(tmp_path, "lab.yaml", lab_text("nodes: [node-a, node-b]\nworkloads: [w/p.yaml]"))
    p = problem_at(problems_of(load_lab, lab_file), "spec.nodeName")
    assert p.source == str(tmp_path / "w/p.yaml") and p.line == 5
    assert p.subject == 'Pod "p"'
    assert '"node-z" is not a node of this lab' in p.message and "node-a, node-b" in p.message


def test_unknown_node_name_in_a_deployment_is_reported_once():
    text = lab_text("manifests:\n" + textwrap.indent(
        ECHO.replace("containers:", "nodeName: nope\n      containers:").strip().replace("\n", "\n  ")
        .join(["- ", ""]), "  "))
    probs = problems_of(parse_lab, text, "lab.yaml")
    assert len(probs) == 1
    assert probs[0].path == "spec.manifests[0].spec.template.spec.nodeName"
    assert probs[0].subject == 'Deployment "echo"'


def test_missing_namespace_and_duplicates(tmp_path):
    write(tmp_path, "a.yaml", ECHO.replace("{name: echo}", "{name: echo, namespace: web}"))
    write(tmp_path, "b.yaml", ECHO)
    write(tmp_path, "c.yaml", ECHO)
    lab_file = write(tmp_path, "lab.yaml", lab_text("workloads: [a.yaml, b.yaml, c.yaml]"))
    probs = problems_of(load_lab, lab_file)
    ns = problem_at(probs, "metadata.namespace")
    assert ns.source.endswith("a.yaml") and 'namespace "web" does not exist' in ns.message and "kind: Namespace" in ns.message
    dup = problem_at(probs, "metadata.name")
    assert dup.source.endswith("c.yaml") and "already defined at" in dup.message and "b.yaml" in dup.message


def test_node_selector_with_no_matching_node():
    text = lab_text("nodes: [{name: a, labels: {zone: z1}}]\nmanifests:\n" + textwrap.indent(
        "- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n"
        "  spec: {nodeSelector: {zone: z2}, containers: [{name: c}]}\n", "  "))
    p = problem_at(problems_of(parse_lab, text, "lab.yaml"), "spec.manifests[0].spec.nodeSelector")
    assert "matches no node" in p.message and "spec.nodes[].labels" in p.message


def test_more_pods_than_a_node_subnet_holds():
    text = lab_text("podCIDR: 10.244.0.0/24\nsubnetLen: 30\nnodes: 1\nmanifests:\n" + textwrap.indent(
        ECHO.strip().replace("\n", "\n  ").join(["- ", ""]), "  "))
    p = problems_of(parse_lab, text, "lab.yaml")[0]
    assert "no room" in p.message and "1 pods" in p.message and "shorter subnetLen" in p.message


def test_generated_pod_name_clash():
    from netlab.model import Deployment, parse_manifests
    dep = parse_manifests(ECHO)[0]
    assert isinstance(dep, Deployment)
    clash = dep.pods()[0].name
    pod = f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {clash}}}\nspec: {{containers: [{{name: c}}]}}\n"
    lab = parse_lab(lab_text())
    probs = problems_of(lab.with_objects, [dep, *parse_manifests(pod, "pod.yaml")])
    assert any("also makes" in p.message for p in probs)


SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: %s}
spec:
  type: NodePort
  clusterIP: %s
  ports: [{port: 80, nodePort: %d}]
"""


def test_service_addresses_are_checked_against_the_lab():
    from netlab.model import parse_manifests
    lab = parse_lab(lab_text())
    def svc_problems(*svcs):
        return problems_of(lab.with_objects, [o for s in svcs for o in parse_manifests(SERVICE % s, "svc.yaml")])
    p = problem_at(svc_problems(("a", "10.0.0.1", 30001)), "spec.clusterIP")
    assert "not in serviceCIDR 10.96.0.0/12" in p.message
    assert "kubernetes" in problem_at(svc_problems(("a", "10.96.0.1", 30001)), "spec.clusterIP").message
    assert "cluster DNS" in problem_at(svc_problems(("a", "10.96.0.10", 30001)), "spec.clusterIP").message
    p = problem_at(svc_problems(("a", "10.96.5.5", 30001), ("b", "10.96.5.5", 30002)), "spec.clusterIP")
    assert 'already used by Service "a"' in p.message
    p = problem_at(svc_problems(("a", "10.96.5.5", 8080)), "spec.ports[0].nodePort")
    assert "outside the lab's nodePortRange 30000-32767" in p.message
    p = problem_at(svc_problems(("a", "10.96.5.5", 30001), ("b", "10.96.5.6", 30001)), "spec.ports[0].nodePort")
    assert "30001/TCP is already used" in p.message
    lab.with_objects(parse_manifests(SERVICE % ("a", "10.96.5.5", 30001), "svc.yaml"))
    # kube-dns is a system object now: redefining it is refused (tests/unit/test_model_system.py)
    dns = SERVICE.replace("{name: %s}", "{name: kube-dns, namespace: kube-system}").replace("type: NodePort", "")
    dns = dns.replace(", nodePort: %d", "")
    p = problem_at(problems_of(lab.with_objects, parse_manifests(dns % "10.96.0.10", "dns.yaml")), "metadata.name")
    assert "system objects" in p.message

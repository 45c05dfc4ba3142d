"""Pure helpers of the model: kernel object names, address arithmetic, pod
resolv.conf, and the scheduler. These pin names other layers rely on."""
from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network

import pytest

from netlab.model import (DNSConfig, ModelError, Node, addressing, names, node_labels, parse_lab,
                          parse_manifests, pod_resolv_conf, resolv_conf, schedule)

# --- names ----------------------------------------------------------------------


def test_namespace_names():
    assert names.node_netns("demo", "node-a") == "demo-node-a"
    assert names.underlay_netns("demo") == "demo-underlay"
    assert names.external_netns("demo") == "demo-external"
    assert names.pod_netns("demo", "default", "echo-abc") == "demo-default.echo-abc"
    assert names.cni_network("demo", "node-a") == "demo-node-a"


def test_interface_names():
    assert names.vxlan_device(1) == "flannel.1"
    assert len(names.vxlan_device(names.MAX_VNI)) == names.IFNAME_MAX
    assert len(names.vxlan_device(names.MAX_VNI + 1)) > names.IFNAME_MAX
    assert names.underlay_port("node-a") == "node-a"
    assert (names.NODE_BRIDGE, names.POD_IFNAME, names.NODE_UPLINK) == ("cni0", "eth0", "eth0")
    for fixed in (names.UNDERLAY_BRIDGE, names.EXTERNAL_PORT):
        assert len(fixed) <= names.IFNAME_MAX and fixed in names.RESERVED_NODE_NAMES


def test_shared_ifname_fits_and_carries_the_prefix():
    lab = "a" * names.MAX_LAB_NAME
    n = names.shared_ifname(lab, "node-a/eth0")
    assert len(n) == names.IFNAME_MAX and names.belongs_to(lab, n)
    assert n == names.shared_ifname(lab, "node-a/eth0") != names.shared_ifname(lab, "node-b/eth0")


def test_lab_prefix_is_exact():
    # lab names have no '-', so "a" never claims "ab"'s objects nor the reverse
    assert names.belongs_to("a", "a-node-1")
    assert not names.belongs_to("a", "ab-node-1")
    assert not names.belongs_to("ab", "a-b-node")
    assert names.lab_of("demo-default.echo") == "demo"
    assert names.lab_of("demo") is None and names.lab_of("demo-") is None


def test_node_and_pod_namespaces_never_collide():
    # node names are labels (no '.'), pod namespaces always contain one
    nodes = ["default", "default-web", "a", "a-b", "underlayx"]
    pods = [("default", "web"), ("a", "b"), ("a-b", "c"), ("a", "b-c")]
    node_ns = {names.node_netns("lab", n) for n in nodes}
    pod_ns = [names.pod_netns("lab", ns, p) for ns, p in pods]
    assert node_ns.isdisjoint(pod_ns)
    assert len(set(pod_ns)) == len(pod_ns)   # "a-b"/"c" and "a"/"b-c" differ


def test_limits_add_up():
    longest = names.pod_netns("a" * names.MAX_LAB_NAME, "n" * 63, "p" * (names.MAX_POD_KEY - 63))
    assert len(longest) == names.NETNS_NAME_MAX
    assert len(names.node_netns("a" * names.MAX_LAB_NAME, "n" * names.MAX_NODE_NAME)) <= names.NETNS_NAME_MAX


def test_pod_hostname_is_cut_like_the_kubelet():
    assert names.pod_hostname("web") == "web"
    assert names.pod_hostname("web", "www") == "www"
    long = "a" * 62 + "-bcd"
    assert names.pod_hostname(long) == "a" * 62   # cut to 63 ("...a-") then the trailing '-' dropped
    assert len(names.pod_hostname("x" * 100)) == 63


def test_pod_key():
    assert names.pod_key("default", "web") == "default/web"


# --- addressing -------------------------------------------------------------------

def test_node_subnets_follow_flannel():
    subnets = list(addressing.node_subnets("10.244.0.0/16", 24))
    assert subnets[0] == IPv4Network("10.244.1.0/24") and subnets[-1] == IPv4Network("10.244.255.0/24")
    assert len(subnets) == addressing.node_subnet_count("10.244.0.0/16", 24) == 255
    assert list(addressing.node_subnets("10.0.0.0/24", 26)) == [
        IPv4Network("10.0.0.64/26"), IPv4Network("10.0.0.128/26"), IPv4Network("10.0.0.192/26")]


def test_subnet_addresses():
    sn = IPv4Network("10.244.1.0/24")
    assert addressing.vtep_address(sn) == IPv4Address("10.244.1.0")
    assert addressing.gateway(sn) == IPv4Address("10.244.1.1")
    assert addressing.pod_range(sn) == (IPv4Address("10.244.1.2"), IPv4Address("10.244.1.254"))
    assert addressing.flannel_subnet(sn) == "10.244.1.1/24"
    assert addressing.subnet_key(sn) == "10.244.1.0-24"
    assert addressing.pods_per_node(24) == 253
    assert addressing.pods_per_node(30) == 1
    assert addressing.gateway("10.244.2.0/24") == IPv4Address("10.244.2.1")


def test_other_addresses():
    assert addressing.overlay_mtu(1500) == 1450
    assert addressing.default_subnet_len("10.244.0.0/16") == 24
    assert addressing.default_subnet_len("10.244.0.0/22") == 24
    assert addressing.default_subnet_len("10.244.0.0/23") == 25
    assert addressing.kubernetes_service_ip("10.96.0.0/12") == IPv4Address("10.96.0.1")
    assert addressing.default_dns_ip("10.96.0.0/12") == IPv4Address("10.96.0.10")
    assert addressing.nth_host("192.168.56.0/24", 11) == IPv4Address("192.168.56.11")
    assert addressing.is_host_address("192.168.56.0/24", "192.168.56.1")
    assert not addressing.is_host_address("192.168.56.0/24", "192.168.56.0")
    assert not addressing.is_host_address("192.168.56.0/24", "192.168.56.255")
    assert not addressing.is_host_address("192.168.56.0/24", "192.168.57.1")


# --- resolv.conf -----------------------------------------------------------------

def test_cluster_first_resolv_conf_is_the_kubelets():
    assert resolv_conf("default") == (
        "search default.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n")
    assert resolv_conf("web", dns_ip="10.100.0.10", cluster_domain="lab.example") == (
        "search web.svc.lab.example svc.lab.example lab.example\n"
        "nameserver 10.100.0.10\n"
        "options ndots:5\n")


def test_dns_config_is_merged():
    cfg = DNSConfig(nameservers=("1.1.1.1", "10.96.0.10"), searches=("corp.example", "svc.cluster.local"),
                    options=(("ndots", "2"), ("edns0", None)))
    assert resolv_conf("default", dns_config=cfg) == (
        "search default.svc.cluster.local svc.cluster.local cluster.local corp.example\n"
        "nameserver 10.96.0.10\nnameserver 1.1.1.1\n"
        "options ndots:2 edns0\n")


def test_dns_policies_none_and_default():
    cfg = DNSConfig(nameservers=("9.9.9.9",))
    assert resolv_conf("default", dns_policy="None", dns_config=cfg) == "nameserver 9.9.9.9\n"
    host = "# generated\nnameserver 192.168.56.1\nsearch example.org\noptions timeout:1\n"
    assert resolv_conf("default", dns_policy="Default", host_resolv_conf=host) == (
        "search example.org\nnameserver 192.168.56.1\noptions timeout:1\n")
    # ClusterFirst keeps the host's search list after the cluster's, as the kubelet does
    assert resolv_conf("default", host_resolv_conf=host).startswith(
        "search default.svc.cluster.local svc.cluster.local cluster.local example.org\n")
    with pytest.raises(ValueError):
        resolv_conf("default", dns_policy="Bogus")


def test_pod_resolv_conf_uses_the_lab():
    lab = parse_lab("apiVersion: netlab.dev/v1alpha1\nkind: Lab\nmetadata: {name: t}\n"
                    "spec: {serviceCIDR: 10.100.0.0/16, clusterDomain: k.test}\n")
    [pod] = parse_manifests("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: kube-system}\n"
                            "spec: {containers: [{name: c}]}\n")
    assert pod_resolv_conf(pod, lab) == (
        "search kube-system.svc.k.test svc.k.test k.test\nnameserver 10.100.0.10\noptions ndots:5\n")


# --- scheduling -------------------------------------------------------------------

NODES = [Node("a", IPv4Address("192.168.56.11"), {"zone": "z1"}),
         Node("b", IPv4Address("192.168.56.12"), {"zone": "z1"}),
         Node("c", IPv4Address("192.168.56.13"), {"zone": "z2"})]


def pods(n: int, extra: str = "", name: str = "p"):
    docs = [f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}{i}}}\nspec: {{{extra}containers: [{{name: c}}]}}\n"
            for i in range(n)]
    return parse_manifests("---\n".join(docs), "pods.yaml")


def test_least_loaded_with_ties_in_node_order():
    placed = schedule(pods(7), NODES)
    assert [p.node_name for p in placed] == ["a", "b", "c", "a", "b", "c", "a"]


def test_pinned_pods_count_towards_load():
    pinned = pods(2, "nodeName: a, ", name="pin")
    placed = schedule(pinned + pods(3), NODES)
    assert [p.node_name for p in placed] == ["a", "a", "b", "c", "b"]


def test_running_pods_stay_where_they_are():
    ps = pods(3)
    first = schedule(ps, NODES)
    current = {p.key: p.node_name for p in first}
    current[ps[0].key] = "c"
    again = schedule(ps + pods(1, name="new"), NODES, current=current)
    assert [p.node_name for p in again] == ["c", "b", "c", "a"]
    # a node that left: its pods are placed again
    again = schedule(ps, NODES[:2], current={ps[0].key: "c"})
    assert [p.node_name for p in again] == ["a", "b", "a"]


def test_node_selector():
    placed = schedule(pods(3, "nodeSelector: {zone: z1}, "), NODES)
    assert [p.node_name for p in placed] == ["a", "b", "a"]
    placed = schedule(pods(1, "nodeSelector: {kubernetes.io/hostname: c}, "), NODES)
    assert placed[0].node_name == "c"
    assert node_labels(NODES[0]) == {"kubernetes.io/hostname": "a", "kubernetes.io/os": "linux", "zone": "z1"}


def test_scheduling_errors_name_the_pod_and_field():
    with pytest.raises(ModelError) as ei:
        schedule(pods(1, "nodeName: zz, "), NODES)
    p = ei.value.problems[0]
    assert p.source == "pods.yaml" and p.path == "spec.nodeName" and p.subject == 'Pod "p0"'
    assert '"zz" is not a node of this lab' in p.message and "a, b, c" in p.message
    with pytest.raises(ModelError, match="matches no node"):
        schedule(pods(1, "nodeSelector: {zone: z9}, "), NODES)
    with pytest.raises(ModelError, match="no room"):
        schedule(pods(4), NODES[:1], max_pods_per_node=3)
    with pytest.raises(ModelError, match="is full"):
        schedule(pods(2, "nodeName: a, "), NODES, max_pods_per_node=1)


def test_schedule_is_deterministic():
    ps = pods(10) + pods(3, "nodeName: c, ", name="q")
    results = {tuple(p.node_name for p in schedule(ps, NODES)) for _ in range(5)}
    assert len(results) == 1


def test_capacity_is_used_fully():
    placed = schedule(pods(6), NODES, max_pods_per_node=2)
    counts = {n: sum(1 for p in placed if p.node_name == n) for n in "abc"}
    assert counts == {"a": 2, "b": 2, "c": 2}


def test_bind_does_not_change_the_original():
    [p] = pods(1)
    bound = p.bind("a")
    assert p.node_name is None and bound.node_name == "a" and bound.name == p.name


@pytest.mark.parametrize("lab_name", ["a", "demo", "nlt1234l0", "abcdefghij"])
def test_every_kernel_name_of_a_lab_fits(lab_name):
    lab = parse_lab(f"apiVersion: netlab.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {lab_name}}}\n"
                    "spec: {nodes: [{name: aaaaaaaaaaaaaaa}], vxlan: {vni: 9999999}}\n")
    for ns in lab.netns_names():
        assert names.belongs_to(lab.name, ns) and len(ns) <= names.NETNS_NAME_MAX
    assert len(lab.vxlan.device) <= names.IFNAME_MAX
    for n in lab.nodes:
        assert len(names.underlay_port(n.name)) <= names.IFNAME_MAX
    assert len(names.shared_ifname(lab.name, "x")) <= names.IFNAME_MAX


def test_names_unique_across_many_combinations():
    labs, nodes = ["a", "ab"], ["b", "b-c", "c"]
    seen = [names.node_netns(lab, node) for lab, node in itertools.product(labs, nodes)]
    assert len(seen) == len(set(seen))

"""The objects every lab has (kubernetes and kube-dns Services, coredns,
built-in Namespaces) and the lab file's spec.dns and spec.nftables."""
from __future__ import annotations

import json

import pytest
import yaml

from netlab.model import (NFTABLES_LAYOUTS, Deployment, Lab, ModelError, Namespace, Service, parse_lab,
                          parse_manifests, system_objects)


def lab_text(spec: str = "") -> str:
    return f"apiVersion: netlab.dev/v1alpha1\nkind: Lab\nmetadata: {{name: demo}}\nspec:\n  nodes: 2\n{spec}"


def lab_problem(spec: str, path: str):
    with pytest.raises(ModelError) as ei:
        parse_lab(lab_text(spec), "lab.yaml")
    found = [p for p in ei.value.problems if p.path == path]
    assert found, "\n".join(map(str, ei.value.problems))
    assert found[0].source == "lab.yaml" and found[0].line is not None
    return found[0]


def by_key(objects):
    return {(o.kind, o.namespace or "", o.name): o for o in objects}


# --- system objects -------------------------------------------------------------------

def test_every_lab_has_the_system_objects():
    lab = parse_lab(lab_text("  serviceCIDR: 10.100.0.0/16\n  dnsIP: 10.100.0.53\n  dns: {replicas: 2}\n"))
    objs = by_key(system_objects(lab))
    assert {name for kind, _, name in objs if kind == "Namespace"} == \
        {"default", "kube-system", "kube-public", "kube-node-lease"}
    k8s = objs[("Service", "default", "kubernetes")]
    assert k8s.cluster_ip == "10.100.0.1" and not k8s.selector
    assert [(p.name, p.port, p.target_port, p.protocol) for p in k8s.ports] == [("https", 443, 6443, "TCP")]
    dns = objs[("Service", "kube-system", "kube-dns")]
    assert dns.cluster_ip == "10.100.0.53" and dns.selector == {"k8s-app": "kube-dns"}
    assert dns.labels["k8s-app"] == "kube-dns" and dns.labels["kubernetes.io/name"] == "CoreDNS"
    assert [(p.name, p.port, p.target_port, p.protocol) for p in dns.ports] == \
        [("dns", 53, 53, "UDP"), ("dns-tcp", 53, 53, "TCP"), ("metrics", 9153, 9153, "TCP")]
    coredns = objs[("Deployment", "kube-system", "coredns")]
    assert coredns.replicas == 2 and coredns.labels == {"k8s-app": "kube-dns"}
    [c] = coredns.template.spec.containers
    assert c.name == "coredns" and c.command == ("netlab-dns", "serve", "--lab", "demo")
    assert [(p.name, p.container_port, p.protocol) for p in c.ports] == \
        [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")]
    assert coredns.template.spec.dns_policy == "Default"
    # the DNS pods select into kube-dns
    assert all(dns.selector.items() <= p.labels.items() for p in coredns.pods())


def test_system_objects_are_derived_not_stored():
    lab = parse_lab(lab_text())
    assert lab.objects == () and lab.to_dict()["spec"]["manifests"] == []
    assert [o.name for o in lab.all_objects if isinstance(o, Service)] == ["kubernetes", "kube-dns"]
    assert lab.pods() == [] and lab.services == [] and lab.deployments == []
    system_pods = lab.scheduled_pods(system=True)
    assert [p.name.startswith("coredns-") and p.namespace == "kube-system" for p in system_pods] == [True]


def test_system_pods_come_after_the_users_and_count_for_room():
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n"
    lab = parse_lab(lab_text() + "  manifests:\n  - " + json.dumps(yaml.safe_load(pod)) + "\n")
    assert [p.name for p in lab.scheduled_pods(system=True)][0] == "p"
    tiny = lab_text("  podCIDR: 10.244.0.0/16\n  subnetLen: 30\n").replace("nodes: 2", "nodes: 1")
    with pytest.raises(ModelError) as ei:
        parse_lab(tiny + "  manifests:\n  - " + json.dumps(yaml.safe_load(pod)) + "\n")
    assert any("no room" in p.message or "full" in p.message for p in ei.value.problems)
    # the DNS pod that does not fit points at the lab field that asks for it, not at "<unknown>"
    (dns,) = [p for p in ei.value.problems if "coredns" in str(p)]
    assert dns.path == "spec.dns.replicas" and dns.source == "<text>" and "no room" in dns.message


def test_system_objects_applied_unchanged_are_accepted_and_not_duplicated():
    lab = parse_lab(lab_text())
    again = [parse_manifests(json.dumps(o.to_dict()))[0] for o in system_objects(lab)]
    assert lab.with_objects(again).objects == ()
    # a kube-dns written without clusterIP is the same Service (the address is filled in)
    dns = by_key(system_objects(lab))[("Service", "kube-system", "kube-dns")].to_dict()
    del dns["spec"]["clusterIP"], dns["spec"]["clusterIPs"]
    assert lab.with_objects(parse_manifests(json.dumps(dns))).objects == ()


@pytest.mark.parametrize("manifest", [
    "apiVersion: v1\nkind: Service\nmetadata: {name: kubernetes}\nspec: {ports: [{port: 443}]}\n",
    "apiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\n"
    "spec: {selector: {app: mine}, ports: [{port: 53, protocol: UDP}]}\n",
    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: coredns, namespace: kube-system}\n"
    "spec: {replicas: 3, selector: {matchLabels: {k8s-app: kube-dns}}, template: {metadata: {labels: "
    "{k8s-app: kube-dns}}, spec: {containers: [{name: coredns}]}}}\n",
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system, labels: {team: me}}\n",
])
def test_system_objects_may_not_be_redefined(manifest):
    lab = parse_lab(lab_text())
    with pytest.raises(ModelError) as ei:
        lab.with_objects(parse_manifests(manifest, "mine.yaml"))
    [p] = ei.value.problems
    assert (p.source, p.line, p.path) == ("mine.yaml", 3, "metadata.name")
    assert "system objects" in p.message and "remove it" in p.message and "another name" in p.message


def test_user_services_cannot_take_system_addresses():
    lab = parse_lab(lab_text())
    svc = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 53}]}\n"
    with pytest.raises(ModelError) as ei:
        lab.with_objects(parse_manifests(svc, "x.yaml"))
    assert "cluster DNS address" in ei.value.problems[0].message


# --- spec.dns and spec.nftables ---------------------------------------------------------

def test_dns_and_nftables_defaults():
    lab = parse_lab(lab_text())
    assert (lab.dns.ttl, lab.dns.upstream, lab.dns.replicas) == (30, "192.168.56.254:53", 1)
    assert lab.dns.upstream_address == ("192.168.56.254", 53)
    assert lab.nftables_layout == "kube-proxy" and NFTABLES_LAYOUTS == ("kube-proxy", "maps")
    no_external = parse_lab(lab_text("  external: false\n"))
    assert no_external.dns.upstream is None and no_external.dns.upstream_address is None


def test_dns_and_nftables_settings_round_trip():
    lab = parse_lab(lab_text("  proxyMode: nftables\n  nftables: {layout: maps}\n"
                             "  dns: {ttl: 5, upstream: 192.168.56.200, replicas: 0}\n"))
    assert lab.nftables_layout == "maps" and lab.proxy_mode == "nftables"
    assert (lab.dns.ttl, lab.dns.upstream, lab.dns.replicas) == (5, "192.168.56.200:53", 0)
    assert Lab.from_dict(json.loads(json.dumps(lab.to_dict()))) == lab
    off = parse_lab(lab_text("  dns: {upstream: false}\n"))
    assert off.dns.upstream is None and Lab.from_dict(off.to_dict()) == off
    port = parse_lab(lab_text("  dns: {upstream: '10.1.2.3:5353'}\n"))
    assert port.dns.upstream_address == ("10.1.2.3", 5353)


def test_lab_documents_from_before_keep_loading():
    doc = parse_lab(lab_text()).to_dict()
    del doc["spec"]["dns"], doc["spec"]["nftables"]
    lab = Lab.from_dict(doc)
    assert lab.dns.replicas == 1 and lab.nftables_layout == "kube-proxy"


@pytest.mark.parametrize("spec, path, fragments", [
    ("  nftables: {layout: chains}\n", "spec.nftables.layout", ['"chains" is not an nftables layout',
                                                                 "kube-proxy or maps"]),
    ("  nftables: {mode: maps}\n", "spec.nftables.mode", ["unknown field"]),
    ("  dns: {ttl: 7200}\n", "spec.dns.ttl", ["out of range", "0 to 3600"]),
    ("  dns: {replicas: -1}\n", "spec.dns.replicas", ["0 or more"]),
    ("  dns: {upstream: dns.example}\n", "spec.dns.upstream", ["not an IPv4 address", "IP:PORT"]),
    ("  dns: {upstream: '1.1.1.1:99999'}\n", "spec.dns.upstream", ["no valid port", "1 to 65535"]),
    ("  dns: {upstream: 10.96.0.10}\n", "spec.dns.upstream", ["cluster DNS address itself"]),
    ("  dns: {upstream: 53}\n", "spec.dns.upstream", ["not a DNS server", "false for none"]),
    ("  dns: {tll: 5}\n", "spec.dns.tll", ["unknown field", "ttl"]),
])
def test_dns_and_nftables_errors(spec, path, fragments):
    p = lab_problem(spec, path)
    for f in fragments:
        assert f in p.message


def test_kinds_are_what_they_say():
    lab = parse_lab(lab_text())
    kinds = {type(o) for o in system_objects(lab)}
    assert kinds == {Namespace, Service, Deployment}

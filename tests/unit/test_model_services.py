"""Services: the kinds (ClusterIP, NodePort, headless, ExternalName), their
fields, warnings, and address allocation (ClusterIPs and NodePorts):
deterministic, stable across re-applies, requests honoured, every conflict an
error naming file, line, field and fix."""
from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from netlab.model import (ModelError, Service, allocate_services, manifest_warnings, parse_lab, parse_manifests)


def parse(text: str, source: str = "svc.yaml"):
    return parse_manifests(textwrap.dedent(text).lstrip("\n"), source)


def svc(name: str, spec: str, namespace: str = "default") -> str:
    return f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n" + \
        textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n"


def services(*docs: str, source: str = "svc.yaml") -> list[Service]:
    return parse_manifests("---\n".join(docs), source)


LAB = parse_lab("apiVersion: netlab.dev/v1alpha1\nkind: Lab\nmetadata: {name: t}\n"
                "spec: {nodePortRange: 30000-30004, serviceCIDR: 10.96.0.0/28}\n")


def allocate(*svcs: Service, existing=None, lab=LAB) -> dict[str, Service]:
    return {s.key: s for s in allocate_services(lab, svcs, existing or {})}


def problems(*svcs: Service, existing=None, lab=LAB):
    with pytest.raises(ModelError) as ei:
        allocate_services(lab, svcs, existing or {})
    return ei.value.problems


# --- parsing --------------------------------------------------------------------

def test_external_name_service():
    [s] = parse(svc("db", "type: ExternalName\nexternalName: db.example.org."))
    assert s.type == "ExternalName" and s.external_name == "db.example.org"
    assert s.ports == () and s.cluster_ip is None and not s.has_cluster_ip
    d = s.to_dict()["spec"]
    assert d["externalName"] == "db.example.org" and "clusterIP" not in d
    assert manifest_warnings([s]) == []


def test_selector_on_external_name_is_a_warning_not_an_error():
    [s] = parse(svc("db", "type: ExternalName\nexternalName: db.example.org\nselector: {app: db}"))
    [w] = manifest_warnings([s])
    assert (w.source, w.line, w.path) == ("svc.yaml", 7, "spec.selector")
    assert "ignored" in w.message and "CNAME to db.example.org" in w.message and "remove the selector" in w.message


def test_publish_not_ready_addresses_and_cluster_ips():
    [s] = parse(svc("web", "clusterIPs: [10.96.0.5]\npublishNotReadyAddresses: true\nports: [{port: 80}]"))
    assert s.publish_not_ready_addresses and s.cluster_ip == "10.96.0.5"
    spec = s.to_dict()["spec"]
    assert spec["publishNotReadyAddresses"] is True and spec["clusterIPs"] == ["10.96.0.5"]
    [plain] = parse(svc("web", "ports: [{port: 80}]"))
    assert not plain.publish_not_ready_addresses and "publishNotReadyAddresses" not in plain.to_dict()["spec"]


def test_every_service_field_round_trips():
    objs = parse(svc("db", "type: ExternalName\nexternalName: db.example.org\nports: [{port: 5432}]") + "---\n" +
                 svc("web", "clusterIP: None\npublishNotReadyAddresses: true\nselector: {app: web}") + "---\n" +
                 svc("np", "type: NodePort\nexternalTrafficPolicy: Local\ninternalTrafficPolicy: Local\n"
                           "externalIPs: [192.168.56.100]\nsessionAffinity: ClientIP\n"
                           "sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n"
                           "ports: [{name: a, port: 80, targetPort: http}, {name: b, port: 80, protocol: UDP}]"))
    for obj in [*objs, *allocate(*objs).values()]:
        [again] = parse_manifests(yaml.safe_dump(json.loads(json.dumps(obj.to_dict()))))
        assert again == obj


@pytest.mark.parametrize("spec, path, fragments", [
    ("type: ExternalName", "spec.externalName", ["missing", "externalName: db.example.com"]),
    ("type: ExternalName\nexternalName: Not_A_Name", "spec.externalName", ["not a valid name", "db.example.com"]),
    ("externalName: db.example.org\nports: [{port: 80}]", "spec.externalName",
     ["only ExternalName Services", "type: ExternalName"]),
    ("type: ExternalName\nexternalName: db.example.org\nclusterIP: None", "spec.clusterIP",
     ["no cluster IP", "remove clusterIP"]),
    ("type: ExternalName\nexternalName: db.example.org\nsessionAffinity: ClientIP", "spec.sessionAffinity",
     ["remove sessionAffinity"]),
    ("type: LoadBalancer\nports: [{port: 80}]", "spec.type", ["no cloud load balancer", "ExternalName"]),
    ("clusterIP: 10.96.0.5\nclusterIPs: [10.96.0.6]\nports: [{port: 80}]", "spec.clusterIPs",
     ["differs from clusterIP", "clusterIPs[0] must be clusterIP"]),
    ("clusterIPs: [10.96.0.5, 'fd00::5']\nports: [{port: 80}]", "spec.clusterIPs", ["single-stack"]),
    ("ports: [{port: 80, targetPort: '70000'}]", "spec.ports[0].targetPort", ["out of range", "1 to 65535"]),
    ("ports: [{port: 70000}]", "spec.ports[0].port", ["out of range"]),
    ("publishNotReadyAddresses: yes please\nports: [{port: 80}]", "spec.publishNotReadyAddresses",
     ["expected true or false"]),
])
def test_service_field_errors(spec, path, fragments):
    with pytest.raises(ModelError) as ei:
        parse(svc("s", spec))
    found = [p for p in ei.value.problems if p.path == path]
    assert found, "\n".join(map(str, ei.value.problems))
    assert found[0].source == "svc.yaml" and found[0].line is not None
    for f in fragments:
        assert f in found[0].message


# --- allocation -------------------------------------------------------------------

def test_cluster_ips_are_the_lowest_free_after_the_reserved_ones():
    a, b, h, e = services(svc("a", "ports: [{port: 80}]"), svc("b", "ports: [{port: 80}]"),
                          svc("h", "clusterIP: None"), svc("e", "type: ExternalName\nexternalName: x.example"))
    got = allocate(a, b, h, e)
    # 10.96.0.1 is the kubernetes Service's, 10.96.0.10 the DNS server's
    assert [got[k].cluster_ip for k in ("default/a", "default/b", "default/h", "default/e")] == \
        ["10.96.0.2", "10.96.0.3", "None", None]
    assert allocate(a, b, h, e) == got     # deterministic


def test_allocation_skips_requested_and_dns_addresses_and_fills_the_range():
    want = services(svc("w", "clusterIP: 10.96.0.2\nports: [{port: 80}]"))
    rest = services(*(svc(f"s{i}", "ports: [{port: 80}]") for i in range(11)))
    got = allocate(*rest, *want)
    ips = sorted(int(s.cluster_ip.split(".")[-1]) for s in got.values())
    assert ips == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14]   # a /28: .1 and .10 reserved, .15 broadcast
    [full] = problems(*rest, *want, *services(svc("one-more", "ports: [{port: 80}]")))
    assert "serviceCIDR 10.96.0.0/28 has no free address left" in full.message and "larger" in full.message


def test_addresses_are_stable_across_re_applies():
    a, b = services(svc("a", "type: NodePort\nports: [{port: 80}]"), svc("b", "type: NodePort\nports: [{port: 80}]"))
    first = allocate(a, b)
    assert (first["default/a"].cluster_ip, first["default/a"].ports[0].node_port) == ("10.96.0.2", 30000)
    # a is deleted and c added: b keeps its addresses, c takes the freed ones
    c = services(svc("c", "type: NodePort\nports: [{port: 80}]"))[0]
    second = allocate(c, b, existing=first)
    assert second["default/b"] == first["default/b"]
    assert (second["default/c"].cluster_ip, second["default/c"].ports[0].node_port) == ("10.96.0.2", 30000)
    # the same manifests again: nothing moves, even listed in another order
    assert allocate(b, c, existing=second) == second
    # a renamed port keeps its nodePort when its number and protocol stay
    renamed = services(svc("b", "type: NodePort\nports: [{name: web, port: 80}]"))[0]
    assert allocate(c, renamed, existing=second)["default/b"].ports[0].node_port == 30001


def test_requested_addresses_are_honoured_and_held_ones_are_not_taken():
    a = services(svc("a", "type: NodePort\nports: [{port: 80}]"))[0]
    first = allocate(a)
    thief = services(svc("b", "type: NodePort\nclusterIP: 10.96.0.2\nports: [{port: 80, nodePort: 30000}]"))[0]
    probs = problems(a, thief, existing=first)
    assert [p.path for p in probs] == ["spec.clusterIP", "spec.ports[0].nodePort"]
    assert all(p.source == "svc.yaml" and p.line and p.subject == 'Service "b"' for p in probs)
    assert '"10.96.0.2" is already used by Service "a"' in probs[0].message
    assert "30000/TCP is already used by Service \"a\"" in probs[1].message
    ok = services(svc("b", "type: NodePort\nclusterIP: 10.96.0.9\nports: [{port: 80, nodePort: 30004}]"))[0]
    got = allocate(a, ok, existing=first)
    assert got["default/b"].cluster_ip == "10.96.0.9" and got["default/b"].ports[0].node_port == 30004


def test_tcp_and_udp_of_one_port_share_a_node_port_and_services_do_not():
    [dns] = services(svc("dns", "type: NodePort\nports: [{name: u, port: 53, protocol: UDP}, "
                                "{name: t, port: 53, protocol: TCP}, {name: m, port: 9153}]"))
    got = allocate(dns)["default/dns"]
    assert [p.node_port for p in got.ports] == [30000, 30000, 30001]
    other = services(svc("x", "type: NodePort\nports: [{port: 53, protocol: UDP, nodePort: 30001}]"))[0]
    [p] = problems(dns, other, existing={"default/dns": got})
    assert p.path == "spec.ports[0].nodePort" and 'already used by Service "dns"' in p.message
    same = services(svc("y", "type: NodePort\nports: [{name: a, port: 80, nodePort: 30002}, "
                              "{name: b, port: 81, nodePort: 30002}]"))[0]
    [p] = problems(same)
    assert p.path == "spec.ports[1].nodePort" and "spec.ports[0] of this Service" in p.message


@pytest.mark.parametrize("spec, path, fragments", [
    ("type: NodePort\nports: [{port: 80, nodePort: 8080}]", "spec.ports[0].nodePort",
     ["outside the lab's nodePortRange 30000-30004", "remove nodePort"]),
    ("clusterIP: 10.0.0.1\nports: [{port: 80}]", "spec.clusterIP", ["not in serviceCIDR 10.96.0.0/28"]),
    ("clusterIP: 10.96.0.15\nports: [{port: 80}]", "spec.clusterIP", ["not in serviceCIDR"]),
    ("clusterIP: 10.96.0.1\nports: [{port: 80}]", "spec.clusterIP", ["belongs to the kubernetes Service"]),
    ("clusterIP: 10.96.0.10\nports: [{port: 80}]", "spec.clusterIP", ["cluster DNS address (spec.dnsIP)"]),
])
def test_allocation_errors_name_file_line_field_and_fix(spec, path, fragments):
    [p] = problems(*services(svc("s", spec)))
    assert (p.source, p.path, p.subject) == ("svc.yaml", path, 'Service "s"') and p.line is not None
    for f in fragments:
        assert f in p.message


def test_node_port_range_exhaustion():
    many = services(*(svc(f"s{i}", "type: NodePort\nports: [{port: 80}]") for i in range(6)))
    [p] = problems(*many)
    assert p.subject == 'Service "s5"' and "nodePortRange 30000-30004 has no free port left" in p.message


def test_nothing_is_returned_when_anything_fails():
    good = services(svc("good", "ports: [{port: 80}]"))[0]
    bad = services(svc("bad", "clusterIP: 10.0.0.1\nports: [{port: 80}]"))[0]
    with pytest.raises(ModelError):
        allocate_services(LAB, [good, bad], {})


def test_lab_allocates_its_system_services_too():
    got = {s.key: s for s in LAB.allocated_services()}
    assert got["default/kubernetes"].cluster_ip == "10.96.0.1"
    assert got["kube-system/kube-dns"].cluster_ip == "10.96.0.10"
    lab = LAB.with_objects(services(svc("web", "ports: [{port: 80}]")))
    assert {s.key: s.cluster_ip for s in lab.allocated_services()}["default/web"] == "10.96.0.2"


def test_example_manifests_apply_to_the_two_node_lab():
    from pathlib import Path
    from netlab.model import load_lab, load_manifests, merge_objects
    top = Path(__file__).resolve().parents[2] / "topologies"
    lab = load_lab(top / "two-node.yaml")
    objects = load_manifests(top / "workloads")
    assert manifest_warnings(objects) == []
    lab = lab.with_objects(merge_objects(lab.objects, objects))
    got = {s.key: s for s in lab.allocated_services()}
    assert got["default/echo-nodeport"].ports[0].node_port == 30080
    assert got["default/web"].headless and got["default/example"].external_name == "www.example.org"
    pods = {p.name: p for p in lab.scheduled_pods(system=True)}
    assert {"web-0", "web-1", "web-2"} <= set(pods) and pods["web-0"].spec.subdomain == "web"
    assert sorted(p.node_name for p in pods.values() if p.owner and p.owner.kind == "DaemonSet") == \
        ["node-a", "node-b"]

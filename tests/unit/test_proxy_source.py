"""From Services and EndpointSlices to the proxy's records, and the endpoint
choice every backend shares (kube-proxy's CategorizeEndpoints)."""
from __future__ import annotations

from netlab.model.endpoints import EndpointPort, EndpointSlice, SliceEndpoint
from netlab.model.workloads import Service, ServicePort as ModelPort
from proxy.source import build_state, service_ports
from proxy.types import (Endpoint, ProxyState, ServicePort, ServicePortName, categorize, changed_services,
                         stale_udp_endpoints, udp_services_gaining_endpoints)


def _svc(**kw) -> Service:
    base = dict(name="web", ports=(ModelPort(80, "http", "TCP", "http"), ModelPort(53, 53, "UDP", "dns")),
                namespace="default", type="ClusterIP", selector={"app": "web"}, cluster_ip="10.96.0.20")
    base.update(kw)
    return Service(**base)


def _slice(node: str, *eps: tuple[str, bool]) -> EndpointSlice:
    return EndpointSlice(f"web-{node}", "default", "web", node,
                         (EndpointPort("http", 8080, "TCP"), EndpointPort("dns", 5353, "UDP")),
                         tuple(SliceEndpoint(ip, node, f"p-{ip}", ready=r, serving=r) for ip, r in eps))


def test_service_ports_one_per_port_named_like_kube_proxy():
    ports = service_ports(_svc(type="NodePort", ports=(ModelPort(80, 8080, "TCP", None, 30080),)))
    assert [str(p.name) for p in ports] == ["default/web"]
    assert ports[0].node_port == 30080 and ports[0].cluster_ip == "10.96.0.20"
    named = service_ports(_svc())
    assert [str(p.name) for p in named] == ["default/web:http", "default/web:dns"]
    assert [p.proto for p in named] == ["tcp", "udp"]


def test_headless_and_external_name_are_not_proxied():
    assert service_ports(_svc(cluster_ip="None")) == []
    assert service_ports(_svc(type="ExternalName", cluster_ip=None)) == []


def test_affinity_and_policies_carried():
    p = service_ports(_svc(session_affinity="ClientIP", session_affinity_timeout=60, type="NodePort",
                           external_traffic_policy="Local", internal_traffic_policy="Local"))[0]
    assert (p.affinity_timeout, p.external_policy_local, p.internal_policy_local) == (60, True, True)
    assert service_ports(_svc())[0].affinity_timeout == 0


def test_endpoints_take_the_slice_port_of_the_same_name_and_protocol():
    state = build_state([_svc()], [_slice("node-a", ("10.244.1.5", True)), _slice("node-b", ("10.244.2.7", False))])
    http = state.endpoints_of(ServicePortName("default", "web", "http"))
    dns = state.endpoints_of(ServicePortName("default", "web", "dns"))
    assert [(str(e), e.node, e.ready) for e in http] == [("10.244.1.5:8080", "node-a", True),
                                                         ("10.244.2.7:8080", "node-b", False)]
    assert [str(e) for e in dns] == ["10.244.1.5:5353", "10.244.2.7:5353"]


def _port(**kw) -> ServicePort:
    return ServicePort(ServicePortName("ns", "s"), "TCP", "10.96.0.9", 80, **kw)


A = Endpoint("10.244.1.2", 80, "a")
B = Endpoint("10.244.2.2", 80, "b")
B_NOT_READY = Endpoint("10.244.2.3", 80, "b", ready=False, serving=False)
B_TERMINATING = Endpoint("10.244.2.4", 80, "b", ready=False, serving=True, terminating=True)


def test_cluster_policy_uses_every_ready_endpoint():
    c = categorize(_port(), (B, A, B_NOT_READY), "a")
    assert c.cluster == (A, B) and c.local == () and c.all_reachable == (A, B) and c.has_any


def test_terminating_serving_endpoints_only_when_none_ready():
    assert categorize(_port(), (B_TERMINATING,), "a").cluster == (B_TERMINATING,)
    assert categorize(_port(), (A, B_TERMINATING), "a").cluster == (A,)


def test_external_local_policy_adds_local_endpoints_and_keeps_cluster_ones():
    c = categorize(_port(node_port=30000, external_policy_local=True), (A, B), "b")
    assert c.cluster == (A, B) and c.local == (B,)
    c = categorize(_port(node_port=30000, external_policy_local=True), (A,), "b")
    assert c.local == () and c.has_any  # this node has none: external traffic is dropped here


def test_internal_local_policy_uses_only_local_endpoints():
    c = categorize(_port(internal_policy_local=True), (A, B), "a")
    assert c.cluster == () and c.local == (A,) and c.all_reachable == (A,)


def test_no_endpoints():
    assert not categorize(_port(), (B_NOT_READY,), "a").has_any


def test_changes_and_stale_udp_endpoints():
    udp = ServicePort(ServicePortName("ns", "dns"), "UDP", "10.96.0.10", 53)
    old = ProxyState({udp.name: udp}, {udp.name: (A, B)})
    new = ProxyState({udp.name: udp}, {udp.name: (A,)})
    assert changed_services(old, new) == {udp.name}
    assert changed_services(old, old) == frozenset()
    assert stale_udp_endpoints(old, new) == [(udp, B)]
    assert stale_udp_endpoints(old, ProxyState()) == [(udp, A), (udp, B)]
    empty = ProxyState({udp.name: udp}, {})
    assert udp_services_gaining_endpoints(empty, new) == [udp]
    assert udp_services_gaining_endpoints(new, new) == []

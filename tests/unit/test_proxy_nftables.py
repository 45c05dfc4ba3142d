"""The nftables proxy's pure parts: kube-proxy's chain names, the rendering
of a small state in both layouts, and partial syncs that write only what changed."""
from __future__ import annotations

import re

import pytest

from proxy.nftables import (LAYOUTS, NftablesProxier, Written, cluster_chain, endpoint_chain, full_sync,
                            render_full, render_pieces)
from proxy.nftables.names import service_port_chain_base
from proxy.types import Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName

NODE = ProxyNode("node-a", ("192.168.56.11",), "10.244.0.0/16")
WEB = ServicePortName("default", "web", "http")
DB = ServicePortName("default", "db", "")
STICKY = ServicePortName("default", "sticky", "")


def state(web_eps=2, db_eps=2) -> ProxyState:
    services = {
        WEB: ServicePort(WEB, "TCP", "10.96.0.10", 80, node_port=30080),
        DB: ServicePort(DB, "TCP", "10.96.0.20", 5432),
        STICKY: ServicePort(STICKY, "UDP", "10.96.0.30", 53, affinity_timeout=60),
    }
    endpoints = {
        WEB: tuple(Endpoint(f"10.244.1.{i + 2}", 8080, "node-a") for i in range(web_eps)),
        DB: tuple(Endpoint(f"10.244.2.{i + 2}", 5432, "node-b") for i in range(db_eps)),
        STICKY: (Endpoint("10.244.1.9", 53, "node-a"),),
    }
    return ProxyState(services, endpoints)


def recorded(written: Written) -> tuple:
    """What a Written remembers, comparable."""
    endpoints = {n: tuple(written.endpoints.get(n, ())) for n in written.services}
    return (written.services, endpoints, written.owners, +written.shared, written.chains(), written.sets())


def test_chain_names_are_kube_proxys():
    # kube-proxy's own examples (pkg/proxy/nftables/proxier.go)
    assert service_port_chain_base(ServicePortName("ns1", "svc1", "p80"), "tcp") == "ULMVA6XW-ns1/svc1/tcp/p80"
    svc = ServicePort(ServicePortName("ns1", "svc1", "p80"), "TCP", "172.30.0.41", 80)
    assert cluster_chain(svc) == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert endpoint_chain(svc, Endpoint("10.180.0.1", 80)) == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


def test_kube_proxy_layout_has_a_chain_per_service_and_endpoint():
    text = render_full(NODE, state(), "kube-proxy")
    assert text.startswith("add table ip kube-proxy\ndelete table ip kube-proxy\n")
    web = cluster_chain(state().services[WEB])
    assert f"\tchain {web} {{" in text
    assert re.search(rf"numgen random mod 2 vmap {{ 0 : goto endpoint-\S+__10.244.1.2/8080, "
                     rf"1 : goto endpoint-\S+__10.244.1.3/8080 }}", text)
    assert "10.96.0.10 . tcp . 80 : goto " + web in text
    assert "tcp . 30080 : goto external-" in text
    assert "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade" in text
    assert "ip saddr 10.244.1.2 jump mark-for-masquerade" in text          # hairpin
    assert "masquerade fully-random" in text and "mark set mark or 0x4000" in text
    assert "flags dynamic,timeout; timeout 60s;" in text                   # affinity set
    assert "update @affinity-" in text


def test_maps_layout_has_no_chain_per_service_except_affinity():
    text = render_full(NODE, state(), "maps")
    own = [c for c in re.findall(r"\tchain (\S+) \{", text) if "/" in c]
    assert own and all("sticky" in c for c in own)        # ClientIP affinity keeps its chains
    assert "10.96.0.10 . tcp . 80 : goto lb-2" in text
    assert "10.96.0.10 . tcp . 80 . 1 : 10.244.1.3 . 8080" in text
    assert "tcp . 30080 : goto nodeport-lb-2" in text
    assert "numgen random mod 2 map @service-endpoints-tcp" in text
    assert "10.244.1.2 . 10.244.1.2" in text                # hairpin pair


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_endpoints_is_rejected(layout):
    text = render_full(NODE, state(db_eps=0), layout)
    assert '10.96.0.20 . tcp . 5432 comment "default/db" : goto reject-chain' in text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_partial_sync_touches_only_the_changed_service(layout):
    before, after = state(), state(web_eps=3)
    written = full_sync(NODE, before, layout)[0]
    text, size = written.partial_text(render_pieces(NODE, after, layout, only=[WEB]))
    assert size and "10.244.1.4" in text
    for other in ("10.96.0.20", "10.244.2.", "db", "sticky", "10.96.0.30"):
        assert other not in text
    assert "delete table" not in text and "flush table" not in text
    if layout == "maps":
        assert all(line.split()[1] in ("element", "chain", "rule") for line in text.splitlines())
        assert "add chain ip kube-proxy lb-3" in text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_partial_sync_then_full_render_agree(layout):
    """Applying a partial change leaves the memory equal to a fresh render."""
    written = full_sync(NODE, state(), layout)[0]
    changed = state(web_eps=1)
    updates = render_pieces(NODE, changed, layout, only=[WEB, DB])
    written.apply(updates)
    fresh = full_sync(NODE, changed, layout)[0]
    assert recorded(written) == recorded(fresh)


def test_shared_cluster_ip_element_stays_while_one_port_remains():
    a, b = ServicePortName("ns", "two", "a"), ServicePortName("ns", "two", "b")
    st = ProxyState({a: ServicePort(a, "TCP", "10.96.5.5", 80), b: ServicePort(b, "TCP", "10.96.5.5", 81)},
                    {a: (Endpoint("10.244.1.2", 80),), b: (Endpoint("10.244.1.2", 81),)})
    written = full_sync(NODE, st, "maps")[0]
    text, _ = written.partial_text({a: None})
    assert "cluster-ips" not in text                    # b still wants 10.96.5.5
    assert "delete element ip kube-proxy service-ips { 10.96.5.5 . tcp . 80 }" in text


def test_unknown_layout_names_the_field():
    with pytest.raises(ValueError, match=r"spec\.nftables\.layout.*kube-proxy, maps"):
        NftablesProxier(NODE, layout="fast")


def varied_state() -> ProxyState:
    """Every branch of the maps layout's full render: the common case (ClusterIP,
    NodePort, UDP, unsorted endpoints), and what goes through render_piece:
    affinity, both Local policies, external IPs, a not-ready endpoint, no
    endpoints; plus elements two service ports want (a ClusterIP with two ports,
    a pod behind two Services, two Services claiming one VIP)."""
    def sp(name, port=""):
        return ServicePortName("ns", name, port)
    a, b, c = (Endpoint(f"10.244.1.{i}", 8080, "node-a") for i in (2, 3, 4))
    remote = Endpoint("10.244.2.9", 8080, "node-b")
    services = [
        (ServicePort(sp("plain"), "TCP", "10.96.0.1", 80), (b, a)),
        (ServicePort(sp("np"), "TCP", "10.96.0.2", 80, node_port=30002), (a, c)),
        (ServicePort(sp("dns", "udp"), "UDP", "10.96.0.3", 53), (c,)),
        (ServicePort(sp("two", "a"), "TCP", "10.96.0.4", 80), (a, b)),
        (ServicePort(sp("two", "b"), "TCP", "10.96.0.4", 81), (a, b)),
        (ServicePort(sp("clash-1"), "TCP", "10.96.0.5", 80), (a,)),
        (ServicePort(sp("clash-2"), "TCP", "10.96.0.5", 80), (b,)),
        (ServicePort(sp("sticky"), "TCP", "10.96.0.6", 80, affinity_timeout=30), (a, b)),
        (ServicePort(sp("extlocal"), "TCP", "10.96.0.7", 80, node_port=30007, external_policy_local=True),
         (a, remote)),
        (ServicePort(sp("intlocal"), "TCP", "10.96.0.8", 80, internal_policy_local=True), (a, remote)),
        (ServicePort(sp("extip"), "TCP", "10.96.0.9", 80, external_ips=("192.168.56.200",)), (b,)),
        (ServicePort(sp("draining"), "TCP", "10.96.0.10", 80), (a, Endpoint("10.244.1.5", 8080, ready=False))),
        (ServicePort(sp("empty"), "TCP", "10.96.0.11", 80, node_port=30011), ()),
        (ServicePort(sp("local-no-external"), "TCP", "10.96.0.12", 80, external_policy_local=True), (remote, c)),
    ]
    return ProxyState({s.name: s for s, _ in services}, {s.name: eps for s, eps in services})


def element_items(text: str) -> set[tuple[str, str]]:
    found = re.findall(r"^add element ip kube-proxy (\S+) \{ (.*) \}$", text, re.M)
    return {(container, item) for container, items in found for item in items.split(", ")}


def without_clash(st: ProxyState) -> ProxyState:
    return ProxyState({n: s for n, s in st.services.items() if n.name != "clash-2"}, st.endpoints)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("clash", [True, False], ids=["a-vip-claimed-twice", "no-vip-claimed-twice"])
def test_full_render_equals_the_pieces_it_stands_for(layout, clash):
    """The one-pass full render writes and records exactly what adding every
    piece one by one (the partial-sync path) writes and records; with a
    ClusterIP:port claimed twice it takes its careful path."""
    st = varied_state() if clash else without_clash(varied_state())
    fast, text, _ = full_sync(NODE, st, layout)
    one_by_one = Written(NODE, layout)
    pieces = render_pieces(NODE, st, layout)
    added, _ = one_by_one.partial_text(pieces)
    one_by_one.apply(pieces)
    assert recorded(fast) == recorded(one_by_one)
    nodeport_ips = {("nodeport-ips", ip) for ip in NODE.node_ips}
    assert element_items(text) == element_items(added) | nodeport_ips
    if layout == "maps":
        assert "10.96.0.1 . tcp . 80 . 0 : 10.244.1.2 . 8080" in text          # sorted slots
        assert "10.96.0.5 . tcp . 80 . 0 : 10.244.1.2 . 8080" in text          # clash: the first name's
        assert "10.96.0.5 . tcp . 80 . 0 : 10.244.1.3 . 8080" not in text
        assert text.count("10.244.1.2 . 10.244.1.2") == 1                       # a pod behind many Services


@pytest.mark.parametrize("layout", LAYOUTS)
def test_removing_a_co_owner_keeps_or_hands_over_the_element(layout):
    st = varied_state()
    written = full_sync(NODE, st, layout)[0]
    gone = ServicePortName("ns", "clash-1")
    text, _ = written.partial_text({gone: None})
    # clash-2 now owns the VIP: its endpoint replaces clash-1's
    if layout == "maps":
        assert "delete element ip kube-proxy service-endpoints-tcp { 10.96.0.5 . tcp . 80 . 0 }" in text
        assert "add element ip kube-proxy service-endpoints-tcp { 10.96.0.5 . tcp . 80 . 0 : 10.244.1.3 . 8080 }" \
            in text
    assert "cluster-ips" not in text             # clash-2 still wants 10.96.0.5
    written.apply({gone: None})
    rest = ProxyState({n: s for n, s in st.services.items() if n != gone}, st.endpoints)
    assert recorded(written) == recorded(full_sync(NODE, rest, layout)[0])


def test_partial_sync_renders_only_the_changed_and_their_co_owners(monkeypatch):
    """No work per existing service port: only the changed one's old piece and
    those of service ports sharing an element with it are rendered again."""
    import proxy.nftables.table as table
    st = varied_state()
    written = full_sync(NODE, st, "maps")[0]
    name = ServicePortName("ns", "plain")
    bigger = ProxyState(st.services, {**st.endpoints, name: st.endpoints[name] + (Endpoint("10.244.1.9", 8080),)})
    updates = render_pieces(NODE, bigger, "maps", only=[name])
    rendered = []
    real = table.render_piece
    monkeypatch.setattr(table, "render_piece", lambda node, svc, *a: rendered.append(svc.name) or real(node, svc, *a))
    text, _ = written.partial_text(updates)
    assert "10.96.0.1 . tcp . 80 . 2 : 10.244.1.9 . 8080" in text
    # plain's hairpin pairs are shared with np, two, clash-1 ...: their owner stays, nothing to render
    assert rendered == [name]          # plain's old piece
    written.apply(updates)
    assert recorded(written) == recorded(full_sync(NODE, bigger, "maps")[0])

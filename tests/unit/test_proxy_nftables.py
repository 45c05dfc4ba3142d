"""The nftables proxy's pure parts: kube-proxy's chain names, the rendering
of a small state in both layouts, and partial syncs that write only what changed."""
from __future__ import annotations

import re

import pytest

from proxy.nftables import (LAYOUTS, NftablesProxier, Written, cluster_chain, endpoint_chain, render_full,
                            render_pieces)
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
    written = Written(NODE, layout, render_pieces(NODE, before, layout))
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
    written = Written(NODE, layout, render_pieces(NODE, state(), layout))
    changed = state(web_eps=1)
    updates = render_pieces(NODE, changed, layout, only=[WEB, DB])
    written.apply(updates)
    fresh = Written(NODE, layout, render_pieces(NODE, changed, layout))
    assert written.full_text(None) == fresh.full_text(None)


def test_shared_cluster_ip_element_stays_while_one_port_remains():
    a, b = ServicePortName("ns", "two", "a"), ServicePortName("ns", "two", "b")
    st = ProxyState({a: ServicePort(a, "TCP", "10.96.5.5", 80), b: ServicePort(b, "TCP", "10.96.5.5", 81)},
                    {a: (Endpoint("10.244.1.2", 80),), b: (Endpoint("10.244.1.2", 81),)})
    written = Written(NODE, "maps", render_pieces(NODE, st, "maps"))
    text, _ = written.partial_text({a: None})
    assert "cluster-ips" not in text                    # b still wants 10.96.5.5
    assert "delete element ip kube-proxy service-ips { 10.96.5.5 . tcp . 80 }" in text


def test_unknown_layout_names_the_field():
    with pytest.raises(ValueError, match=r"spec\.nftables\.layout.*kube-proxy, maps"):
        NftablesProxier(NODE, layout="fast")

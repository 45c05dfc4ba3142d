"""The pure parts of capture and trace: decoding frames to one line, pcapng
blocks, NAT attribution from counter diffs and nft listings, path assembly
(probe and reply told apart, NAT located, hops ordered), the JSON shape."""
from __future__ import annotations

import struct
from types import SimpleNamespace

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from netlab.debug import nat, pcapng, trace
from netlab.debug.decode import decode, tcp_flags
from netlab.debug.path import LabPlaces, _ip_port, split_pod_ref
from netlab.debug.sniff import Frame

POD_MAC, GW_MAC = "d2:95:9a:ab:14:b4", "06:7a:b3:7a:bd:91"


def syn(src="10.244.1.2", dst="10.244.2.3", sport=41000, dport=8080, ip_id=4242, flags="S") -> bytes:
    return bytes(Ether(src=POD_MAC, dst=GW_MAC) / IP(src=src, dst=dst, id=ip_id, flags="DF")
                 / TCP(sport=sport, dport=dport, flags=flags))


def vxlan(inner: bytes, port=8472) -> bytes:
    return bytes(Ether(src="26:ca:b8:2b:6f:b1", dst="e2:18:a0:7b:ea:67")
                 / IP(src="192.168.56.11", dst="192.168.56.12") / UDP(sport=40000, dport=port)
                 / VXLAN(vni=1, flags=0x08) / Ether(inner))


# --- decoding -----------------------------------------------------------------------------------

def test_vxlan_frame_decodes_to_the_issue_line_with_outer_headers_kept():
    d = decode(vxlan(syn()))
    assert d.line().startswith("VXLAN vni 1 192.168.56.11 > 192.168.56.12 | 10.244.1.2 > 10.244.2.3 TCP 8080 [S]")
    assert (d.encap.vni, d.encap.outer_src, d.encap.outer_dst, d.encap.port) == (1, "192.168.56.11", "192.168.56.12", 8472)
    assert (d.src_mac, d.dst_mac, d.ip_id, d.df) == (POD_MAC, GW_MAC, 4242, True)
    assert d.endpoint("src") == "10.244.1.2:41000" and d.endpoint("dst") == "10.244.2.3:8080"


def test_vxlan_on_another_port_is_decoded_only_when_that_is_the_labs_port():
    frame = vxlan(syn(), port=4790)
    assert decode(frame, vxlan_port=4790).encap.port == 4790
    assert decode(frame, vxlan_port=8472).encap is None


def test_icmp_frag_needed_quotes_the_probe():
    quoted = IP(src="10.244.1.2", dst="10.244.2.3", id=777, flags="DF") / TCP(sport=5, dport=8080)
    frame = bytes(Ether() / IP(src="10.244.1.1", dst="10.244.1.2") / ICMP(type=3, code=4, nexthopmtu=1000)
                  / bytes(quoted)[:28])
    d = decode(frame)
    assert d.is_icmp_error and d.quoted.ip_id == 777 and d.quoted.dport == 8080 and d.next_hop_mtu == 1000
    assert "dest-unreach frag-needed mtu 1000 for 10.244.1.2 > 10.244.2.3 TCP 8080" in d.line()


def test_arp_and_tcp_flags_read_like_tcpdump():
    assert decode(bytes(Ether() / ARP(op=1, psrc="10.244.1.2", pdst="10.244.1.1"))).line() == \
        "ARP who-has 10.244.1.1 tell 10.244.1.2"
    assert [tcp_flags(v) for v in (0x02, 0x12, 0x14, 0x18)] == ["S", "S.", "R.", "P."]


# --- pcapng -------------------------------------------------------------------------------------

def _blocks(data: bytes):
    at = 0
    while at < len(data):
        kind, length = struct.unpack_from("<II", data, at)
        yield kind, data[at + 8: at + length - 4]
        at += length


def test_pcapng_names_each_hop_and_orders_by_time(tmp_path):
    frames = [Frame("lab-node-a", "flannel.1", "out", 2.0, syn()), Frame("lab-x.pod", "eth0", "out", 1.0, syn())]
    path = tmp_path / "t.pcapng"
    assert pcapng.write_frames(str(path), frames, lambda f: (f"{f.netns}:{f.interface}", f.direction)) == 2
    blocks = list(_blocks(path.read_bytes()))
    assert [k for k, _ in blocks] == [0x0A0D0D0A, 1, 6, 1, 6]      # SHB, then an IDB before its first packet
    assert b"lab-x.pod:eth0" in blocks[1][1] and b"lab-node-a:flannel.1" in blocks[3][1]
    iface, high, low, caplen, origlen = struct.unpack_from("<IIIII", blocks[2][1])
    assert (iface, (high << 32 | low), caplen) == (0, 1_000_000_000, len(syn()))
    assert b"out" in blocks[2][1][20 + caplen:]                     # the comment after the padded frame


# --- NAT attribution ----------------------------------------------------------------------------

SAVED = """*nat
:PREROUTING ACCEPT [0:0]
[{pre}:60] -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[{out}:60] -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[{pre}:60] -A KUBE-SERVICES -d 10.96.0.2/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-ZJMBFACUQCTMIK2C
[{pre}:60] -A KUBE-SVC-ZJMBFACUQCTMIK2C -m statistic --mode random --probability 0.5 -j KUBE-SEP-33VB4D3K2YEWWHIZ
[0:0] -A KUBE-SVC-ZJMBFACUQCTMIK2C -j KUBE-SEP-DXNB5PCBZSNK34QM
[{pre}:60] -A KUBE-SEP-33VB4D3K2YEWWHIZ -p tcp -m tcp -j DNAT --to-destination 10.244.2.2:8080
[0:0] -A KUBE-SEP-DXNB5PCBZSNK34QM -p tcp -m tcp -j DNAT --to-destination 10.244.2.3:8080
[{pre}:60] -A KUBE-POSTROUTING -j MASQUERADE --random-fully
COMMIT
*filter
[{rej}:60] -A KUBE-SERVICES -d 10.96.0.1/32 -m comment --comment "default/kubernetes:https has no endpoints" -j REJECT
COMMIT
"""


def counted(pre=1, out=0, rej=0):
    return nat.counter_diff(nat.parse_counters(SAVED.format(pre=0, out=0, rej=0)),
                            nat.parse_counters(SAVED.format(pre=pre, out=out, rej=rej)))


def test_counter_diff_attributes_the_dnat_to_the_kube_sep_that_counted_it():
    found = nat.dnat_rule(counted(), "10.244.2.2:8080", "PREROUTING")
    assert found["chain"] == "KUBE-SEP-33VB4D3K2YEWWHIZ" and "--to-destination 10.244.2.2:8080" in found["rule"]
    assert found["chains"] == ["PREROUTING", "KUBE-SERVICES", "KUBE-SVC-ZJMBFACUQCTMIK2C", "KUBE-SEP-33VB4D3K2YEWWHIZ"]
    assert nat.dnat_rule(counted(), "10.244.2.3:8080") is None          # the other endpoint counted nothing
    assert nat.snat_rule(counted())["rule"].endswith("-j MASQUERADE --random-fully")


def test_two_hooks_into_kube_services_are_told_apart_by_the_probes_entry():
    both = counted(pre=1, out=1)
    assert nat.dnat_rule(both, "10.244.2.2:8080", "OUTPUT")["chains"][0] == "OUTPUT"
    assert nat.dnat_rule(both, "10.244.2.2:8080", "PREROUTING")["chains"][0] == "PREROUTING"


def test_a_counted_reject_is_a_refusing_rule_saying_no_endpoints():
    from netlab.debug.drops import rule_reason
    [rule] = nat.refusing_rules(counted(pre=0, rej=1))
    assert rule.table == "filter" and rule_reason(rule).startswith("no endpoints:")


NFT = """table ip kube-proxy {
	map service-ips {
		elements = { 10.96.0.2 . tcp . 80 : goto service-2GUAAQIC-default/echo/tcp/http,
			     10.96.0.3 . tcp . 80 : goto service-JVQ62JQQ-default/echo-nodeport/tcp/http }
	}
	map service-nodeports {
		elements = { tcp . 30080 : goto external-JVQ62JQQ-default/echo-nodeport/tcp/http }
	}
	chain nat-prerouting {
		jump services
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
		ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
	}
	chain service-2GUAAQIC-default/echo/tcp/http {
		numgen random mod 1 vmap { 0 : goto endpoint-AEOOWEYP-default/echo/tcp/http__10.244.1.2/8080 }
	}
	chain service-JVQ62JQQ-default/echo-nodeport/tcp/http {
		numgen random mod 1 vmap { 0 : goto endpoint-GBF4B2IX-default/echo-nodeport/tcp/http__10.244.1.2/8080 }
	}
	chain external-JVQ62JQQ-default/echo-nodeport/tcp/http {
		jump mark-for-masquerade
		goto service-JVQ62JQQ-default/echo-nodeport/tcp/http
	}
	chain endpoint-AEOOWEYP-default/echo/tcp/http__10.244.1.2/8080 {
		meta l4proto tcp dnat to 10.244.1.2:8080
	}
	chain endpoint-GBF4B2IX-default/echo-nodeport/tcp/http__10.244.1.2/8080 {
		meta l4proto tcp dnat to 10.244.1.2:8080
	}
	chain masquerading {
		meta mark & 0x00004000 == 0x00004000 masquerade fully-random
	}
}
"""


def test_nft_clusterip_dnat_names_the_endpoint_chain_and_the_way_in():
    found = nat.nft_dnat_rule(NFT, "10.96.0.2", "10.244.1.2:8080", "default/echo", "80")
    assert found["chain"] == "endpoint-AEOOWEYP-default/echo/tcp/http__10.244.1.2/8080"
    assert found["chains"] == ["nat-prerouting", "services", "service-ips", "service-2GUAAQIC-default/echo/tcp/http",
                               found["chain"]]


def test_nft_nodeport_dnat_goes_through_the_external_chain():
    found = nat.nft_dnat_rule(NFT, "192.168.56.11", "10.244.1.2:8080", "default/echo-nodeport", "30080")
    assert found["chains"][2:4] == ["service-nodeports", "external-JVQ62JQQ-default/echo-nodeport/tcp/http"]
    assert nat.nft_masquerade_rule(NFT)["rule"] == "chain masquerading: meta mark & 0x00004000 == 0x00004000 masquerade fully-random"


def test_nft_maps_layout_names_the_slot_element():
    listing = """table ip kube-proxy {
	map service-endpoints-tcp {
		elements = { 10.96.0.2 . tcp . 80 . 0 : 10.244.1.2 . 8080, 10.96.0.2 . tcp . 80 . 1 : 10.244.2.2 . 8080 }
	}
}"""
    found = nat.nft_dnat_rule(listing, "10.96.0.2", "10.244.2.2:8080")
    assert found["rule"] == "map service-endpoints-tcp: 10.96.0.2 . tcp . 80 . 1 : 10.244.2.2 . 8080"


# --- path assembly ------------------------------------------------------------------------------

def seen(netns, iface, direction, t, data, where=None):
    return trace.Seen(Frame(netns, iface, direction, t, data), decode(data), where or netns)


PROBE = trace.Probe("10.244.1.2", "10.96.0.2", "tcp", 41000, 80, 4242)


def clusterip_path():
    """A SYN to a ClusterIP DNATed on node-a to a pod on node-b, and the SYN-ACK back."""
    return [
        seen("pod-a", "eth0", "out", 1.0, syn(dst="10.96.0.2", dport=80)),
        seen("node-a", "veth1", "in", 1.1, syn(dst="10.96.0.2", dport=80)),
        seen("node-a", "flannel.1", "out", 1.2, syn(dst="10.244.2.2")),
        seen("node-a", "eth0", "out", 1.3, vxlan(syn(dst="10.244.2.2"))),
        seen("node-b", "eth0", "in", 1.4, vxlan(syn(dst="10.244.2.2"))),
        seen("pod-b", "eth0", "in", 1.5, syn(dst="10.244.2.2")),
        seen("pod-b", "eth0", "out", 1.6, syn(src="10.244.2.2", dst="10.244.1.2", sport=8080, dport=41000,
                                               ip_id=9, flags="SA")),
        seen("pod-a", "eth0", "in", 1.9, syn(src="10.96.0.2", dst="10.244.1.2", sport=80, dport=41000,
                                              ip_id=9, flags="SA")),
        seen("pod-a", "eth0", "out", 2.0, syn(ip_id=10, flags="R", dst="10.96.0.2", dport=80)),   # the RST: neither
    ]


def test_probe_and_reply_are_told_apart_through_nat():
    forward, reply = trace.split_paths(list(reversed(clusterip_path())), PROBE)
    assert [(s.frame.netns, s.frame.interface) for s in forward] == [
        ("pod-a", "eth0"), ("node-a", "veth1"), ("node-a", "flannel.1"), ("node-a", "eth0"), ("node-b", "eth0"),
        ("pod-b", "eth0")]
    assert [s.d.tcp_flags for s in reply] == ["S.", "S."]
    assert trace.verdict_of(forward, reply, PROBE) == ("delivered", None)


def test_nat_is_located_in_the_namespace_where_the_tuple_changed():
    forward, _ = trace.split_paths(clusterip_path(), PROBE)
    steps = trace.nat_steps(forward, PROBE, "pod-a")
    assert steps == [{"type": "DNAT", "netns": "node-a", "where": "node-a", "from": "10.96.0.2:80",
                      "to": "10.244.2.2:8080", "rule": None, "entry": "PREROUTING"}]
    trace.attribute(steps, {"node-a": counted()}, {})
    assert steps[0]["chain"] == "KUBE-SEP-33VB4D3K2YEWWHIZ" and "entry" not in steps[0]


def test_equal_timestamps_keep_the_order_the_packet_met_the_devices():
    t = 5.0
    mixed = [seen("node-b", "flannel.1", "in", t, syn()), seen("node-b", "eth0", "in", t, vxlan(syn())),
             seen("underlay", "node-b", "out", t, vxlan(syn()))]
    assert [(s.frame.netns, s.frame.interface) for s in trace.order(mixed)] == [
        ("underlay", "node-b"), ("node-b", "eth0"), ("node-b", "flannel.1")]


def test_an_icmp_error_quoting_the_probe_is_a_reply_and_port_unreachable_from_the_target_is_delivered():
    probe = trace.Probe("10.244.1.2", "10.244.2.3", "udp", 41000, 9, 4242)
    sent = bytes(Ether() / IP(src="10.244.1.2", dst="10.244.2.3", id=4242) / UDP(sport=41000, dport=9))
    error = bytes(Ether() / IP(src="10.244.2.3", dst="10.244.1.2") / ICMP(type=3, code=3) / sent[14:42])
    forward, reply = trace.split_paths([seen("a", "eth0", "out", 1, sent), seen("b", "eth0", "in", 1.1, sent),
                                        seen("b", "eth0", "out", 1.2, error)], probe)
    assert len(forward) == 2 and len(reply) == 1
    verdict, note = trace.verdict_of(forward, reply, probe)
    assert verdict == "delivered" and "nothing listening on UDP 9" in note


def test_json_shape_is_the_issues():
    forward, reply = trace.split_paths(clusterip_path(), PROBE)
    run = trace.TraceRun("pod-a", "svc/echo", PROBE, forward, reply, verdict="delivered")
    result = run.as_dict()
    assert list(result)[:8] == ["src", "dst", "verdict", "hops", "nat", "reply", "drop", "probe"]
    assert set(result["reply"]) == {"hops"} and result["drop"] is None
    hop = result["hops"][3]
    assert {"netns", "interface", "direction", "src", "dst", "srcMAC", "dstMAC", "encap"} <= set(hop)
    assert hop["encap"]["type"] == "vxlan" and hop["encap"]["vni"] == 1 and hop["encap"]["port"] == 8472
    assert hop["srcMAC"] == "26:ca:b8:2b:6f:b1" and hop["encap"]["innerSrcMAC"] == POD_MAC   # on the wire: outer
    assert result["hops"][0]["encap"] is None and result["hops"][0]["direction"] == "out"
    text = trace.table(result)
    assert "VXLAN vni 1 192.168.56.11 > 192.168.56.12" in text and text.rstrip().split("\n")[-1].startswith("DELIVERED")


def test_probe_bytes_carry_the_mark_and_the_size_asked():
    probe = trace.Probe("10.244.1.2", "10.244.2.3", "udp", 41000, 8080, 4242, size=1400)
    raw = probe.to_bytes()
    assert len(raw) == 1400 and raw[4:6] == (4242).to_bytes(2, "big") and raw[6] & 0x40   # ID and DF
    assert probe.marks(decode(bytes(Ether(type=0x0800)) + raw))


# --- places -------------------------------------------------------------------------------------

def test_pod_refs_and_literal_destinations():
    assert split_pod_ref("kube-system/coredns-x", None) == ("kube-system", "coredns-x")
    assert split_pod_ref("web-0", None) == ("default", "web-0")
    assert _ip_port("10.96.0.2:80") == ("10.96.0.2", 80) and _ip_port("echo") is None


def test_service_names_resolve_through_the_pods_search_path():
    places = LabPlaces.__new__(LabPlaces)
    places.lab = SimpleNamespace(cluster_domain="cluster.local")
    echo = SimpleNamespace(name="echo", namespace="default")
    dns = SimpleNamespace(name="kube-dns", namespace="kube-system")
    places._services = {"default/echo": echo, "kube-system/kube-dns": dns}
    for name in ("echo", "echo.default", "echo.default.svc", "echo.default.svc.cluster.local."):
        assert places._service_by_dns(name, "default") is echo, name
    assert places._service_by_dns("kube-dns", "default") is None          # another namespace needs .kube-system
    assert places._service_by_dns("kube-dns.kube-system", "default") is dns
    assert places._service_by_dns("echo", "kube-system") is None

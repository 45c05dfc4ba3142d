"""What IPVS mode computes from a state (proxy/ipvs/plan.py), without a kernel.
The kernel side runs under qemu in tests/kernel/test_ipvs.py."""
from __future__ import annotations

import pytest

from proxy.ipvs import netlink as nl
from proxy.ipvs.plan import (FLAG_PERSISTENT, JUMPS, RealServer, VirtualServer, VirtualServerKey, check_node,
                             iptables_rules, missing_jumps, plan, replan, restore_text)
from proxy.types import Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName

NODE = ProxyNode("node-1", ("192.168.56.11", "192.168.56.12"), "10.244.0.0/16")
WEB = ServicePortName("default", "web", "http")
DNS = ServicePortName("kube-system", "kube-dns", "dns")


def state(svc: ServicePort, *eps: Endpoint) -> ProxyState:
    return ProxyState({svc.name: svc}, {svc.name: eps})


def test_cluster_ip_and_node_port_get_one_virtual_server_each_with_both_endpoints():
    svc = ServicePort(WEB, "TCP", "10.96.0.20", 80, node_port=30080)
    p = plan(state(svc, Endpoint("10.244.2.7", 8080, "node-2"), Endpoint("10.244.1.5", 8080, "node-1")), NODE)
    reals = (RealServer("10.244.1.5", 8080), RealServer("10.244.2.7", 8080))
    assert sorted(p.virtual_servers) == [VirtualServerKey("TCP", "10.96.0.20", 80),
                                         VirtualServerKey("TCP", "192.168.56.11", 30080),
                                         VirtualServerKey("TCP", "192.168.56.12", 30080)]
    assert all(vs.real_servers == reals and vs.scheduler == "rr" and vs.flags == 0
               for vs in p.virtual_servers.values())
    assert p.addresses == {"10.96.0.20"}
    assert str(VirtualServerKey("TCP", "10.96.0.20", 80)) == "TCP 10.96.0.20:80"


def test_client_ip_affinity_is_persistence_with_the_timeout():
    svc = ServicePort(WEB, "TCP", "10.96.0.20", 80, affinity_timeout=10800)
    (vs,) = plan(state(svc, Endpoint("10.244.1.5", 8080)), NODE).virtual_servers.values()
    assert (vs.flags, vs.affinity_timeout) == (FLAG_PERSISTENT, 10800)
    assert vs.same_settings("rr", FLAG_PERSISTENT, 10800)
    assert not vs.same_settings("rr", 0, 0)
    assert not vs.same_settings("wlc", FLAG_PERSISTENT, 10800)


def test_unready_endpoints_are_not_real_servers_and_no_endpoints_keeps_an_empty_virtual_server():
    svc = ServicePort(DNS, "UDP", "10.96.0.10", 53)
    p = plan(state(svc, Endpoint("10.244.1.5", 53, ready=False, serving=False)), NODE)
    assert p.virtual_servers[VirtualServerKey("UDP", "10.96.0.10", 53)].real_servers == ()


def test_external_policy_local_sends_node_ports_and_external_ips_to_local_endpoints_only():
    svc = ServicePort(WEB, "TCP", "10.96.0.20", 80, node_port=30080, external_ips=("203.0.113.9", "192.168.56.11"),
                      external_policy_local=True)
    eps = (Endpoint("10.244.1.5", 8080, "node-1"), Endpoint("10.244.2.7", 8080, "node-2"))
    p = plan(state(svc, *eps), NODE)
    vs = p.virtual_servers
    assert vs[VirtualServerKey("TCP", "10.96.0.20", 80)].real_servers == (RealServer("10.244.1.5", 8080),
                                                                          RealServer("10.244.2.7", 8080))
    for key in (VirtualServerKey("TCP", "192.168.56.11", 30080), VirtualServerKey("TCP", "203.0.113.9", 80),
                VirtualServerKey("TCP", "192.168.56.11", 80)):
        assert vs[key].real_servers == (RealServer("10.244.1.5", 8080),)
    # an externalIP that is a node IP is already local: not bound to kube-ipvs0
    assert p.addresses == {"10.96.0.20", "203.0.113.9"}


def test_internal_policy_local_sends_cluster_ip_traffic_to_local_endpoints_only():
    svc = ServicePort(WEB, "TCP", "10.96.0.20", 80, internal_policy_local=True)
    p = plan(state(svc, Endpoint("10.244.1.5", 8080, "node-1"), Endpoint("10.244.2.7", 8080, "node-2")), NODE)
    assert p.virtual_servers[VirtualServerKey("TCP", "10.96.0.20", 80)].real_servers == (
        RealServer("10.244.1.5", 8080),)


def test_of_services_picks_the_virtual_servers_of_changed_service_ports():
    web = ServicePort(WEB, "TCP", "10.96.0.20", 80, node_port=30080)
    dns = ServicePort(DNS, "UDP", "10.96.0.10", 53)
    p = plan(ProxyState({WEB: web, DNS: dns}), NODE)
    assert {vs.key.address for vs in p.of_services(frozenset({WEB}))} == {"10.96.0.20", "192.168.56.11",
                                                                          "192.168.56.12"}
    assert isinstance(p.of_services(frozenset({DNS}))[0], VirtualServer)


def test_rules_masquerade_off_cluster_cluster_ip_traffic_node_ports_and_hairpin():
    svc = ServicePort(WEB, "TCP", "10.96.0.20", 80, node_port=30080)
    ep = Endpoint("10.244.1.5", 8080, "node-1")
    rules = iptables_rules(ProxyState({WEB: svc, DNS: ServicePort(DNS, "UDP", "10.96.0.10", 53)},
                                      {WEB: (ep, ep), DNS: (Endpoint("10.244.1.5", 53),)}), NODE)
    lines = rules.splitlines()
    assert ('-A KUBE-SERVICES ! -s 10.244.0.0/16 -d 10.96.0.20/32 -p tcp -m tcp --dport 80 '
            '-m comment --comment "default/web:http cluster IP" -j KUBE-MARK-MASQ') in lines
    assert ('-A KUBE-NODE-PORT -p tcp -m tcp --dport 30080 -m comment --comment "default/web:http nodePort" '
            '-j KUBE-MARK-MASQ') in lines
    hairpin = [line for line in lines if "hairpin" in line]
    assert hairpin == [
        '-A KUBE-POSTROUTING -s 10.244.1.5/32 -d 10.244.1.5/32 -p tcp -m tcp --dport 8080 -m comment --comment '
        '"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -j MASQUERADE',
        '-A KUBE-POSTROUTING -s 10.244.1.5/32 -d 10.244.1.5/32 -p udp -m udp --dport 53 -m comment --comment '
        '"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -j MASQUERADE']
    # the NodePort dispatch comes after every ClusterIP rule; both tables are committed
    services = [line for line in lines if line.startswith("-A KUBE-SERVICES")]
    assert services[-1] == "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT"
    assert lines.count("COMMIT") == 2 and "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000" in lines
    assert "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP" in lines


def test_rules_keep_the_client_address_under_external_policy_local_and_use_the_node_mark():
    svc = ServicePort(WEB, "TCP", "10.96.0.20", 80, node_port=30080, external_ips=("203.0.113.9",),
                      external_policy_local=True)
    node = ProxyNode("node-1", ("192.168.56.11",), "10.244.0.0/16", masquerade_mark=0x8000)
    rules = iptables_rules(state(svc, Endpoint("10.244.1.5", 8080, "node-1")), node)
    assert "--dport 30080" not in rules and "203.0.113.9" not in rules
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x8000/0x8000 -j RETURN" in rules.splitlines()


def test_missing_jumps_are_found_in_iptables_save_order_and_inserted_by_the_restore():
    saved = """*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "other" -j KUBE-SERVICES
COMMIT
*filter
-A FORWARD -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
"""
    missing = missing_jumps(saved)
    assert [(t, builtin) for t, builtin, _, _ in missing] == [("nat", "OUTPUT"), ("nat", "POSTROUTING"),
                                                              ("filter", "FORWARD")]
    assert missing_jumps("") == list(JUMPS)
    text = restore_text(plan(ProxyState(), NODE), NODE, missing)
    nat, filter_ = text.split("*filter")
    assert '-I OUTPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in nat.splitlines()
    assert '-I FORWARD 1 -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD' in filter_.splitlines()
    assert "-I PREROUTING" not in text


# --- partial syncs: only the changed service ports, only the rules that changed ---

def _two_services(*web_eps: Endpoint) -> ProxyState:
    return ProxyState({WEB: ServicePort(WEB, "TCP", "10.96.0.20", 80, node_port=30080),
                       DNS: ServicePort(DNS, "UDP", "10.96.0.10", 53)},
                      {WEB: web_eps, DNS: (Endpoint("10.244.1.5", 53, "node-1"),)})


def test_replan_plans_only_the_changed_service_port_and_equals_a_full_plan():
    before = plan(_two_services(Endpoint("10.244.1.5", 8080, "node-1")), NODE)
    after_state = _two_services(Endpoint("10.244.1.5", 8080, "node-1"), Endpoint("10.244.2.7", 8080, "node-2"))
    after, changes = replan(before, after_state, NODE, frozenset({WEB}))
    assert after.services[DNS] is before.services[DNS]          # untouched: not planned again
    full = plan(after_state, NODE)
    assert (after.virtual_servers, after.addresses, after.services) == \
        (full.virtual_servers, full.addresses, full.services)
    assert changes.deleted == () and [chain for chain, _ in changes.added] == ["KUBE-POSTROUTING"]
    assert "-s 10.244.2.7/32 -d 10.244.2.7/32" in changes.added[0][1]


def test_a_hairpin_rule_two_services_share_goes_with_the_last_of_them():
    shared = Endpoint("10.244.1.5", 53, "node-1")
    both = ProxyState({DNS: ServicePort(DNS, "UDP", "10.96.0.10", 53),
                       WEB: ServicePort(WEB, "UDP", "10.96.0.20", 53)}, {DNS: (shared,), WEB: (shared,)})
    before = plan(both, NODE)
    only_dns = ProxyState({DNS: both.services[DNS]}, {DNS: (shared,)})
    middle, changes = replan(before, only_dns, NODE, frozenset({WEB}))
    assert [chain for chain, _ in changes.deleted] == ["KUBE-SERVICES"]        # web's ClusterIP rule only
    assert middle.addresses == {"10.96.0.10"}
    _, changes = replan(middle, ProxyState(), NODE, frozenset({DNS}))
    assert sorted(chain for chain, _ in changes.deleted) == ["KUBE-POSTROUTING", "KUBE-SERVICES"]


def test_rule_changes_restore_text_flushes_no_chain():
    before = plan(_two_services(Endpoint("10.244.1.5", 8080, "node-1")), NODE)
    _, changes = replan(before, _two_services(Endpoint("10.244.2.7", 8080, "node-2")), NODE, frozenset({WEB}))
    lines = changes.restore_text().splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT" and not any(line.startswith(":") for line in lines)
    assert [line.split()[:2] for line in lines[1:-1]] == [["-D", "KUBE-POSTROUTING"], ["-I", "KUBE-POSTROUTING"]]
    assert lines[2].startswith("-I KUBE-POSTROUTING 1 -s 10.244.2.7/32")   # ahead of the chain's RETURN
    _, none = replan(before, _two_services(Endpoint("10.244.1.5", 8080, "node-1")), NODE, frozenset({WEB}))
    assert none.restore_text() == ""


# --- netlink batches, pinned to pyroute2's encoding of the same requests ---

def _decoded(payload: bytes, msg_class):
    import struct
    msg = msg_class(struct.pack("=IHHII", 16 + len(payload), 0, 0, 0, 0) + payload)
    msg.decode()
    return msg


def _pyroute2_encoded(cmd: int, attrs: list):
    from pyroute2.netlink.generic import ipvs
    msg = ipvs.ipvsmsg()
    msg["cmd"], msg["version"], msg["attrs"] = cmd, ipvs.GENL_VERSION, attrs
    msg.encode()
    return _decoded(msg.data[16:], ipvs.ipvsmsg)


def _attrs(msg, name: str) -> dict:
    return dict(msg.get(name)["attrs"])


def test_service_requests_encode_as_pyroute2_does():
    from pyroute2 import IPVSService
    from pyroute2.netlink.generic import ipvs
    key = VirtualServerKey("TCP", "10.96.0.21", 80)
    vs = VirtualServer(key, WEB, (), affinity_timeout=10800)
    theirs = IPVSService(addr=key.address, port=key.port, protocol=6, sched_name="rr", timeout=10800,
                         flags={"flags": FLAG_PERSISTENT, "mask": 0xFFFF})
    ours = _decoded(nl.service_request("add", key, vs), ipvs.ipvsmsg)
    assert ours["cmd"] == ipvs.IPVS_CMD_NEW_SERVICE
    assert _attrs(ours, "IPVS_CMD_ATTR_SERVICE") == \
        _attrs(_pyroute2_encoded(ipvs.IPVS_CMD_NEW_SERVICE, [("IPVS_CMD_ATTR_SERVICE", theirs.dump_nla())]),
               "IPVS_CMD_ATTR_SERVICE")
    deleted = _decoded(nl.service_request("del", key), ipvs.ipvsmsg)
    assert deleted["cmd"] == ipvs.IPVS_CMD_DEL_SERVICE
    assert _attrs(deleted, "IPVS_CMD_ATTR_SERVICE") == {"IPVS_SVC_ATTR_AF": 2, "IPVS_SVC_ATTR_PROTOCOL": 6,
                                                        "IPVS_SVC_ATTR_ADDR": "10.96.0.21", "IPVS_SVC_ATTR_PORT": 80}


def test_real_server_requests_encode_as_pyroute2_does_with_masquerading():
    from pyroute2 import IPVSDest, IPVSService
    from pyroute2.netlink.generic import ipvs
    key, real = VirtualServerKey("UDP", "10.96.0.10", 53), RealServer("10.244.1.5", 53)
    ours = _decoded(nl.dest_request("add", key, real), ipvs.ipvsmsg)
    theirs = _pyroute2_encoded(ipvs.IPVS_CMD_NEW_DEST, [
        ("IPVS_CMD_ATTR_SERVICE", IPVSService(addr=key.address, port=53, protocol=17).dump_key()),
        ("IPVS_CMD_ATTR_DEST", IPVSDest(addr=real.address, port=53, fwd_method=0).dump_nla())])
    assert ours["cmd"] == ipvs.IPVS_CMD_NEW_DEST
    assert _attrs(ours, "IPVS_CMD_ATTR_SERVICE") == _attrs(theirs, "IPVS_CMD_ATTR_SERVICE")
    dest = _attrs(ours, "IPVS_CMD_ATTR_DEST")
    # pyroute2 adds the optional tunnel attributes (all 0); everything we send is as it sends it
    assert dest == {k: v for k, v in _attrs(theirs, "IPVS_CMD_ATTR_DEST").items() if "TUN" not in k}
    assert dest["IPVS_DEST_ATTR_FWD_METHOD"] == 0 and dest["IPVS_DEST_ATTR_WEIGHT"] == 1


def test_address_requests_encode_a_host_route_on_the_device():
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    msg = _decoded(nl.address_request(7, "10.96.0.10"), ifaddrmsg)
    assert (msg["family"], msg["prefixlen"], msg["index"]) == (2, 32, 7)
    assert (msg.get("IFA_LOCAL"), msg.get("IFA_ADDRESS")) == ("10.96.0.10", "10.96.0.10")


def _pyroute2_message(cmd: int, attrs: list) -> bytes:
    from pyroute2.netlink.generic import ipvs
    msg = ipvs.ipvsmsg()
    msg["cmd"], msg["version"], msg["attrs"] = cmd, ipvs.GENL_VERSION, attrs
    msg.encode()
    return msg.data[16:]


def test_dumped_virtual_and_real_servers_are_read_as_pyroute2_writes_them():
    from pyroute2 import IPVSDest, IPVSService
    from pyroute2.netlink.generic import ipvs
    service = IPVSService(addr="10.96.0.21", port=80, protocol=6, sched_name="rr", timeout=10800,
                          flags={"flags": FLAG_PERSISTENT | 0x2, "mask": 0xFFFF})   # 0x2: the kernel's "hashed"
    message = _pyroute2_message(ipvs.IPVS_CMD_NEW_SERVICE, [("IPVS_CMD_ATTR_SERVICE", service.dump_nla())])
    assert nl.virtual_server_of(message) == (VirtualServerKey("TCP", "10.96.0.21", 80), ("rr", 0x3, 10800))
    fwmark = IPVSService(fwmark=7, protocol=6, af=2, sched_name="rr")
    assert nl.virtual_server_of(_pyroute2_message(ipvs.IPVS_CMD_NEW_SERVICE,
                                                  [("IPVS_CMD_ATTR_SERVICE", fwmark.dump_nla())])) is None
    dest = IPVSDest(addr="10.244.1.5", port=8080, weight=3, fwd_method=0)
    message = _pyroute2_message(ipvs.IPVS_CMD_NEW_DEST, [("IPVS_CMD_ATTR_SERVICE", service.dump_key()),
                                                         ("IPVS_CMD_ATTR_DEST", dest.dump_nla())])
    assert nl.real_server_of(message) == RealServer("10.244.1.5", 8080, 3)


@pytest.mark.parametrize("node, field", [
    (ProxyNode("n", ("192.168.56.11",), "10.244.0.0/33"), "cluster_cidr"),
    (ProxyNode("n", ("node-1",), "10.244.0.0/16"), "node_ips"),
])
def test_bad_node_names_the_field(node, field):
    with pytest.raises(ValueError, match=field):
        check_node(node)

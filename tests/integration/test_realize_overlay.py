"""The realize layer for underlay, nodes and the flannel-style VXLAN overlay,
with real kernel objects and real packets.

Every namespace comes from the `namespaces` fixture (or is removed in a
finally), so the session leak check sees nothing left behind; the root
namespace is only ever read.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from cni import netns
from conftest import unique_name
from netlab.realize import (Peer, RootNamespaceError, ensure_masquerade, ensure_netns,
                            ensure_node, ensure_peer, ensure_underlay, ensure_underlay_port,
                            ensure_vxlan, list_peers, netns_exists, new_vtep_mac,
                            pids_in_netns, remove_masquerade, remove_netns, remove_peer,
                            remove_underlay_port, remove_vxlan, sync_peers,
                            underlay_port_name)
from netlab.realize import masquerade
from netlab.realize.namespace import get_sysctl, iproute, run_in

CLUSTER = "10.244.0.0/16"
EXTERNAL_IP = "192.168.56.100"


# ---- helpers ----------------------------------------------------------------

def sh(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """A command in ns through `ip netns exec`, independent of our own code."""
    res = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns}: {res.returncode}\n{res.stdout}{res.stderr}")
    return res


def jq(ns: str, *argv: str):
    out = sh(ns, *argv).stdout.strip()
    return json.loads(out) if out else []


def ping(ns: str, dst: str, *, size: int = 56, df: bool = False, count: int = 1) -> bool:
    argv = ["ping", "-n", "-q", "-c", str(count), "-W", "1", "-s", str(size)]
    if df:
        argv += ["-M", "do"]
    return sh(ns, *argv, dst, check=False).returncode == 0


def iptables_save(ns: str | None) -> list[str]:
    """The ruleset without its timestamp comments (ns None: the root namespace, read only)."""
    argv = ["iptables-save"] if ns is None else ["ip", "netns", "exec", ns, "iptables-save"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


def overlay_state(ns: str, dev: str = "flannel.1") -> dict:
    """What `ip`/`bridge` (not pyroute2) show for the overlay."""
    return {
        "neigh": sorted((n["dst"], n["lladdr"], tuple(n["state"]))
                        for n in jq(ns, "ip", "-j", "neigh", "show", "dev", dev)),
        "fdb": sorted((f["mac"], f.get("dst"), tuple(f.get("flags", [])), f.get("state", ""))
                      for f in jq(ns, "bridge", "-j", "fdb", "show", "dev", dev)),
        "routes": sorted((r["dst"], r.get("gateway"), tuple(r.get("flags", [])))
                         for r in jq(ns, "ip", "-j", "route", "show", "dev", dev)),
    }


@dataclass
class Node:
    ns: str
    n: int  # node number: underlay .1n, subnet 10.244.n.0/24
    mac: str = field(default_factory=new_vtep_mac)
    pod: str = ""

    @property
    def underlay_ip(self) -> str:
        return f"192.168.56.{10 + self.n}"

    @property
    def subnet(self) -> str:
        return f"10.244.{self.n}.0/24"

    @property
    def pod_ip(self) -> str:
        return f"10.244.{self.n}.2"

    def peer(self) -> Peer:
        return Peer(self.subnet, self.mac, self.underlay_ip)


def wire_pod(node: Node, pod_ns: str) -> None:
    """What netlab-bridge will do, minimally: cni0 with the gateway address,
    one veth into the pod with eth0, MTU 1450, default route via cni0."""
    gw = f"10.244.{node.n}.1"
    host_if = f"veth{node.n}p"
    with iproute(node.ns) as h, iproute(pod_ns) as p:
        h.link("add", ifname="cni0", kind="bridge", mtu=1450)
        br = h.link_lookup(ifname="cni0")[0]
        h.addr("add", index=br, address=gw, prefixlen=24)
        h.link("set", index=br, state="up")
        with open(f"/run/netns/{pod_ns}") as fd:
            h.link("add", ifname=host_if, kind="veth", mtu=1450, master=br, state="up",
                   peer={"ifname": "eth0", "mtu": 1450, "net_ns_fd": fd.fileno()})
        eth0 = p.link_lookup(ifname="eth0")[0]
        p.addr("add", index=eth0, address=node.pod_ip, prefixlen=24)
        p.link("set", index=eth0, state="up")
        p.route("add", dst="0.0.0.0/0", gateway=gw)


@dataclass
class Lab:
    underlay: str
    nodes: list[Node]
    external: str


def build_lab(namespaces, n_nodes: int = 2, pods: bool = True, peers: bool = True) -> Lab:
    underlay = namespaces.new("ul")
    ensure_underlay(underlay)
    external = namespaces.new("ext")
    ensure_underlay_port(underlay, external, f"{EXTERNAL_IP}/24")
    nodes = []
    for i in range(1, n_nodes + 1):
        node = Node(namespaces.new("n"), i)
        ensure_node(node.ns)
        ensure_underlay_port(underlay, node.ns, f"{node.underlay_ip}/24")
        ensure_vxlan(node.ns, node.subnet, vtep_mac=node.mac)
        if pods:
            node.pod = namespaces.new("p")
            wire_pod(node, node.pod)
        nodes.append(node)
    if peers:
        for node in nodes:
            sync_peers(node.ns, [o.peer() for o in nodes if o is not node])
    return Lab(underlay, nodes, external)


@contextlib.contextmanager
def capture(ns: str, iface: str, lfilter):
    """Sniff iface inside ns while the body runs; yields the packet list,
    filled when the body ends. The socket is opened in ns (scapy binds in
    the calling thread's namespace) and always closed."""
    from scapy.all import AsyncSniffer, conf
    with netns.entered(ns):
        sock = conf.L2listen(iface=iface, promisc=False)
    sniffer = AsyncSniffer(opened_socket=sock, store=True, lfilter=lfilter)
    sniffer.start()
    packets: list = []
    try:
        time.sleep(0.2)
        yield packets
        time.sleep(0.2)
    finally:
        packets.extend(sniffer.stop() or [])
        sock.close()


def wait_until(pred, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


# ---- data path ----------------------------------------------------------------

def test_cross_node_ping_and_mtu(namespaces):
    lab = build_lab(namespaces)
    a, b = lab.nodes
    assert ping(a.pod, b.pod_ip, count=2)
    assert ping(b.pod, a.pod_ip)
    # node to remote pod, through flannel.1 (source 10.244.1.0, the /32)
    assert ping(a.ns, b.pod_ip)
    # 1422 + 8 ICMP + 20 IP = 1450: the pod MTU, which fits the overlay
    assert ping(a.pod, b.pod_ip, size=1422, df=True)
    assert not ping(a.pod, b.pod_ip, size=1423, df=True)
    # the overlay device itself carries 1450 and no more with DF set
    assert ping(a.ns, b.pod_ip, size=1422, df=True)
    assert not ping(a.ns, b.pod_ip, size=1423, df=True)
    with iproute(a.ns) as ipr:
        vx = ipr.get_links(ipr.link_lookup(ifname="flannel.1")[0])[0]
        assert vx.get_attr("IFLA_MTU") == 1450


def test_traffic_between_nodes_is_vxlan_vni1_on_udp_8472(namespaces):
    from scapy.all import ICMP, IP, UDP
    from scapy.layers.vxlan import VXLAN

    lab = build_lab(namespaces)
    a, b = lab.nodes
    # a bridge device does not see unicast forwarded between its ports, so
    # listen on node a's port of the underlay bridge
    with capture(lab.underlay, underlay_port_name(a.ns),
                 lambda p: p.haslayer(UDP) and p[UDP].dport == 8472) as packets:
        assert ping(a.pod, b.pod_ip, count=2)
        assert ping(a.pod, b.pod_ip, size=1422, df=True)
    vx = [p for p in packets if p.haslayer(VXLAN) and p[VXLAN].haslayer(ICMP)]
    assert vx, f"no VXLAN-encapsulated ICMP seen on the underlay ({len(packets)} UDP/8472 packets)"
    inner = {(p[VXLAN][IP].src, p[VXLAN][IP].dst) for p in vx}
    assert (a.pod_ip, b.pod_ip) in inner and (b.pod_ip, a.pod_ip) in inner
    for p in vx:
        assert p[VXLAN].vni == 1
        assert p[UDP].dport == 8472
        assert {p[IP].src, p[IP].dst} == {a.underlay_ip, b.underlay_ip}
        # the inner frame is addressed VTEP to VTEP
        assert {p[VXLAN].src, p[VXLAN].dst} == {a.mac, b.mac}
    # the 1422-byte ping fills the underlay MTU exactly: 1450 inner + 50
    assert max(p[IP].len for p in vx) == 1500


# ---- peers ----------------------------------------------------------------

def test_peer_entries_match_flannel_and_disappear(namespaces):
    lab = build_lab(namespaces)
    a, b = lab.nodes
    state = overlay_state(a.ns)
    assert state["neigh"] == [("10.244.2.0", b.mac, ("PERMANENT",))]
    assert state["fdb"] == [(b.mac, b.underlay_ip, ("self",), "permanent")]
    assert state["routes"] == [("10.244.2.0/24", "10.244.2.0", ("onlink",))]
    assert list_peers(a.ns) == [b.peer()]
    # flannel.1 carries the subnet's network address as /32, nothing else
    addrs = jq(a.ns, "ip", "-j", "-4", "addr", "show", "dev", "flannel.1")
    assert [(i["local"], i["prefixlen"]) for i in addrs[0]["addr_info"]] == [("10.244.1.0", 32)]
    vx = jq(a.ns, "ip", "-j", "-d", "link", "show", "flannel.1")[0]
    data = vx["linkinfo"]["info_data"]
    assert (data["id"], data["local"], data["port"], data["learning"], data["link"]) == \
        (1, a.underlay_ip, 8472, False, "eth0")
    assert vx["address"] == a.mac

    assert remove_peer(a.ns, b.subnet)
    assert overlay_state(a.ns) == {"neigh": [], "fdb": [], "routes": []}
    assert not ping(a.pod, b.pod_ip)
    assert not remove_peer(a.ns, b.subnet)  # absent: fine

    assert ensure_peer(a.ns, b.subnet, b.mac, b.underlay_ip)
    assert not ensure_peer(a.ns, b.subnet, b.mac, b.underlay_ip)
    assert overlay_state(a.ns) == state
    assert ping(a.pod, b.pod_ip)

    # node b leaves the cluster: the agent syncs to the remaining (none)
    result = sync_peers(a.ns, [])
    assert result.removed == (b.subnet,) and result.added == ()
    assert overlay_state(a.ns) == {"neigh": [], "fdb": [], "routes": []}
    assert not ping(a.pod, b.pod_ip)


def test_sync_peers_converges_exactly(namespaces):
    lab = build_lab(namespaces, n_nodes=3)
    a, b, c = lab.nodes
    assert {p.subnet for p in list_peers(a.ns)} == {b.subnet, c.subnet}
    assert ping(a.pod, b.pod_ip) and ping(a.pod, c.pod_ip)

    # stale entries left while the agent was down (flannel #2554) and a
    # half-programmed peer (neighbour only) are removed
    sh(a.ns, "ip", "neigh", "add", "10.244.9.0", "lladdr", "02:00:00:00:00:09",
       "dev", "flannel.1", "nud", "permanent")
    sh(a.ns, "bridge", "fdb", "append", "02:00:00:00:00:09", "dev", "flannel.1",
       "dst", "192.168.56.19", "self", "permanent")
    sh(a.ns, "ip", "route", "add", "10.244.9.0/24", "via", "10.244.9.0",
       "dev", "flannel.1", "onlink")
    sh(a.ns, "ip", "neigh", "add", "10.244.8.0", "lladdr", "02:00:00:00:00:08",
       "dev", "flannel.1", "nud", "permanent")
    result = sync_peers(a.ns, [b.peer(), c.peer()])
    assert result.removed == ("10.244.9.0/24",) and result.added == ()
    want = overlay_state(a.ns)
    assert [n[0] for n in want["neigh"]] == ["10.244.2.0", "10.244.3.0"]
    assert [f[0] for f in want["fdb"]] == sorted([b.mac, c.mac])

    # c leaves
    result = sync_peers(a.ns, [b.peer()])
    assert result.removed == (c.subnet,)
    assert list_peers(a.ns) == [b.peer()]
    assert ping(a.pod, b.pod_ip) and not ping(a.pod, c.pod_ip)

    # b's agent restarts with a new VTEP MAC (no persisted MAC): peers move
    # to the new MAC and the old fdb entry goes
    new_b = Node(b.ns, b.n, new_vtep_mac(), b.pod)
    vx = ensure_vxlan(b.ns, b.subnet, vtep_mac=new_b.mac)
    # changing the MAC in place flushes b's own (permanent) neighbours
    assert vx.created is False and vx.peers_reset is True
    assert overlay_state(b.ns)["neigh"] == []
    assert sync_peers(b.ns, [a.peer()]).added == (a.subnet,)
    result = sync_peers(a.ns, [new_b.peer()])
    assert result.added == (b.subnet,)
    state = overlay_state(a.ns)
    assert state["neigh"] == [("10.244.2.0", new_b.mac, ("PERMANENT",))]
    assert state["fdb"] == [(new_b.mac, b.underlay_ip, ("self",), "permanent")]
    assert ping(a.pod, b.pod_ip)

    # dicts work too (what the store hands over)
    assert not sync_peers(a.ns, [dict(subnet=b.subnet, mac=new_b.mac,
                                      underlay_ip=b.underlay_ip)]).changed


def test_ensure_twice_is_a_no_op(namespaces):
    lab = build_lab(namespaces, pods=False)
    a, b = lab.nodes

    def snapshot(ns):
        link = jq(ns, "ip", "-j", "-d", "link", "show", "flannel.1")[0]
        eth0 = jq(ns, "ip", "-j", "-d", "-4", "addr", "show", "eth0")[0]  # no IPv6 DAD flags
        for x in (link, eth0):
            x.pop("stats64", None)
        return link, eth0, overlay_state(ns), iptables_save(ns)

    ensure_masquerade(a.ns, CLUSTER, a.subnet)
    underlay_links = jq(lab.underlay, "ip", "-j", "link", "show")
    before = snapshot(a.ns)

    assert ensure_underlay(lab.underlay) is False
    assert ensure_underlay_port(lab.underlay, a.ns, f"{a.underlay_ip}/24") == underlay_port_name(a.ns)
    assert ensure_node(a.ns) is False
    vx = ensure_vxlan(a.ns, a.subnet, vtep_mac=a.mac)
    assert vx.created is False and (vx.vni, vx.port, vx.local_ip, vx.mtu) == (1, 8472, a.underlay_ip, 1450)
    assert not sync_peers(a.ns, [b.peer()]).changed
    assert ensure_peer(a.ns, b.subnet, b.mac, b.underlay_ip) is False
    assert ensure_masquerade(a.ns, CLUSTER, a.subnet) is False

    assert jq(lab.underlay, "ip", "-j", "link", "show") == underlay_links
    after = snapshot(a.ns)
    assert after[0]["ifindex"] == before[0]["ifindex"]
    assert after == before
    # without vtep_mac the device keeps the MAC it has
    assert ensure_vxlan(a.ns, a.subnet).mac == a.mac


def test_vxlan_recreated_when_vni_port_or_local_differ(namespaces):
    lab = build_lab(namespaces, pods=False)
    a, b = lab.nodes
    # someone made flannel.1 with another VNI and the IANA port
    remove_vxlan(a.ns)
    assert remove_vxlan(a.ns) is False  # absent: fine
    sh(a.ns, "ip", "link", "add", "flannel.1", "type", "vxlan", "id", "42", "dstport", "4789",
       "local", a.underlay_ip, "dev", "eth0")
    sh(a.ns, "ip", "addr", "add", "10.244.77.1/24", "dev", "flannel.1")
    old = jq(a.ns, "ip", "-j", "link", "show", "flannel.1")[0]["ifindex"]
    vx = ensure_vxlan(a.ns, a.subnet, vtep_mac=a.mac)
    assert vx.created and vx.index != old
    data = jq(a.ns, "ip", "-j", "-d", "link", "show", "flannel.1")[0]["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data["learning"]) == (1, 8472, False)
    addrs = jq(a.ns, "ip", "-j", "-4", "addr", "show", "dev", "flannel.1")[0]["addr_info"]
    assert [(i["local"], i["prefixlen"]) for i in addrs] == [("10.244.1.0", 32)]
    assert sync_peers(a.ns, [b.peer()]).added == (b.subnet,)
    assert ping(a.ns, "10.244.2.0")

    # the node's underlay address changes (flannel #760): local differs,
    # the device is recreated and its peers have to be programmed again
    ensure_underlay_port(lab.underlay, a.ns, "192.168.56.21/24")
    vx2 = ensure_vxlan(a.ns, a.subnet, vtep_mac=a.mac)
    assert vx2.created and vx2.local_ip == "192.168.56.21"
    assert list_peers(a.ns) == []
    sync_peers(a.ns, [b.peer()])
    sync_peers(b.ns, [Peer(a.subnet, a.mac, "192.168.56.21")])
    assert ping(a.ns, "10.244.2.0")

    # MTU and MAC change in place
    vx3 = ensure_vxlan(a.ns, a.subnet, vtep_mac="02:11:22:33:44:55", mtu=1400)
    assert not vx3.created and vx3.index == vx2.index
    link = jq(a.ns, "ip", "-j", "link", "show", "flannel.1")[0]
    assert (link["address"], link["mtu"]) == ("02:11:22:33:44:55", 1400)

    # another VNI is another device, flannel.<vni>
    vx4 = ensure_vxlan(a.ns, a.subnet, vni=7, port=8473, vtep_mac=a.mac)
    assert vx4.name == "flannel.7" and vx4.created
    assert remove_vxlan(a.ns, vni=7)


# ---- masquerade ---------------------------------------------------------------

def test_masquerade_rules_and_behaviour(namespaces):
    from scapy.all import ICMP, IP

    root_before = iptables_save(None)
    lab = build_lab(namespaces)
    a, b = lab.nodes
    # the external host has no route to pods: without masquerade no reply
    assert not ping(a.pod, EXTERNAL_IP)

    assert ensure_masquerade(a.ns, CLUSTER, a.subnet) is True
    saved = sh(a.ns, "iptables-save").stdout
    ours = [line for line in saved.splitlines() if "flanneld" in line]
    rf = " --random-fully"
    assert ours == [
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
        '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        '-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
        '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
        '-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE' + rf,
        '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE' + rf,
    ]
    # pod -> outside leaves with the node's underlay address ...
    with capture(lab.external, "eth0", lambda p: p.haslayer(ICMP) and p[ICMP].type == 8) as seen:
        assert ping(a.pod, EXTERNAL_IP)
    assert seen and {p[IP].src for p in seen} == {a.underlay_ip}
    # ... pod -> pod across nodes keeps the pod source (RETURN before MASQUERADE)
    with capture(b.pod, "eth0", lambda p: p.haslayer(ICMP) and p[ICMP].type == 8) as seen:
        assert ping(a.pod, b.pod_ip)
    assert seen and {p[IP].src for p in seen} == {a.pod_ip}

    # a changed pod CIDR rewrites our chain, the jump stays single
    assert ensure_masquerade(a.ns, CLUSTER, "10.244.11.0/24", random_fully=False)
    saved = sh(a.ns, "iptables-save").stdout
    assert saved.count("-j FLANNEL-POSTRTG") == 1
    assert "-s 10.244.11.0/24 -d 10.244.0.0/16" in saved and "10.244.1.0/24" not in saved
    assert "--random-fully" not in saved

    assert remove_masquerade(a.ns) is True
    assert remove_masquerade(a.ns) is False
    assert "flanneld" not in sh(a.ns, "iptables-save").stdout
    assert "FLANNEL" not in sh(a.ns, "iptables-save").stdout
    assert not ping(a.pod, EXTERNAL_IP)

    # the root namespace's ruleset never changed
    assert iptables_save(None) == root_before


def test_masquerade_leaves_kube_proxy_rules_and_repairs_duplicates(namespaces):
    node = namespaces.new("n")
    ensure_node(node)
    kube = ("*nat\n:KUBE-POSTROUTING - [0:0]\n"
            '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING\n'
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n"
            "COMMIT\n")
    run_in(node, ["iptables-restore", "--noflush"], input=kube)
    # an interrupted run left two jumps
    jump = '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'
    run_in(node, ["iptables-restore", "--noflush"],
           input=f"*nat\n:FLANNEL-POSTRTG - [0:0]\n{jump}\n{jump}\nCOMMIT\n")
    assert ensure_masquerade(node, CLUSTER, "10.244.1.0/24")
    saved = sh(node, "iptables-save").stdout
    assert saved.count("-j FLANNEL-POSTRTG") == 1
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN" in saved
    assert ensure_masquerade(node, CLUSTER, "10.244.1.0/24") is False
    remove_masquerade(node)
    saved = sh(node, "iptables-save").stdout
    assert "FLANNEL" not in saved and "KUBE-POSTROUTING -m mark" in saved


def test_masquerade_restore_text_is_pure():
    saved = "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
    text = masquerade.restore_text(saved, {"FLANNEL-POSTRTG": masquerade.masq_rules(
        CLUSTER, "10.244.1.0/24", random_fully=False)})
    assert text.startswith("*nat\n:FLANNEL-POSTRTG - [0:0]\n-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000")
    assert text.endswith('-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG\nCOMMIT\n')
    assert masquerade.removal_text(saved) == ""


# ---- underlay, nodes, namespaces ----------------------------------------------

def test_underlay_ports_and_addresses_converge(namespaces):
    underlay, host = namespaces.new("ul"), namespaces.new("h")
    ensure_underlay(underlay, mtu=9000)
    assert jq(underlay, "ip", "-j", "-d", "link", "show", "br-underlay")[0]["mtu"] == 9000
    name = ensure_underlay_port(underlay, host, "192.168.56.30/24", mtu=9000)
    port = jq(underlay, "ip", "-j", "-d", "link", "show", name)[0]
    assert port["master"] == "br-underlay" and port["mtu"] == 9000 and "UP" in port["flags"]
    assert port["ifalias"] == f"{host}:eth0"
    eth0 = jq(host, "ip", "-j", "addr", "show", "eth0")[0]
    assert eth0["mtu"] == 9000 and "UP" in eth0["flags"]
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] == \
        [("192.168.56.30", 24)]
    # a new address replaces the old one
    ensure_underlay_port(underlay, host, "192.168.56.31/24", mtu=9000)
    eth0 = jq(host, "ip", "-j", "addr", "show", "eth0")[0]
    assert [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"] == ["192.168.56.31"]
    # a hand-made eth0 that is not our pair is replaced
    assert remove_underlay_port(underlay, host)
    assert not remove_underlay_port(underlay, host)
    sh(host, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "junk")
    ensure_underlay_port(underlay, host, "192.168.56.31/24", mtu=9000)
    assert jq(host, "ip", "-j", "link", "show", "eth0")[0]["link_netnsid"] is not None
    assert not sh(host, "ip", "link", "show", "junk", check=False).returncode == 0


def test_underlay_port_names_fit_and_are_stable():
    assert underlay_port_name("lab-n1") == "lab-n1-eth0"
    long = underlay_port_name("a-rather-long-node-namespace")
    assert len(long) <= 15 and long.startswith("ul-")
    assert long == underlay_port_name("a-rather-long-node-namespace")
    assert long != underlay_port_name("a-rather-long-node-namespace", "eth1")


def test_vtep_mac_is_local_unicast():
    macs = {new_vtep_mac() for _ in range(50)}
    assert len(macs) == 50
    for m in macs:
        first = int(m.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01


def test_node_sysctls_are_per_namespace(namespaces):
    root_fwd = open("/proc/sys/net/ipv4/ip_forward").read().strip()
    node = namespaces.new("n")
    assert ensure_node(node) is True  # existed, but ip_forward changed
    assert sh(node, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert get_sysctl(node, "net.ipv4.ip_forward") == "1"
    assert ensure_node(node) is False
    assert open("/proc/sys/net/ipv4/ip_forward").read().strip() == root_fwd


def test_netns_create_kill_remove():
    name = unique_name("x")
    try:
        assert ensure_netns(name) is True
        assert ensure_netns(name) is False
        assert netns_exists(name)
        assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
        assert wait_until(lambda: proc.pid in pids_in_netns(name))
        assert remove_netns(name) is True
        assert proc.wait(timeout=5) is not None
        assert not netns_exists(name)
        assert remove_netns(name) is False
    finally:
        remove_netns(name)


def test_remove_functions_tolerate_absence():
    ghost = unique_name("ghost")
    assert remove_peer(ghost, "10.244.2.0/24") is False
    assert remove_vxlan(ghost) is False
    assert remove_masquerade(ghost) is False
    assert remove_underlay_port(ghost, unique_name("ghost")) is False
    assert remove_netns(ghost) is False


def test_root_namespace_is_refused():
    with pytest.raises(RootNamespaceError):
        ensure_vxlan("/proc/thread-self/ns/net", "10.244.1.0/24")
    with pytest.raises(RootNamespaceError):
        ensure_masquerade("/proc/self/ns/net", CLUSTER, "10.244.1.0/24")
    with pytest.raises(RootNamespaceError):
        with iproute(""):
            pass

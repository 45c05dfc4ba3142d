"""The iptables proxier on a real kernel: a node namespace with a cni0 bridge,
two pods running the echo server, a client pod, and an outside client on
the node's eth0. Packets go through the rules the proxier writes."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cni.netns import entered
from proxy.conntrack import flush_udp_endpoint, flush_udp_service
from proxy.iptables import IptablesProxier
from proxy.iptables import names as n
from proxy.iptables.backend import binary_backend, detect
from proxy.types import (Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName, stale_udp_endpoints,
                         udp_services_gaining_endpoints)

REPO = Path(__file__).resolve().parents[2]
NODE_IP, OUTSIDE_IP, CLUSTER_CIDR = "192.168.56.11", "192.168.56.254", "10.244.0.0/16"
POD_IPS = {"pod-a": "10.244.1.2", "pod-b": "10.244.1.3", "client": "10.244.1.4"}
WEB = ServicePortName("default", "web", "http")
API = ServicePortName("default", "api", "")
DNS = ServicePortName("kube-system", "kube-dns", "dns")


def sh(ns: str, *cmd: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True, text=True).stdout


def ask_tcp(ns: str, ip: str, port: int) -> str:
    """One TCP request from inside ns: the echo server's line (pod name, client ip:port)."""
    with entered(ns):
        with socket.create_connection((ip, port), timeout=3) as s:
            return s.recv(200).decode().strip()


def ask_udp(sock: socket.socket, ip: str, port: int) -> str:
    sock.sendto(b"x", (ip, port))
    return sock.recv(200).decode().strip()


class Cluster:
    """node (cni0 10.244.1.1/24, eth0 192.168.56.11/24), pods on cni0, an outside host on eth0."""

    def __init__(self, namespaces):
        self.node = namespaces.new("node")
        self.pods = {name: namespaces.new("pod") for name in POD_IPS}
        self.outside = namespaces.new("out")
        self.servers: list[subprocess.Popen] = []
        ipn = ["ip", "-n", self.node]
        run = lambda *a: subprocess.run(a, check=True)  # noqa: E731
        run(*ipn, "link", "add", "cni0", "type", "bridge")
        run(*ipn, "addr", "add", "10.244.1.1/24", "dev", "cni0")
        run(*ipn, "link", "set", "cni0", "up")
        for i, (name, ns) in enumerate(self.pods.items()):
            port = f"veth{i}"
            run(*ipn, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run(*ipn, "link", "set", port, "master", "cni0", "up")
            # hairpin: a pod reaching itself through its Service gets its packet back on its own port
            run(*ipn, "link", "set", port, "type", "bridge_slave", "hairpin", "on")
            run("ip", "-n", ns, "addr", "add", f"{POD_IPS[name]}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "route", "add", "default", "via", "10.244.1.1")
        run(*ipn, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", self.outside)
        run(*ipn, "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
        run(*ipn, "link", "set", "eth0", "up")
        run("ip", "-n", self.outside, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
        run("ip", "-n", self.outside, "link", "set", "eth0", "up")
        # a node has a default route; without one a ClusterIP with no endpoint is "unreachable", not REJECTed
        run(*ipn, "route", "add", "default", "via", OUTSIDE_IP)
        sh(self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        assert sh(self.node, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables").strip() == "1"
        for name in ("pod-a", "pod-b"):
            self.servers.append(subprocess.Popen(
                ["ip", "netns", "exec", self.pods[name], sys.executable, "-m", "netlab.workload.echo",
                 "--pod", name, "--tcp", "8080", "--udp", "8080"], cwd=REPO, stderr=subprocess.DEVNULL))
        for name in ("pod-a", "pod-b"):
            self._wait_listening(POD_IPS[name])
        self.proxy_node = ProxyNode("node-a", (NODE_IP,), CLUSTER_CIDR)

    def _wait_listening(self, ip: str) -> None:
        for _ in range(200):
            try:
                ask_tcp(self.node, ip, 8080)
                return
            except OSError:
                subprocess.run(["sleep", "0.05"])
        raise RuntimeError(f"echo server on {ip}:8080 did not start")

    def stop(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()

    def from_client(self, ip: str, port: int, times: int = 1) -> list[str]:
        return [ask_tcp(self.pods["client"], ip, port) for _ in range(times)]

    def nat(self, backend: str = "nft") -> str:
        return sh(self.node, f"iptables-{backend}-save", "-t", "nat")


@pytest.fixture
def cluster(namespaces):
    c = Cluster(namespaces)
    try:
        yield c
    finally:
        c.stop()


def ep(pod: str, node: str = "node-a") -> Endpoint:
    return Endpoint(POD_IPS[pod], 8080, node)


def state(*services: tuple[ServicePort, tuple[Endpoint, ...]]) -> ProxyState:
    return ProxyState({s.name: s for s, _ in services}, {s.name: eps for s, eps in services})


def pods_answering(lines: list[str]) -> set[str]:
    return {line.split()[0] for line in lines}


WEB_SVC = ServicePort(WEB, "TCP", "10.96.120.15", 80, node_port=30080)
API_SVC = ServicePort(API, "TCP", "10.96.0.50", 443)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_cluster_ip_spreads_over_both_endpoints_and_names_match_kube_proxy(cluster, backend):
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node, backend=backend)
    result = proxier.sync(state((WEB_SVC, (ep("pod-a"), ep("pod-b")))))
    assert result.error is None and result.full
    assert pods_answering(cluster.from_client("10.96.120.15", 80, times=40)) == {"pod-a", "pod-b"}
    saved = cluster.nat(backend)
    svc = n.service_chain(WEB, "tcp")
    seps = [n.endpoint_chain(WEB, "tcp", e) for e in (ep("pod-a"), ep("pod-b"))]
    for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-PROXY-CANARY",
                  svc, n.external_chain(WEB, "tcp"), *seps):
        assert f":{chain} - " in saved
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in saved
    assert (f'-A {svc} -m comment --comment "default/web:http -> 10.244.1.2:8080" '
            f"-m statistic --mode random --probability 0.50000000000 -j {seps[0]}") in saved
    assert f"-A {seps[1]} -s 10.244.1.3/32 -m comment --comment " in saved
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in saved.splitlines()
    services = [line for line in saved.splitlines() if line.startswith("-A KUBE-SERVICES ")]
    assert services[-1].endswith("-j KUBE-NODEPORTS")


def test_nodeport_answers_an_outside_client_masqueraded(cluster):
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node)
    assert proxier.sync(state((WEB_SVC, (ep("pod-a"), ep("pod-b"))))).error is None
    lines = [ask_tcp(cluster.outside, NODE_IP, 30080) for _ in range(30)]
    assert pods_answering(lines) == {"pod-a", "pod-b"}
    # Cluster policy: the endpoint sees the node (masqueraded), not the outside host
    assert {line.split()[1].split(":")[0] for line in lines} == {"10.244.1.1"}


def test_external_policy_local_preserves_the_client_ip(cluster):
    local = ServicePort(WEB, "TCP", "10.96.120.15", 80, node_port=30080, external_policy_local=True)
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node)
    assert proxier.sync(state((local, (ep("pod-a"), ep("pod-b", node="node-b"))))).error is None
    lines = [ask_tcp(cluster.outside, NODE_IP, 30080) for _ in range(20)]
    assert pods_answering(lines) == {"pod-a"}
    assert {line.split()[1].split(":")[0] for line in lines} == {OUTSIDE_IP}
    # pods are not subject to the Local policy: they reach both endpoints
    assert pods_answering(cluster.from_client("10.96.120.15", 80, times=40)) == {"pod-a", "pod-b"}


def test_no_endpoints_refuses_connections(cluster):
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node)
    assert proxier.sync(state((WEB_SVC, ()))).error is None
    with pytest.raises(ConnectionRefusedError):
        cluster.from_client("10.96.120.15", 80)
    with pytest.raises(ConnectionRefusedError):
        ask_tcp(cluster.outside, NODE_IP, 30080)


def test_client_ip_affinity_pins_a_client(cluster):
    sticky = ServicePort(WEB, "TCP", "10.96.120.15", 80, affinity_timeout=600)
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node)
    assert proxier.sync(state((sticky, (ep("pod-a"), ep("pod-b"))))).error is None
    assert len(pods_answering(cluster.from_client("10.96.120.15", 80, times=20))) == 1


def test_hairpin_a_pod_reaches_itself_through_its_service(cluster):
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node)
    assert proxier.sync(state((WEB_SVC, (ep("pod-a"),)))).error is None
    line = ask_tcp(cluster.pods["pod-a"], "10.96.120.15", 80)
    # masqueraded by the SEP's -s <epIP> rule, so the reply comes back through the node
    assert line.split()[0] == "pod-a" and line.split()[1].startswith("10.244.1.1:")


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_partial_sync_changes_one_service_and_keeps_the_others(cluster, backend):
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node, backend=backend)
    both = (ep("pod-a"), ep("pod-b"))
    assert proxier.sync(state((WEB_SVC, both), (API_SVC, both))).error is None
    result = proxier.sync(state((WEB_SVC, (ep("pod-a"),)), (API_SVC, both)), changed=frozenset({WEB}))
    assert result.error is None and not result.full
    assert f"-X {n.endpoint_chain(WEB, 'tcp', ep('pod-b'))}" in proxier.last_text
    assert f":{n.service_chain(API, 'tcp')} " not in proxier.last_text   # unchanged: not rewritten
    assert pods_answering(cluster.from_client("10.96.120.15", 80, times=20)) == {"pod-a"}
    assert pods_answering(cluster.from_client("10.96.0.50", 443, times=40)) == {"pod-a", "pod-b"}
    assert n.endpoint_chain(WEB, "tcp", ep("pod-b")) not in cluster.nat(backend)
    # the service removed in a partial sync loses all its chains
    assert proxier.sync(state((API_SVC, both)), changed=frozenset({WEB})).error is None
    saved = cluster.nat(backend)
    assert n.port_proto_hash(WEB, "tcp") not in saved and n.endpoint_chain(WEB, "tcp", ep("pod-a")) not in saved


def test_rejected_rule_set_keeps_the_previous_rules_and_forces_a_full_sync(cluster, caplog):
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node)
    good = state((WEB_SVC, (ep("pod-a"), ep("pod-b"))))
    assert proxier.sync(good).error is None
    before = cluster.nat()
    bad_port = ServicePort(API, "TCP", "10.96.0.50", 70000)
    with caplog.at_level("ERROR", logger="netlab.proxy"):
        result = proxier.sync(state((WEB_SVC, (ep("pod-a"), ep("pod-b"))), (bad_port, (ep("pod-a"),))),
                              changed=frozenset({API}))
    assert result.error and "rejected" in caplog.text
    assert _rules(cluster.nat()) == _rules(before)
    assert pods_answering(cluster.from_client("10.96.120.15", 80, times=30)) == {"pod-a", "pod-b"}
    assert proxier.sync(good, changed=frozenset()).full


def _rules(saved: str) -> list[str]:
    return [line for line in saved.splitlines() if not line.startswith("#")]


def test_canary_flush_makes_the_next_sync_full(cluster):
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node)
    good = state((WEB_SVC, (ep("pod-a"),)))
    assert proxier.sync(good).error is None
    assert not proxier.sync(good, changed=frozenset()).full
    for table in ("mangle", "nat", "filter"):
        sh(cluster.node, "iptables", "-t", table, "-F")
        sh(cluster.node, "iptables", "-t", table, "-X")
    result = proxier.sync(good, changed=frozenset())
    assert result.full and result.error is None
    assert pods_answering(cluster.from_client("10.96.120.15", 80, times=5)) == {"pod-a"}


def test_stale_udp_flush_moves_a_one_socket_client_to_the_new_endpoint(cluster):
    dns = ServicePort(DNS, "UDP", "10.96.0.10", 53)
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node)
    old, new = state((dns, (ep("pod-a"),))), state((dns, (ep("pod-b"),)))
    assert proxier.sync(old).error is None
    with entered(cluster.pods["client"]):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        assert ask_udp(sock, "10.96.0.10", 53).startswith("pod-a ")
        assert proxier.sync(new, changed=frozenset({DNS})).error is None
        # pod-a still serves and the conntrack entry still DNATs there: the bug being fixed
        assert ask_udp(sock, "10.96.0.10", 53).startswith("pod-a ")
        stale = stale_udp_endpoints(old, new)
        assert stale == [(dns, ep("pod-a"))]
        assert sum(flush_udp_endpoint(s, e, cluster.proxy_node, netns=cluster.node) for s, e in stale) >= 1
        assert ask_udp(sock, "10.96.0.10", 53).startswith("pod-b ")
        # nothing left to flush is not an error
        assert flush_udp_endpoint(dns, ep("pod-a"), cluster.proxy_node, netns=cluster.node) == 0
    finally:
        sock.close()


def test_cleanup_removes_every_kube_chain_and_leaves_others(cluster):
    sh(cluster.node, "iptables", "-t", "nat", "-N", "FLANNEL-POSTRTG")
    sh(cluster.node, "iptables", "-t", "nat", "-A", "POSTROUTING", "-j", "FLANNEL-POSTRTG")
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node)
    assert proxier.sync(state((WEB_SVC, (ep("pod-a"),)), (API_SVC, ()))).error is None
    proxier.cleanup()
    saved = sh(cluster.node, "iptables-save")
    assert "KUBE-" not in saved
    assert "-A POSTROUTING -j FLANNEL-POSTRTG" in saved
    # and a sync after cleanup brings everything back
    assert proxier.sync(state((WEB_SVC, (ep("pod-a"),)))).full
    assert pods_answering(cluster.from_client("10.96.120.15", 80)) == {"pod-a"}


def test_backend_is_detected_like_kube_proxys_iptables_wrapper(namespaces):
    ns = namespaces.new("det")
    # no rules with either backend: what /usr/sbin/iptables resolves to (xtables-nft-multi here)
    assert detect(ns) == binary_backend()
    sh(ns, "iptables-legacy", "-A", "INPUT", "-s", "10.0.0.1", "-j", "ACCEPT")
    assert detect(ns) == "legacy"        # only legacy has rules
    sh(ns, "iptables-nft", "-N", "KUBE-SERVICES")
    sh(ns, "iptables-nft", "-A", "KUBE-SERVICES", "-j", "RETURN")
    assert detect(ns) == "nft"           # KUBE-* rules outweigh any other rules
    assert IptablesProxier(ProxyNode("n", (), CLUSTER_CIDR), netns=ns).backend == "nft"


def test_udp_service_gaining_an_endpoint_flushes_entries_made_before(cluster):
    dns = ServicePort(DNS, "UDP", "10.96.0.10", 53)
    proxier = IptablesProxier(cluster.proxy_node, netns=cluster.node)
    with entered(cluster.pods["client"]):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        # the proxy does not know the service yet: the datagram leaves by the node's
        # default route and conntrack remembers the flow un-NATed (kubernetes#48370)
        old = state((WEB_SVC, (ep("pod-a"),)))
        assert proxier.sync(old).error is None
        sock.sendto(b"x", ("10.96.0.10", 53))
        entries = sh(cluster.node, "conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.10")
        assert "src=10.96.0.10" in entries   # the reply is expected from the ClusterIP itself
        new = state((WEB_SVC, (ep("pod-a"),)), (dns, (ep("pod-b"),)))
        assert proxier.sync(new, changed=frozenset({DNS})).error is None
        assert udp_services_gaining_endpoints(old, new) == [dns]
        assert flush_udp_service(dns, cluster.proxy_node, netns=cluster.node) >= 1
        assert ask_udp(sock, "10.96.0.10", 53).startswith("pod-b ")
    finally:
        sock.close()


def test_inside_the_node_namespace_without_netns(cluster):
    """As the node agent runs it: in the node's namespace, netns=None."""
    code = ("from proxy.iptables import IptablesProxier\n"
            "from proxy.types import Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName\n"
            "web = ServicePortName('default', 'web', 'http')\n"
            "p = IptablesProxier(ProxyNode('node-a', ('192.168.56.11',), '10.244.0.0/16'))\n"
            "r = p.sync(ProxyState({web: ServicePort(web, 'TCP', '10.96.120.15', 80)},\n"
            "                      {web: (Endpoint('10.244.1.3', 8080, 'node-a'),)}))\n"
            "print(p.backend, r.full, r.error)\n")
    assert sh(cluster.node, sys.executable, "-c", code).split() == [binary_backend(), "True", "None"]
    assert pods_answering(cluster.from_client("10.96.120.15", 80, times=3)) == {"pod-b"}

"""The nftables proxy in both layouts, with real packets: a node namespace
with cni0 and three pods running the echo server, an external host on the
node's eth0. Every namespace comes from the `namespaces` fixture."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from cni import netns
from netlab.realize.namespace import iproute
from netlab.realize.node import ensure_node
from proxy.nftables import LAYOUTS, NftablesProxier, Written, render_full
from proxy.types import Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName

NODE_IP, EXTERNAL_IP, GATEWAY = "192.168.56.11", "192.168.56.254", "10.244.1.1"
PODS = {"a": "10.244.1.2", "b": "10.244.1.3", "client": "10.244.1.4"}
WEB = ServicePortName("default", "web", "http")
OTHER = ServicePortName("default", "other", "")


@dataclass
class Lab:
    node: str
    external: str
    pods: dict[str, str] = field(default_factory=dict)   # pod name -> netns
    servers: list[subprocess.Popen] = field(default_factory=list)

    def proxy_node(self) -> ProxyNode:
        return ProxyNode("node-a", (NODE_IP,), "10.244.0.0/16")


def _veth_into(ipr, ifname: str, peer_ns: str, peer_if: str, **kw) -> None:
    with open(f"/run/netns/{peer_ns}") as fd:
        ipr.link("add", ifname=ifname, kind="veth", state="up", peer={"ifname": peer_if, "net_ns_fd": fd.fileno()},
                 **kw)


def _address(ns: str, ifname: str, ip: str, gateway: str | None = None) -> None:
    with iproute(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.addr("add", index=idx, address=ip, prefixlen=24)
        ipr.link("set", index=idx, state="up")
        if gateway:
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway)


def _wait_listening(ns: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        with netns.entered(ns):
            s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
        finally:
            s.close()


@pytest.fixture
def lab(namespaces):
    node, external = namespaces.new("n"), namespaces.new("x")
    ensure_node(node)          # ip_forward=1
    with iproute(node) as ipr:
        _veth_into(ipr, "eth0", external, "eth0")
        ipr.link("add", ifname="cni0", kind="bridge", state="up")
    _address(node, "eth0", NODE_IP, gateway=EXTERNAL_IP)   # a node's uplink: ClusterIPs are routed, then rejected
    _address(node, "cni0", GATEWAY)
    _address(external, "eth0", EXTERNAL_IP)
    lab = Lab(node, external)
    for i, (pod, ip) in enumerate(PODS.items()):
        ns = lab.pods[pod] = namespaces.new("p")
        with iproute(node) as ipr:
            _veth_into(ipr, f"veth{i}", ns, "eth0", master=ipr.link_lookup(ifname="cni0")[0])
        # hairpin: a pod may reach itself through a Service (kubelet --hairpin-mode)
        subprocess.run(["ip", "netns", "exec", node, "bridge", "link", "set", "dev", f"veth{i}", "hairpin", "on"],
                       check=True)
        _address(ns, "eth0", ip, GATEWAY)
        if pod != "client":
            lab.servers.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "netlab.workload.echo", "--pod", pod,
                 "--tcp", "8080", "--udp", "8080"], stderr=subprocess.DEVNULL))
    for pod in ("a", "b"):
        _wait_listening(lab.pods[pod], 8080)
    try:
        yield lab
    finally:
        for proc in lab.servers:
            proc.kill()
            proc.wait()


def ask(ns: str, ip: str, port: int, udp: bool = False, timeout: float = 3) -> tuple[str, str]:
    """(pod, client ip) as the echo server saw it, asked from inside ns."""
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        s.sendall(b"hello\n")
        pod, client = s.recv(200).decode().split()
        return pod, client.rsplit(":", 1)[0]
    finally:
        s.close()


def web_state(endpoints=("a", "b"), **spec) -> ProxyState:
    svc = ServicePort(WEB, "TCP", "10.96.0.10", 80, node_port=30080, **spec)
    eps = tuple(Endpoint(PODS[p], 8080, "node-a") for p in endpoints)
    return ProxyState({WEB: svc}, {WEB: eps})


def with_other(st: ProxyState, endpoints=("a", "b")) -> ProxyState:
    other = ServicePort(OTHER, "UDP", "10.96.0.20", 53)
    return ProxyState({**st.services, OTHER: other},
                      {**st.endpoints, OTHER: tuple(Endpoint(PODS[p], 8080, "node-a") for p in endpoints)})


def synced(lab: Lab, layout: str, state: ProxyState) -> NftablesProxier:
    proxier = NftablesProxier(lab.proxy_node(), netns=lab.node, layout=layout)
    result = proxier.sync(state)
    assert result.error is None and result.full
    return proxier


def nft_ruleset(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cluster_ip_spreads_and_node_port_answers_outside(lab, layout):
    synced(lab, layout, with_other(web_state()))
    answers = [ask(lab.pods["client"], "10.96.0.10", 80) for _ in range(40)]
    assert {pod for pod, _ in answers} == {"a", "b"}
    assert {client for _, client in answers} == {PODS["client"]}     # pod traffic keeps its source
    assert ask(lab.pods["client"], "10.96.0.20", 53, udp=True)[0] in ("a", "b")
    outside = [ask(lab.external, NODE_IP, 30080) for _ in range(20)]
    assert {pod for pod, _ in outside} == {"a", "b"}
    assert {client for _, client in outside} == {GATEWAY}           # Cluster policy: masqueraded


@pytest.mark.parametrize("layout", LAYOUTS)
def test_service_without_endpoints_is_rejected(lab, layout):
    synced(lab, layout, web_state(endpoints=()))
    with pytest.raises(ConnectionRefusedError):
        ask(lab.pods["client"], "10.96.0.10", 80)
    with pytest.raises(ConnectionRefusedError):
        ask(lab.external, NODE_IP, 30080)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_client_ip_affinity_pins_a_client(lab, layout):
    synced(lab, layout, web_state(affinity_timeout=600))
    assert len({ask(lab.pods["client"], "10.96.0.10", 80)[0] for _ in range(20)}) == 1
    assert "flags dynamic,timeout" in nft_ruleset(lab.node)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_external_traffic_policy_local_keeps_client_ip_and_stays_local(lab, layout):
    st = web_state(endpoints=("a",), external_policy_local=True)
    remote = Endpoint("10.244.2.9", 8080, "node-b")    # unreachable: any packet sent there would hang
    st = ProxyState(st.services, {WEB: st.endpoints[WEB] + (remote,)})
    synced(lab, layout, st)
    assert {ask(lab.external, NODE_IP, 30080) for _ in range(10)} == {("a", EXTERNAL_IP)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pod_reaches_itself_through_its_service(lab, layout):
    synced(lab, layout, web_state(endpoints=("a",)))
    # hairpin: masqueraded, or the reply would go straight back inside the pod
    assert ask(lab.pods["a"], "10.96.0.10", 80) == ("a", GATEWAY)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_partial_sync_changes_one_service_and_keeps_the_others(lab, layout):
    proxier = synced(lab, layout, with_other(web_state()))
    result = proxier.sync(with_other(web_state(endpoints=("b",))), frozenset({WEB}))
    assert result.error is None and not result.full
    assert {ask(lab.pods["client"], "10.96.0.10", 80)[0] for _ in range(10)} == {"b"}
    assert ask(lab.pods["client"], "10.96.0.20", 53, udp=True)[0] in ("a", "b")
    result = proxier.sync(web_state(endpoints=("b",)), frozenset({OTHER}))     # OTHER deleted
    assert result.error is None
    assert "10.96.0.20" not in nft_ruleset(lab.node)
    with pytest.raises(OSError):                  # no longer a Service: no pod answers
        ask(lab.pods["client"], "10.96.0.20", 53, udp=True, timeout=0.5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rejected_batch_keeps_previous_rules_and_next_sync_is_full(lab, layout, caplog):
    proxier = synced(lab, layout, web_state())
    before = nft_ruleset(lab.node)
    bad = ServicePortName("default", "bad", "")
    broken = ProxyState({**web_state().services, bad: ServicePort(bad, "TCP", "10.96.0.999", 80)},
                        {bad: (Endpoint(PODS["a"], 8080),)})
    result = proxier.sync(broken, frozenset({bad}))
    assert result.error and "netlab.proxy" in {r.name for r in caplog.records}
    assert nft_ruleset(lab.node) == before
    assert ask(lab.pods["client"], "10.96.0.10", 80)[0] in ("a", "b")
    result = proxier.sync(web_state(), frozenset({bad}))
    assert result.full and result.error is None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_sync_failing_while_rendering_applies_nothing(lab, layout, monkeypatch):
    """nft starts before the batch is rendered: a rendering that fails must
    not leave it a half batch to apply."""
    proxier = synced(lab, layout, web_state())
    assert proxier.last_text == render_full(lab.proxy_node(), web_state(), layout)
    before = nft_ruleset(lab.node)

    def broken(self, state):
        raise RuntimeError("rendering failed")
    with monkeypatch.context() as m:
        m.setattr(Written, "render", broken)
        with pytest.raises(RuntimeError, match="rendering failed"):
            proxier.sync(with_other(web_state()))
    assert nft_ruleset(lab.node) == before
    result = proxier.sync(with_other(web_state()), frozenset({OTHER}))
    assert result.full and result.error is None          # unsure what the kernel holds: full
    assert ask(lab.pods["client"], "10.96.0.20", 53, udp=True)[0] in ("a", "b")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_resync_keeps_affinity_and_cleanup_leaves_nothing(lab, layout):
    proxier = synced(lab, layout, web_state(affinity_timeout=600))
    pinned = ask(lab.pods["client"], "10.96.0.10", 80)[0]
    assert proxier.sync(web_state(affinity_timeout=600)).error is None     # periodic full resync
    assert {ask(lab.pods["client"], "10.96.0.10", 80)[0] for _ in range(10)} == {pinned}
    proxier.cleanup()
    assert nft_ruleset(lab.node).strip() == ""
    proxier.cleanup()        # absent is fine

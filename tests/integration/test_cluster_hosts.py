"""A cluster across "machines" without VMs: each machine is a namespace of the test on an
emulated underlay (192.168.56.0/24), etcd runs in another one (started by the test, never
the system's), and `kube-netlab control up` / `node join` / `node leave` run inside the
machines' namespaces exactly as on a VM (nsenter --net, so pod namespaces stay visible):
the agent in host mode acts in the machine's own namespace."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import unique_name
from labrun import KUBE_NETLAB

from netlab import engine, state
from netlab.cluster.etcd_server import EtcdServer
from netlab.realize import ensure_underlay, ensure_underlay_port, list_peers
from netlab.store import open_store
from netlab.store.subnets import list_leases

ETCD_IP = "192.168.56.10"
STORE = f"etcd://{ETCD_IP}:2379"
WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def on(machine: str, *args, check=True, timeout=180) -> subprocess.CompletedProcess:
    """kube-netlab run on a machine (in its namespace, with the host's mounts)."""
    env = {k: v for k, v in os.environ.items() if k != "NETLAB_HOST_NETNS"}
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{machine}", "--", KUBE_NETLAB, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"on {machine}: kube-netlab {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def sh(machine: str, *argv, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", machine, *argv], capture_output=True, text=True, check=check)


def wait_for(what: str, predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.2)


class Cluster:
    def __init__(self, namespaces, tmp_path):
        self.name = unique_name("c")
        self.underlay = namespaces.new("ul")
        ensure_underlay(self.underlay, bridge="br", mtu=1500)
        self.machines = {}
        for i, role in enumerate(["etcd", "vm1", "vm2"]):
            ns = namespaces.new(role)
            ensure_underlay_port(self.underlay, ns, f"192.168.56.{10 + i}/24", ifname="eth0", bridge="br",
                                 mtu=1500, port_name=f"p{i}")
            self.machines[role] = ns
        self.etcd = EtcdServer(str(tmp_path / "etcd"), host=ETCD_IP, netns=self.machines["etcd"])
        self.etcd.start()
        self.vm1, self.vm2 = self.machines["vm1"], self.machines["vm2"]

    def read(self, fn):
        """fn(store) from vm1: etcd's address is reachable on the underlay only, and a socket
        belongs to the namespace it was opened in."""
        from cni import netns as _netns
        with _netns.entered(self.vm1):
            store = open_store(STORE)
            try:
                return fn(store)
            finally:
                store.close()

    def leases(self) -> dict[str, str]:
        return self.read(lambda s: {str(l.public_ip): str(l.subnet) for l in list_leases(s)})

    def heartbeats(self) -> dict:
        return self.read(lambda s: state.LabState(s).heartbeats())

    def pods(self) -> list[dict]:
        return json.loads(on(self.vm1, "get", "pods", "-A", "-o", "json", "--store", STORE).stdout)["items"]

    def teardown(self):
        for vm in (self.vm1, self.vm2):
            on(vm, "node", "leave", "--name", vm, "--store", STORE, check=False, timeout=60)
        engine.down(self.name, joined_too=True)  # only if a leave failed: pod namespaces carry the cluster's prefix
        self.etcd.destroy()


@pytest.fixture
def cluster(namespaces, tmp_path):
    c = Cluster(namespaces, tmp_path)
    try:
        yield c
    finally:
        c.teardown()


def _in_pod(pod: dict, *argv, check=True) -> subprocess.CompletedProcess:
    pid = pod["status"]["netlab"]["pausePid"]
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "--", *argv], capture_output=True, text=True,
                          check=check, timeout=30)


def _peers(machine: str) -> set[str]:
    return {p.subnet for p in list_peers(machine)}


def test_two_hosts_join_talk_over_vxlan_share_a_service_and_leave_nothing(cluster):
    vm1, vm2 = cluster.vm1, cluster.vm2
    out = on(vm1, "control", "up", "--store", STORE, "--lab", cluster.name).stdout
    assert f"cluster {cluster.name} is up" in out
    joined = on(vm1, "node", "join", "--store", STORE, "--name", vm1).stdout
    assert "underlay eth0 192.168.56.11" in joined and "is Ready" in joined
    on(vm2, "node", "join", "--store", STORE, "--name", vm2, "--iface", "eth0")
    # the host's own namespace is the node: flannel.1 there (cni0 with its first pod), a peer for the other
    for vm in (vm1, vm2):
        assert "flannel.1" in sh(vm, "ls", "/sys/class/net").stdout.split()
    leases = cluster.leases()
    assert set(leases) == {"192.168.56.11", "192.168.56.12"}
    wait_for("each host has the other as its peer",
             lambda: _peers(vm1) == {leases["192.168.56.12"]} and _peers(vm2) == {leases["192.168.56.11"]})
    heartbeats = cluster.heartbeats()
    assert set(heartbeats) == {vm1, vm2} and all(hb.host_mode for hb in heartbeats.values())
    # `down` would leave the host's cni0, flannel.1 and rules behind: node leave is the way out
    refused = on(vm1, "down", cluster.name, check=False)
    assert refused.returncode == 1 and "node leave" in refused.stderr

    # pods on both hosts reach each other; the Service spans both
    manifest = os.path.join(os.path.dirname(cluster.etcd.data_dir), "web.yaml")
    with open(manifest, "w") as f:
        f.write(WEB)
    on(vm1, "apply", "-f", manifest, "--store", STORE)
    web = [p for p in cluster.pods() if p["metadata"]["name"].startswith("web-")]
    assert sorted(p["spec"]["nodeName"] for p in web) == sorted([vm1, vm2])
    a = next(p for p in web if p["spec"]["nodeName"] == vm1)
    b = next(p for p in web if p["spec"]["nodeName"] == vm2)
    assert _in_pod(a, "ping", "-c", "1", "-W", "2", b["status"]["podIP"]).returncode == 0
    svc = json.loads(on(vm1, "get", "svc", "web", "-o", "json", "--store", STORE).stdout)
    url = f"http://{svc['spec']['clusterIP']}/"
    answers = {_in_pod(a, "curl", "-s", "--max-time", "2", url).stdout.split()[0] for _ in range(12)}
    assert answers == {a["metadata"]["name"], b["metadata"]["name"]}

    # exec works where the pod is, and says where it is otherwise
    here = on(vm1, "exec", a["metadata"]["name"], "--store", STORE, "--", "hostname")
    assert here.stdout.strip() == a["metadata"]["name"]
    there = on(vm1, "exec", b["metadata"]["name"], "--store", STORE, "--", "hostname", check=False)
    assert there.returncode == 1 and f"node {vm2} (192.168.56.12)" in there.stderr

    # vm2 leaves: gone from vm1's FDB, neighbour and route tables; nothing of it left on vm2
    on(vm2, "node", "leave", "--store", STORE)
    wait_for("vm1 drops vm2 as a peer", lambda: not _peers(vm1))
    routes = sh(vm1, "ip", "route").stdout
    assert leases["192.168.56.12"] not in routes
    assert "192.168.56.12" not in sh(vm1, "bridge", "fdb", "show", "dev", "flannel.1").stdout
    assert leases["192.168.56.12"].split("/")[0] not in sh(vm1, "ip", "neigh", "show", "dev", "flannel.1").stdout
    links = set(sh(vm2, "ls", "/sys/class/net").stdout.split())
    assert links == {"lo", "eth0"}
    assert "KUBE-" not in sh(vm2, "iptables-save").stdout and "FLANNEL" not in sh(vm2, "iptables-save").stdout
    assert sh(vm2, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    assert not os.path.exists(f"/run/netlab/{cluster.name}/nodes/{vm2}")
    assert state.shim_pids(state.LabPaths(cluster.name), vm2) == []  # its container shim went with it
    assert list(cluster.leases()) == ["192.168.56.11"]
    assert vm2 not in cluster.heartbeats()
    # its pod was scheduled onto vm1
    wait_for("web runs twice on vm1", lambda: sorted(p["spec"]["nodeName"] for p in cluster.pods()
                                                   if p["metadata"]["name"].startswith("web-")) == [vm1, vm1])


def _two_hosts_with_web(cluster, *, vm2_lease_ttl: float | None = None) -> tuple[dict, dict]:
    vm1, vm2 = cluster.vm1, cluster.vm2
    on(vm1, "control", "up", "--store", STORE, "--lab", cluster.name)
    on(vm1, "node", "join", "--store", STORE, "--name", vm1)
    on(vm2, "node", "join", "--store", STORE, "--name", vm2,
       *(["--lease-ttl", str(vm2_lease_ttl)] if vm2_lease_ttl else []))
    manifest = os.path.join(os.path.dirname(cluster.etcd.data_dir), "web.yaml")
    with open(manifest, "w") as f:
        f.write(WEB)
    on(vm1, "apply", "-f", manifest, "--store", STORE)
    web = {p["spec"]["nodeName"]: p for p in cluster.pods() if p["metadata"]["name"].startswith("web-")}
    return web[vm1], web[vm2]


def _nodes_ready(cluster) -> bool:
    proc = on(cluster.vm1, "get", "nodes", "-o", "json", "--store", STORE, check=False)
    if proc.returncode != 0:
        return False
    nodes = json.loads(proc.stdout)["items"]
    return len(nodes) == 2 and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]) for n in nodes)


def _agent_pid(cluster, node: str) -> int:
    return state.read_pid(state.LabPaths(cluster.name).agent_pid(node))


def test_an_etcd_restart_and_a_cut_link_keep_the_data_path_and_the_leases(cluster):
    a, b = _two_hosts_with_web(cluster)
    leases = cluster.leases()
    agents = {vm: _agent_pid(cluster, vm) for vm in (cluster.vm1, cluster.vm2)}
    ping = ("ping", "-c", "1", "-W", "2", b["status"]["podIP"])

    cluster.etcd.stop()
    assert _in_pod(a, *ping).returncode == 0                 # the data path does not need etcd
    status = on(cluster.vm1, "status", "--store", STORE, check=False)
    assert status.returncode == 1 and "unreachable" in status.stderr
    cluster.etcd.start()
    wait_for("both nodes Ready again", lambda: _nodes_ready(cluster))
    assert cluster.leases() == leases                         # the same subnets, no second lease
    assert {vm: _agent_pid(cluster, vm) for vm in agents} == agents   # the agents rode it out
    assert _in_pod(a, *ping).returncode == 0

    # vm2's underlay link cut (from etcd and from vm1), then back
    sh(cluster.underlay, "ip", "link", "set", "p2", "down")
    assert _in_pod(a, *ping, check=False).returncode != 0     # really cut
    sh(cluster.underlay, "ip", "link", "set", "p2", "up")
    wait_for("vm2 reachable again", lambda: _in_pod(a, *ping, check=False).returncode == 0)
    wait_for("both nodes Ready again", lambda: _nodes_ready(cluster))
    assert cluster.leases() == leases
    pods = {p["metadata"]["name"]: p["status"]["podIP"] for p in cluster.pods()}
    assert pods[a["metadata"]["name"]] == a["status"]["podIP"] and pods[b["metadata"]["name"]] == b["status"]["podIP"]


def test_a_host_whose_lease_expires_disappears_from_the_others(cluster):
    _two_hosts_with_web(cluster, vm2_lease_ttl=3)
    vm2_subnet = cluster.leases()["192.168.56.12"]
    wait_for("vm1 has vm2 as its peer", lambda: _peers(cluster.vm1) == {vm2_subnet})
    assert vm2_subnet.split("/")[0] in sh(cluster.vm1, "ip", "neigh", "show", "dev", "flannel.1").stdout
    os.kill(_agent_pid(cluster, cluster.vm2), signal.SIGKILL)   # nobody renews vm2's lease now
    wait_for("vm1 drops vm2 once its lease expired", lambda: not _peers(cluster.vm1))
    assert vm2_subnet not in sh(cluster.vm1, "ip", "route").stdout
    assert "192.168.56.12" not in sh(cluster.vm1, "bridge", "fdb", "show", "dev", "flannel.1").stdout
    assert vm2_subnet.split("/")[0] not in sh(cluster.vm1, "ip", "neigh", "show", "dev", "flannel.1").stdout
    assert "192.168.56.12" not in cluster.leases()

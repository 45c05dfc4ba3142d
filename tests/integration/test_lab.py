"""The emulated cluster end to end, driven through the CLI as a user would:
real namespaces, bridges, VXLAN, processes and packets."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import leaks
from cni import netns
from conftest import unique_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KUBE_NETLAB = os.path.join(os.path.dirname(sys.executable), "kube-netlab")
TWO_NODE = os.path.join(ROOT, "topologies", "two-node.yaml")
THREE_NODE = os.path.join(ROOT, "topologies", "three-node.yaml")


def kn(*args, check=True, timeout=180, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([KUBE_NETLAB, *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"kube-netlab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def items(lab: str, what: str) -> list[dict]:
    return json.loads(kn("get", what, "-o", "json", "--lab", lab).stdout)["items"]


def in_pod(lab, pod, *cmd, check=True):
    return kn("exec", pod, "--lab", lab, "--", *cmd, check=check, timeout=60)


def on_node(lab, node, *cmd, check=True):
    return kn("exec", "--node", node, "--lab", lab, "--", *cmd, check=check, timeout=60)


def lab_leftovers(lab: str) -> list[str]:
    left = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(lab + "-")] if os.path.isdir("/run/netns") else []
    for d in ("/etc/netns", "/var/lib/cni/networks"):
        if os.path.isdir(d):
            left += [f"{d}/{n}" for n in os.listdir(d) if n.startswith(lab + "-")]
    if os.path.exists(f"/run/netlab/{lab}"):
        left.append(f"/run/netlab/{lab}")
    ps = subprocess.run(["pgrep", "-af", f"--lab {lab}( |$)"], capture_output=True, text=True).stdout
    left += [f"process {line}" for line in ps.splitlines()]
    return left


class Lab:
    def __init__(self, path=TWO_NODE):
        self.name = unique_name("l")
        self.path = path

    def up(self, check=True, **kw):
        return kn("up", "-q", self.path, "--name", self.name, check=check, **kw)

    def down(self):
        return kn("down", self.name, check=False)


@pytest.fixture
def lab_factory():
    labs = []

    def make(path=TWO_NODE):
        lab = Lab(path)
        labs.append(lab)
        return lab
    yield make
    for lab in labs:
        lab.down()
        assert lab_leftovers(lab.name) == []


@pytest.fixture(scope="module")
def two_node():
    """One two-node lab shared by the read-only tests of this module."""
    lab = Lab()
    try:
        lab.up()
        yield lab.name
    finally:
        lab.down()
    assert lab_leftovers(lab.name) == []


def by_node(pods):
    out = {}
    for p in pods:
        out.setdefault(p["node"], []).append(p)
    return out


def test_up_reports_nodes_and_pods(two_node):
    nodes = {n["name"]: n for n in items(two_node, "nodes")}
    assert set(nodes) == {"node-a", "node-b"}
    assert nodes["node-a"]["underlayIP"] == "192.168.56.11" and nodes["node-b"]["underlayIP"] == "192.168.56.12"
    assert nodes["node-a"]["podCIDR"] == "10.244.1.0/24" and nodes["node-b"]["podCIDR"] == "10.244.2.0/24"
    assert nodes["node-a"]["peers"] == ["10.244.2.0/24"] and nodes["node-b"]["peers"] == ["10.244.1.0/24"]
    for n in nodes.values():
        assert n["ready"] and n["netns"] == f"{two_node}-{n['name']}"
        assert int(n["vtepMAC"].split(":")[0], 16) & 0x03 == 0x02  # locally administered unicast, like flannel's
    pods = items(two_node, "pods")
    assert len(pods) == 4 and all(p["phase"] == "Running" for p in pods)
    assert {k: len(v) for k, v in by_node(pods).items()} == {"node-a": 2, "node-b": 2}
    for p in pods:
        assert ipaddress.ip_address(p["ip"]) in ipaddress.ip_network(nodes[p["node"]]["podCIDR"])
        assert p["netns"] == f"{two_node}-default.{p['name']}"
        assert p["netns"] in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_pod_identity_hostname_resolv_conf_and_mtu(two_node):
    pod = items(two_node, "pods")[0]
    assert in_pod(two_node, pod["name"], "hostname").stdout.strip() == pod["name"]
    assert in_pod(two_node, pod["name"], "cat", "/etc/resolv.conf").stdout.split("\n")[:3] == [
        "search default.svc.cluster.local svc.cluster.local cluster.local", "nameserver 10.96.0.10",
        "options ndots:5"]
    link = json.loads(in_pod(two_node, pod["name"], "ip", "-j", "link", "show", "eth0").stdout)[0]
    assert link["mtu"] == 1450
    with open(f"/run/netlab/{two_node}/nodes/{pod['node']}/subnet.env") as f:
        env = dict(line.strip().split("=", 1) for line in f if "=" in line)
    assert env["FLANNEL_NETWORK"] == "10.244.0.0/16" and env["FLANNEL_MTU"] == "1450"
    assert env["FLANNEL_IPMASQ"] == "true" and env["FLANNEL_SUBNET"].endswith(".1/24")


def test_pod_to_pod_on_one_node_and_across_nodes(two_node):
    pods = by_node(items(two_node, "pods"))
    a1, a2 = pods["node-a"]
    b1 = pods["node-b"][0]
    for src, dst in ((a1, a2), (a1, b1), (b1, a2)):
        assert in_pod(two_node, src["name"], "ping", "-c", "1", "-W", "2", dst["ip"]).returncode == 0
        # TCP and UDP to the echo server: it answers with its pod name and the client's address
        answer = in_pod(two_node, src["name"], "curl", "-s", "--max-time", "5", f"http://{dst['ip']}:8080/").stdout
        assert answer.split()[0] == dst["name"] and answer.split()[1].startswith(src["ip"] + ":")
        udp = in_pod(two_node, src["name"], sys.executable, "-c",
                     "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5);"
                     f"s.sendto(b'x',('{dst['ip']}',8080));print(s.recv(200).decode())").stdout
        assert udp.split()[0] == dst["name"] and udp.split()[1].startswith(src["ip"] + ":")


def test_df_ping_of_1422_bytes_crosses_nodes_and_1423_does_not(two_node):
    pods = by_node(items(two_node, "pods"))
    src, dst = pods["node-a"][0], pods["node-b"][0]
    ok = in_pod(two_node, src["name"], "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", dst["ip"], check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    too_big = in_pod(two_node, src["name"], "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1423", dst["ip"],
                     check=False)
    assert too_big.returncode != 0


def test_overlay_entries_match_the_remote_node(two_node):
    nodes = {n["name"]: n for n in items(two_node, "nodes")}
    for here, there in (("node-a", "node-b"), ("node-b", "node-a")):
        remote = nodes[there]
        subnet = ipaddress.ip_network(remote["podCIDR"])
        vtep_ip = str(subnet.network_address)
        fdb = on_node(two_node, here, "bridge", "fdb", "show", "dev", "flannel.1").stdout
        assert f"{remote['vtepMAC']} dst {remote['underlayIP']} self permanent" in fdb
        neigh = on_node(two_node, here, "ip", "neigh", "show", "dev", "flannel.1").stdout
        assert f"{vtep_ip} lladdr {remote['vtepMAC']} PERMANENT" in neigh
        routes = on_node(two_node, here, "ip", "route").stdout
        assert f"{subnet} via {vtep_ip} dev flannel.1 onlink" in routes
        vx = json.loads(on_node(two_node, here, "ip", "-d", "-j", "link", "show", "flannel.1").stdout)[0]
        info = vx["linkinfo"]["info_data"]
        assert info["id"] == 1 and info["port"] == 8472 and info["local"] == nodes[here]["underlayIP"]
        assert not info.get("learning") and vx["mtu"] == 1450 and vx["address"] == nodes[here]["vtepMAC"]


def test_traffic_between_nodes_is_vxlan_on_the_underlay(two_node):
    from scapy.all import UDP, VXLAN, AsyncSniffer, IP
    pods = by_node(items(two_node, "pods"))
    src, dst = pods["node-a"][0], pods["node-b"][0]
    with netns.entered(f"{two_node}-underlay"):  # scapy's socket binds to this thread's namespace
        sniffer = AsyncSniffer(iface="node-a", filter="udp port 8472", store=True)  # node-a's underlay port
        sniffer.start()
    time.sleep(0.5)
    in_pod(two_node, src["name"], "ping", "-c", "3", "-i", "0.2", dst["ip"])
    packets = sniffer.stop()
    inner = [p for p in packets if p.haslayer(VXLAN) and p[VXLAN].haslayer(IP)]
    assert inner, f"no VXLAN packets captured ({len(packets)} UDP 8472)"
    p = inner[0]
    assert p[UDP].dport == 8472 and p[VXLAN].vni == 1
    assert {p[IP].src, p[IP].dst} == {"192.168.56.11", "192.168.56.12"}
    pairs = {(q[VXLAN][IP].src, q[VXLAN][IP].dst) for q in inner}
    assert (src["ip"], dst["ip"]) in pairs and (dst["ip"], src["ip"]) in pairs


def test_pod_reaches_the_external_host_masqueraded_as_its_node(two_node):
    pod = by_node(items(two_node, "pods"))["node-a"][0]
    server = subprocess.Popen(["ip", "netns", "exec", f"{two_node}-external", sys.executable, "-m",
                               "netlab.workload.echo", "--pod", "outside", "--tcp", "9090"],
                              stderr=subprocess.PIPE, text=True)
    try:
        server.stderr.readline()  # "echo: ... listening"
        answer = in_pod(two_node, pod["name"], "curl", "-s", "--max-time", "5", "http://192.168.56.254:9090/").stdout
        assert answer.split()[0] == "outside"
        assert answer.split()[1].startswith("192.168.56.11:")  # flannel's masquerade: the node's address
    finally:
        server.kill()
        server.wait()


def test_bad_lab_file_gives_a_clear_error_and_creates_nothing(tmp_path):
    name = unique_name("l")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: netlab.dev/v1alpha1\nkind: Lab\nmetadata: {name: x}\n"
                   "spec:\n  nodes:\n    - name: Node_B\n  podCIDR: 10.244.0.0/33\n")
    proc = kn("up", str(bad), "--name", name, check=False)
    assert proc.returncode == 2
    assert "bad.yaml" in proc.stderr and "spec.nodes[0].name" in proc.stderr and "Node_B" in proc.stderr
    assert "spec.podCIDR" in proc.stderr
    assert lab_leftovers(name) == []
    proc = kn("up", str(tmp_path / "missing.yaml"), "--name", name, check=False)
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr
    assert lab_leftovers(name) == []


def test_apply_scale_and_delete_manifests(lab_factory, tmp_path):
    lab = lab_factory()
    lab.up()
    manifest = tmp_path / "web.yaml"
    deployment = ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: shop}}\n"
                  "spec:\n  replicas: {n}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n"
                  "    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n"
                  "        - name: web\n          image: nginx\n          ports: [{{containerPort: 80}}]\n")
    manifest.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n" + deployment.format(n=2))
    kn("apply", "-f", str(manifest), "--lab", lab.name)
    web = [p for p in items(lab.name, "pods") if p["namespace"] == "shop"]
    assert len(web) == 2 and all(p["phase"] == "Running" for p in web)
    manifest.write_text(deployment.format(n=3))
    kn("apply", "-f", str(manifest), "--lab", lab.name)
    web3 = [p for p in items(lab.name, "pods") if p["namespace"] == "shop"]
    assert len(web3) == 3 and {p["name"] for p in web} < {p["name"] for p in web3}  # scaling keeps pods
    client = next(p for p in items(lab.name, "pods") if p["namespace"] == "default")
    for p in web3:
        answer = in_pod(lab.name, client["name"], "curl", "-s", "--max-time", "5", f"http://{p['ip']}:80/").stdout
        assert answer.split()[0] == p["name"]
    kn("delete", "-f", str(manifest), "--lab", lab.name)
    assert [p for p in items(lab.name, "pods") if p["namespace"] == "shop"] == []
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{lab.name}-shop.")]
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
                   "    - name: c\n      ports: [{containerPort: 70000}]\n")
    proc = kn("apply", "-f", str(bad), "--lab", lab.name, check=False)
    assert proc.returncode == 2 and "bad.yaml" in proc.stderr and "containerPort" in proc.stderr


def test_command_containers_and_pod_phase(lab_factory, tmp_path):
    lab = lab_factory()
    lab.up()
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: sleeper}\nspec:\n  nodeName: node-b\n  containers:\n"
        "    - {name: main, image: busybox, command: [sleep, '600']}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: done}\nspec:\n  restartPolicy: Never\n  containers:\n"
        "    - {name: main, command: [sh, -c, 'hostname > /dev/null; exit 0']}\n")
    kn("apply", "-f", str(manifest), "--lab", lab.name)
    pods = {p["name"]: p for p in items(lab.name, "pods")}
    assert pods["sleeper"]["phase"] == "Running" and pods["sleeper"]["node"] == "node-b"
    deadline = time.time() + 10
    while pods["done"]["phase"] != "Succeeded" and time.time() < deadline:
        time.sleep(0.2)
        pods = {p["name"]: p for p in items(lab.name, "pods")}
    assert pods["done"]["phase"] == "Succeeded"
    assert "sleep 600" in subprocess.run(["ps", "-o", "args=", "-p", str(pods["sleeper"]["containers"][0]["pid"])],
                                         capture_output=True, text=True).stdout


def test_removing_a_node_removes_its_overlay_entries_and_reschedules_pods(lab_factory):
    lab = lab_factory(THREE_NODE)
    lab.up()
    nodes = {n["name"]: n for n in items(lab.name, "nodes")}
    gone = nodes["node-c"] if "node-c" in nodes else list(nodes.values())[-1]
    keep = next(n for n in nodes.values() if n["name"] != gone["name"])
    assert gone["vtepMAC"] in on_node(lab.name, keep["name"], "bridge", "fdb", "show", "dev", "flannel.1").stdout
    kn("delete", "node", gone["name"], "--lab", lab.name)
    assert gone["vtepMAC"] not in on_node(lab.name, keep["name"], "bridge", "fdb", "show", "dev", "flannel.1").stdout
    assert str(ipaddress.ip_network(gone["podCIDR"]).network_address) not in on_node(
        lab.name, keep["name"], "ip", "neigh", "show", "dev", "flannel.1").stdout
    assert gone["podCIDR"] not in on_node(lab.name, keep["name"], "ip", "route").stdout
    assert not os.path.exists(f"/run/netns/{lab.name}-{gone['name']}")
    pods = items(lab.name, "pods")
    assert pods and all(p["node"] != gone["name"] and p["phase"] == "Running" for p in pods)


def test_a_killed_agent_restarted_converges_without_duplicates(lab_factory):
    lab = lab_factory()
    lab.up()
    before_nodes = {n["name"]: n for n in items(lab.name, "nodes")}
    before_pods = {p["name"]: p for p in items(lab.name, "pods")}
    pid = before_nodes["node-a"]["agentPid"]
    os.kill(pid, signal.SIGKILL)
    lab.up()  # converges: restarts the dead agent
    after_nodes = {n["name"]: n for n in items(lab.name, "nodes")}
    after_pods = {p["name"]: p for p in items(lab.name, "pods")}
    assert after_nodes["node-a"]["agentPid"] != pid
    for n in ("node-a", "node-b"):
        assert after_nodes[n]["vtepMAC"] == before_nodes[n]["vtepMAC"]
        assert after_nodes[n]["podCIDR"] == before_nodes[n]["podCIDR"]
    assert {k: v["ip"] for k, v in after_pods.items()} == {k: v["ip"] for k, v in before_pods.items()}
    assert all(p["phase"] == "Running" and p["restarts"] == 0 for p in after_pods.values())
    fdb = on_node(lab.name, "node-a", "bridge", "fdb", "show", "dev", "flannel.1").stdout
    assert fdb.count(before_nodes["node-b"]["vtepMAC"]) == 1
    chains = on_node(lab.name, "node-a", "iptables-save", "-t", "nat").stdout
    assert chains.count("-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG") == 1
    leases = os.listdir(f"/var/lib/cni/networks/{lab.name}-node-a")
    assert len([f for f in leases if f[0].isdigit()]) == 2


@pytest.mark.parametrize("kill_after", [0.3, 1.0, 2.0])
def test_down_after_up_was_killed(lab_factory, kill_after):
    lab = lab_factory()
    proc = subprocess.Popen([KUBE_NETLAB, "up", "-q", lab.path, "--name", lab.name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert kn("down", lab.name, check=False).returncode in (0, 1)
    assert lab_leftovers(lab.name) == []


def test_down_after_agents_died(lab_factory):
    lab = lab_factory()
    lab.up()
    for n in items(lab.name, "nodes"):
        os.kill(n["agentPid"], signal.SIGKILL)
    kn("down", lab.name)
    assert lab_leftovers(lab.name) == []


def test_root_namespace_untouched_and_two_labs_side_by_side(lab_factory):
    before = leaks.snapshot()
    first, second = lab_factory(), lab_factory()
    first.up()
    second.up()
    for lab in (first, second):
        pods = by_node(items(lab.name, "pods"))
        assert in_pod(lab.name, pods["node-a"][0]["name"], "ping", "-c", "1", "-W", "2",
                      pods["node-b"][0]["ip"]).returncode == 0
    kn("down", first.name)
    assert lab_leftovers(first.name) == []
    pods = by_node(items(second.name, "pods"))
    assert in_pod(second.name, pods["node-b"][0]["name"], "ping", "-c", "1", "-W", "2",
                  pods["node-a"][0]["ip"]).returncode == 0
    kn("down", second.name)
    after = leaks.snapshot()
    root_keys = [k for k in before if k.startswith("root ")]
    assert {k: after[k] for k in root_keys} == {k: before[k] for k in root_keys}


def test_status_and_wide_output(two_node):
    out = kn("get", "pods", "-o", "wide", "--lab", two_node).stdout
    assert out.splitlines()[0].split() == ["NAMESPACE", "NAME", "STATUS", "RESTARTS", "IP", "NODE", "NETNS",
                                           "HOSTNAME"]
    nodes = kn("get", "nodes", "--lab", two_node).stdout
    assert "node-a" in nodes and "Ready" in nodes
    status = kn("status", "--lab", two_node).stdout
    assert f"lab {two_node}: nodes 2/2 ready, pods 4 Running" in status


def test_a_node_joins_when_up_is_rerun_with_more_nodes(lab_factory, tmp_path):
    lab = lab_factory(TWO_NODE)
    lab.up()
    lab.path = THREE_NODE  # same lab name, a file with one more node
    lab.up()
    nodes = {n["name"]: n for n in items(lab.name, "nodes")}
    assert set(nodes) == {"node-a", "node-b", "node-c"} and all(n["ready"] for n in nodes.values())
    c = nodes["node-c"]
    for other in ("node-a", "node-b"):
        assert c["podCIDR"] in nodes[other]["peers"]
        fdb = on_node(lab.name, other, "bridge", "fdb", "show", "dev", "flannel.1").stdout
        assert f"{c['vtepMAC']} dst {c['underlayIP']} self permanent" in fdb
    pinned = tmp_path / "on-c.yaml"
    pinned.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: on-c}\nspec:\n  nodeName: node-c\n"
                      "  containers: [{name: echo, ports: [{containerPort: 8080}]}]\n")
    kn("apply", "-f", str(pinned), "--lab", lab.name)
    pods = {p["name"]: p for p in items(lab.name, "pods")}
    assert pods["client"]["namespace"] == "demo" and pods["client"]["node"] == "node-a"
    assert in_pod(lab.name, "client", "curl", "-s", "--max-time", "5", f"http://{pods['on-c']['ip']}:8080/"
                  ).stdout.split()[0] == "on-c"


def test_pods_deleted_while_their_agent_was_dead_go_when_it_returns(lab_factory, tmp_path):
    lab = lab_factory()
    lab.up()
    manifest = tmp_path / "pinned.yaml"
    manifest.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: pinned}\nspec:\n  nodeName: node-b\n"
                        "  containers: [{name: c, command: [sleep, '600']}]\n")
    kn("apply", "-f", str(manifest), "--lab", lab.name)
    netns_name = next(p["netns"] for p in items(lab.name, "pods") if p["name"] == "pinned")
    agent = next(n["agentPid"] for n in items(lab.name, "nodes") if n["name"] == "node-b")
    os.kill(agent, signal.SIGKILL)
    kn("delete", "-f", str(manifest), "--lab", lab.name, timeout=60)
    assert os.path.exists(f"/run/netns/{netns_name}")  # nobody on node-b to remove it yet
    lab.up()  # restarts node-b's agent, which removes what is no longer wanted
    assert not os.path.exists(f"/run/netns/{netns_name}")
    assert "pinned" not in [p["name"] for p in items(lab.name, "pods")]

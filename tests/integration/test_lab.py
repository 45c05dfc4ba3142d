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
from labrun import KUBE_NETLAB, THREE_NODE, TWO_NODE, Lab, in_pod, items, kn, lab_leftovers, on_node


def name(obj: dict) -> str:
    return obj["metadata"]["name"]


def pod_ip(pod: dict) -> str | None:
    return pod["status"].get("podIP")


def node_of(pod: dict) -> str | None:
    return pod["spec"].get("nodeName")


def by_name(objs: list[dict]) -> dict[str, dict]:
    return {name(o): o for o in objs}


def lab_facts(obj: dict) -> dict:
    """What only a lab has (netns, agent pid, VTEP, peers), under status.netlab."""
    return obj["status"]["netlab"]


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
        out.setdefault(node_of(p), []).append(p)
    return out


def internal_ip(node: dict) -> str:
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


def is_ready(obj: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj["status"]["conditions"])


def test_up_reports_nodes_and_pods(two_node):
    nodes = by_name(items(two_node, "nodes"))
    assert set(nodes) == {"node-a", "node-b"}
    assert internal_ip(nodes["node-a"]) == "192.168.56.11" and internal_ip(nodes["node-b"]) == "192.168.56.12"
    assert [nodes[n]["spec"]["podCIDR"] for n in ("node-a", "node-b")] == ["10.244.1.0/24", "10.244.2.0/24"]
    assert lab_facts(nodes["node-a"])["peers"] == ["10.244.2.0/24"]
    assert lab_facts(nodes["node-b"])["peers"] == ["10.244.1.0/24"]
    for n in nodes.values():
        assert is_ready(n) and lab_facts(n)["netns"] == f"{two_node}-{name(n)}"
        mac = lab_facts(n)["vtepMAC"]
        assert int(mac.split(":")[0], 16) & 0x03 == 0x02  # locally administered unicast, like flannel's
        ann = n["metadata"]["annotations"]  # as flanneld annotates a Node
        assert json.loads(ann["flannel.alpha.coreos.com/backend-data"]) == {"VNI": 1, "VtepMAC": mac}
        assert ann["flannel.alpha.coreos.com/public-ip"] == internal_ip(n)
    pods = items(two_node, "pods", "-n", "default")  # the echo Deployment's replicas
    assert len(pods) == 4 and all(p["status"]["phase"] == "Running" and is_ready(p) for p in pods)
    assert {k: len(v) for k, v in by_node(pods).items()} == {"node-a": 2, "node-b": 2}
    for p in pods:
        assert p["metadata"]["namespace"] == "default" and p["metadata"]["labels"]["app"] == "echo"
        assert ipaddress.ip_address(pod_ip(p)) in ipaddress.ip_network(nodes[node_of(p)]["spec"]["podCIDR"])
        assert p["status"]["hostIP"] == internal_ip(nodes[node_of(p)])
        assert lab_facts(p)["netns"] == f"{two_node}-default.{name(p)}"
        assert lab_facts(p)["netns"] in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_pod_identity_hostname_resolv_conf_and_mtu(two_node):
    pod = items(two_node, "pods", "-n", "default")[0]
    assert in_pod(two_node, name(pod), "hostname").stdout.strip() == name(pod)
    assert in_pod(two_node, name(pod), "cat", "/etc/resolv.conf").stdout.split("\n")[:3] == [
        "search default.svc.cluster.local svc.cluster.local cluster.local", "nameserver 10.96.0.10",
        "options ndots:5"]
    link = json.loads(in_pod(two_node, name(pod), "ip", "-j", "link", "show", "eth0").stdout)[0]
    assert link["mtu"] == 1450
    with open(f"/run/netlab/{two_node}/nodes/{node_of(pod)}/subnet.env") as f:
        env = dict(line.strip().split("=", 1) for line in f if "=" in line)
    assert env["FLANNEL_NETWORK"] == "10.244.0.0/16" and env["FLANNEL_MTU"] == "1450"
    assert env["FLANNEL_IPMASQ"] == "true" and env["FLANNEL_SUBNET"].endswith(".1/24")


def test_pod_to_pod_on_one_node_and_across_nodes(two_node):
    pods = by_node(items(two_node, "pods", "-n", "default"))
    a1, a2 = pods["node-a"]
    b1 = pods["node-b"][0]
    for src, dst in ((a1, a2), (a1, b1), (b1, a2)):
        assert in_pod(two_node, name(src), "ping", "-c", "1", "-W", "2", pod_ip(dst)).returncode == 0
        # TCP and UDP to the echo server: it answers with its pod name and the client's address
        answer = in_pod(two_node, name(src), "curl", "-s", "--max-time", "5", f"http://{pod_ip(dst)}:8080/").stdout
        assert answer.split()[0] == name(dst) and answer.split()[1].startswith(pod_ip(src) + ":")
        udp = in_pod(two_node, name(src), sys.executable, "-c",
                     "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5);"
                     f"s.sendto(b'x',('{pod_ip(dst)}',8080));print(s.recv(200).decode())").stdout
        assert udp.split()[0] == name(dst) and udp.split()[1].startswith(pod_ip(src) + ":")


def test_df_ping_of_1422_bytes_crosses_nodes_and_1423_does_not(two_node):
    pods = by_node(items(two_node, "pods", "-n", "default"))
    src, dst = pods["node-a"][0], pods["node-b"][0]
    ok = in_pod(two_node, name(src), "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", pod_ip(dst), check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    too_big = in_pod(two_node, name(src), "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1423", pod_ip(dst),
                     check=False)
    assert too_big.returncode != 0


def test_overlay_entries_match_the_remote_node(two_node):
    nodes = by_name(items(two_node, "nodes"))
    for here, there in (("node-a", "node-b"), ("node-b", "node-a")):
        remote = nodes[there]
        subnet = ipaddress.ip_network(remote["spec"]["podCIDR"])
        vtep_ip = str(subnet.network_address)
        fdb = on_node(two_node, here, "bridge", "fdb", "show", "dev", "flannel.1").stdout
        assert f"{lab_facts(remote)['vtepMAC']} dst {internal_ip(remote)} self permanent" in fdb
        neigh = on_node(two_node, here, "ip", "neigh", "show", "dev", "flannel.1").stdout
        assert f"{vtep_ip} lladdr {lab_facts(remote)['vtepMAC']} PERMANENT" in neigh
        routes = on_node(two_node, here, "ip", "route").stdout
        assert f"{subnet} via {vtep_ip} dev flannel.1 onlink" in routes
        vx = json.loads(on_node(two_node, here, "ip", "-d", "-j", "link", "show", "flannel.1").stdout)[0]
        info = vx["linkinfo"]["info_data"]
        assert info["id"] == 1 and info["port"] == 8472 and info["local"] == internal_ip(nodes[here])
        assert not info.get("learning") and vx["mtu"] == 1450 and vx["address"] == lab_facts(nodes[here])["vtepMAC"]


def test_traffic_between_nodes_is_vxlan_on_the_underlay(two_node):
    from scapy.all import UDP, VXLAN, AsyncSniffer, IP
    pods = by_node(items(two_node, "pods", "-n", "default"))
    src, dst = pods["node-a"][0], pods["node-b"][0]
    with netns.entered(f"{two_node}-underlay"):  # scapy's socket binds to this thread's namespace
        sniffer = AsyncSniffer(iface="node-a", filter="udp port 8472", store=True)  # node-a's underlay port
        sniffer.start()
    time.sleep(0.5)
    in_pod(two_node, name(src), "ping", "-c", "3", "-i", "0.2", pod_ip(dst))
    packets = sniffer.stop()
    inner = [p for p in packets if p.haslayer(VXLAN) and p[VXLAN].haslayer(IP)]
    assert inner, f"no VXLAN packets captured ({len(packets)} UDP 8472)"
    p = inner[0]
    assert p[UDP].dport == 8472 and p[VXLAN].vni == 1
    assert {p[IP].src, p[IP].dst} == {"192.168.56.11", "192.168.56.12"}
    pairs = {(q[VXLAN][IP].src, q[VXLAN][IP].dst) for q in inner}
    assert (pod_ip(src), pod_ip(dst)) in pairs and (pod_ip(dst), pod_ip(src)) in pairs


def test_pod_reaches_the_external_host_masqueraded_as_its_node(two_node):
    pod = by_node(items(two_node, "pods", "-n", "default"))["node-a"][0]
    server = subprocess.Popen(["ip", "netns", "exec", f"{two_node}-external", sys.executable, "-m",
                               "netlab.workload.echo", "--pod", "outside", "--tcp", "9090"],
                              stderr=subprocess.PIPE, text=True)
    try:
        server.stderr.readline()  # "echo: ... listening"
        answer = in_pod(two_node, name(pod), "curl", "-s", "--max-time", "5", "http://192.168.56.254:9090/").stdout
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
    web = items(lab.name, "pods", "-n", "shop")
    assert len(web) == 2 and all(p["status"]["phase"] == "Running" for p in web)
    manifest.write_text(deployment.format(n=3))
    kn("apply", "-f", str(manifest), "--lab", lab.name)
    web3 = items(lab.name, "pods", "-n", "shop")
    assert len(web3) == 3 and set(by_name(web)) < set(by_name(web3))  # scaling keeps pods
    client = items(lab.name, "pods", "-n", "default")[0]
    for p in web3:
        answer = in_pod(lab.name, name(client), "curl", "-s", "--max-time", "5", f"http://{pod_ip(p)}:80/").stdout
        assert answer.split()[0] == name(p)
    kn("delete", "-f", str(manifest), "--lab", lab.name)
    assert items(lab.name, "pods", "-n", "shop") == []
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
    pods = by_name(items(lab.name, "pods"))
    assert pods["sleeper"]["status"]["phase"] == "Running" and node_of(pods["sleeper"]) == "node-b"
    deadline = time.time() + 10
    while pods["done"]["status"]["phase"] != "Succeeded" and time.time() < deadline:
        time.sleep(0.2)
        pods = by_name(items(lab.name, "pods"))
    done = pods["done"]["status"]
    terminated = done["containerStatuses"][0]["state"]["terminated"]
    assert done["phase"] == "Succeeded" and terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    sleeper_pid = lab_facts(pods["sleeper"])["containerPids"]["main"]
    assert "sleep 600" in subprocess.run(["ps", "-o", "args=", "-p", str(sleeper_pid)],
                                         capture_output=True, text=True).stdout


def test_removing_a_node_removes_its_overlay_entries_and_reschedules_pods(lab_factory):
    lab = lab_factory(THREE_NODE)
    lab.up()
    nodes = by_name(items(lab.name, "nodes"))
    gone = nodes["node-c"] if "node-c" in nodes else list(nodes.values())[-1]
    keep = next(n for n in nodes.values() if name(n) != name(gone))
    gone_mac, gone_cidr = lab_facts(gone)["vtepMAC"], gone["spec"]["podCIDR"]
    assert gone_mac in on_node(lab.name, name(keep), "bridge", "fdb", "show", "dev", "flannel.1").stdout
    kn("delete", "node", name(gone), "--lab", lab.name)
    assert gone_mac not in on_node(lab.name, name(keep), "bridge", "fdb", "show", "dev", "flannel.1").stdout
    assert str(ipaddress.ip_network(gone_cidr).network_address) not in on_node(
        lab.name, name(keep), "ip", "neigh", "show", "dev", "flannel.1").stdout
    assert gone_cidr not in on_node(lab.name, name(keep), "ip", "route").stdout
    assert not os.path.exists(f"/run/netns/{lab.name}-{name(gone)}")
    pods = items(lab.name, "pods")
    assert pods and all(node_of(p) != name(gone) and p["status"]["phase"] == "Running" for p in pods)
    slices = items(lab.name, "endpointslices")
    assert slices and all(e["nodeName"] != name(gone) for s in slices for e in s["endpoints"])


def test_a_killed_agent_restarted_converges_without_duplicates(lab_factory):
    lab = lab_factory()
    lab.up()
    before_nodes = by_name(items(lab.name, "nodes"))
    before_pods = by_name(items(lab.name, "pods"))
    pid = lab_facts(before_nodes["node-a"])["agentPid"]
    os.kill(pid, signal.SIGKILL)
    lab.up()  # converges: restarts the dead agent
    after_nodes = by_name(items(lab.name, "nodes"))
    after_pods = by_name(items(lab.name, "pods"))
    assert lab_facts(after_nodes["node-a"])["agentPid"] != pid
    for n in ("node-a", "node-b"):
        assert lab_facts(after_nodes[n])["vtepMAC"] == lab_facts(before_nodes[n])["vtepMAC"]
        assert after_nodes[n]["spec"]["podCIDR"] == before_nodes[n]["spec"]["podCIDR"]
    assert {k: pod_ip(v) for k, v in after_pods.items()} == {k: pod_ip(v) for k, v in before_pods.items()}
    assert all(p["status"]["phase"] == "Running" for p in after_pods.values())
    restarts = [c["restartCount"] for p in after_pods.values() for c in p["status"]["containerStatuses"]]
    assert restarts and set(restarts) == {0}
    fdb = on_node(lab.name, "node-a", "bridge", "fdb", "show", "dev", "flannel.1").stdout
    assert fdb.count(lab_facts(before_nodes["node-b"])["vtepMAC"]) == 1
    chains = on_node(lab.name, "node-a", "iptables-save", "-t", "nat").stdout
    assert chains.count("-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG") == 1
    leases = os.listdir(f"/var/lib/cni/networks/{lab.name}-node-a")
    on_a = [p for p in after_pods.values() if node_of(p) == "node-a"]  # echo replicas, and the DNS pod if it is here
    assert len([f for f in leases if f[0].isdigit()]) == len(on_a)


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
        os.kill(lab_facts(n)["agentPid"], signal.SIGKILL)
    kn("down", lab.name)
    assert lab_leftovers(lab.name) == []


def test_root_namespace_untouched_and_two_labs_side_by_side(lab_factory):
    before = leaks.snapshot()
    first, second = lab_factory(), lab_factory()
    first.up()
    second.up()
    for lab in (first, second):
        pods = by_node(items(lab.name, "pods", "-n", "default"))
        assert in_pod(lab.name, name(pods["node-a"][0]), "ping", "-c", "1", "-W", "2",
                      pod_ip(pods["node-b"][0])).returncode == 0
    kn("down", first.name)
    assert lab_leftovers(first.name) == []
    pods = by_node(items(second.name, "pods", "-n", "default"))
    assert in_pod(second.name, name(pods["node-b"][0]), "ping", "-c", "1", "-W", "2",
                  pod_ip(pods["node-a"][0])).returncode == 0
    kn("down", second.name)
    after = leaks.snapshot()
    root_keys = [k for k in before if k.startswith("root ")]
    assert {k: after[k] for k in root_keys} == {k: before[k] for k in root_keys}


def test_status_and_wide_output(two_node):
    out = kn("get", "pods", "-o", "wide", "--lab", two_node).stdout
    assert out.splitlines()[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NETNS",
                                           "HOSTNAME"]  # kubectl's, then ours; NAMESPACE only with -A
    nodes = kn("get", "nodes", "--lab", two_node).stdout
    assert "node-a" in nodes and "Ready" in nodes
    status = kn("status", "--lab", two_node).stdout
    running = len(items(two_node, "pods"))  # the echo replicas and the cluster DNS pod in kube-system
    assert f"lab {two_node}: nodes 2/2 ready, pods {running} Running" in status


def test_a_node_joins_when_up_is_rerun_with_more_nodes(lab_factory, tmp_path):
    lab = lab_factory(TWO_NODE)
    lab.up()
    lab.path = THREE_NODE  # same lab name, a file with one more node
    lab.up()
    nodes = by_name(items(lab.name, "nodes"))
    assert set(nodes) == {"node-a", "node-b", "node-c"} and all(is_ready(n) for n in nodes.values())
    c = nodes["node-c"]
    for other in ("node-a", "node-b"):
        assert c["spec"]["podCIDR"] in lab_facts(nodes[other])["peers"]
        fdb = on_node(lab.name, other, "bridge", "fdb", "show", "dev", "flannel.1").stdout
        assert f"{lab_facts(c)['vtepMAC']} dst {internal_ip(c)} self permanent" in fdb
    pinned = tmp_path / "on-c.yaml"
    pinned.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: on-c}\nspec:\n  nodeName: node-c\n"
                      "  containers: [{name: echo, ports: [{containerPort: 8080}]}]\n")
    kn("apply", "-f", str(pinned), "--lab", lab.name)
    pods = by_name(items(lab.name, "pods"))
    assert pods["client"]["metadata"]["namespace"] == "demo" and node_of(pods["client"]) == "node-a"
    assert in_pod(lab.name, "client", "curl", "-s", "--max-time", "5", f"http://{pod_ip(pods['on-c'])}:8080/"
                  ).stdout.split()[0] == "on-c"


def test_pods_deleted_while_their_agent_was_dead_go_when_it_returns(lab_factory, tmp_path):
    lab = lab_factory()
    lab.up()
    manifest = tmp_path / "pinned.yaml"
    manifest.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: pinned}\nspec:\n  nodeName: node-b\n"
                        "  containers: [{name: c, command: [sleep, '600']}]\n")
    kn("apply", "-f", str(manifest), "--lab", lab.name)
    netns_name = lab_facts(by_name(items(lab.name, "pods"))["pinned"])["netns"]
    agent = lab_facts(by_name(items(lab.name, "nodes"))["node-b"])["agentPid"]
    os.kill(agent, signal.SIGKILL)
    kn("delete", "-f", str(manifest), "--lab", lab.name, timeout=60)
    assert os.path.exists(f"/run/netns/{netns_name}")  # nobody on node-b to remove it yet
    lab.up()  # restarts node-b's agent, which removes what is no longer wanted
    assert not os.path.exists(f"/run/netns/{netns_name}")
    assert "pinned" not in by_name(items(lab.name, "pods"))

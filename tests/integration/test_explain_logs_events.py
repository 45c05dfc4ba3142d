"""explain, logs and events through the CLI on a two-node lab (iptables mode): explain's
commands print what it shows, node peers are explained by their route, neighbour and FDB
entry, logs show the echo servers', the DNS pod's and a restarted container's previous
output, and get events shows what the agents did, -w as it happens."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time

import pytest

from labrun import KUBE_NETLAB, TWO_NODE, Lab, items, kn, lab_leftovers

RESTARTING = """
apiVersion: v1
kind: Pod
metadata: {name: twice}
spec:
  nodeName: node-b
  restartPolicy: Always
  containers:
    - {name: runs, command: [sh, -c, 'echo "run $$"; exec sleep infinity']}
    - {name: idle, command: [sleep, infinity]}
"""

LATE_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: late}
spec:
  selector: {app: echo}
  ports: [{port: 81, targetPort: 8080}]
"""


@pytest.fixture(scope="module")
def lab():
    lab = Lab(TWO_NODE)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
    assert lab_leftovers(lab.name) == []


def eventually(what, fn, seconds=60.0):
    """fn() until truthy: a deadline for something the agents do, not a speed check."""
    end = time.monotonic() + seconds
    while not (value := fn()):
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.2)
    return value


def explain(lab, *args) -> dict:
    return json.loads(kn("explain", *args, "-o", "json", "--lab", lab.name).stdout)


def shell(command: str) -> list[str]:
    res = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    return res.stdout.splitlines()


def test_explain_svc_shows_kube_proxys_rules_and_the_commands_print_them(lab):
    ex = explain(lab, "svc", "echo")
    assert ex["kind"] == "Service" and ex["name"] == "default/echo"
    outputs = {s["command"]: s["output"] for s in ex["steps"]}
    lines = [line for s in ex["steps"] for line in s["output"]]
    assert any(line.startswith("-A KUBE-SERVICES -d 10.96.0.2/32") and "-j KUBE-SVC-ZJMBFACUQCTMIK2C" in line
               for line in lines)
    assert any(line.startswith("-A KUBE-SVC-ZJMBFACUQCTMIK2C ") and "-j KUBE-SEP-" in line for line in lines)
    dnat = [line for line in lines if line.startswith("-A KUBE-SEP-") and "--to-destination" in line]
    assert len(dnat) == 8   # 4 echo pods, TCP and UDP
    assert ex["steps"][0]["output"] == ["10.96.0.2"]   # the DNS, asked from a pod
    assert not [s["title"] for s in ex["steps"] if s["missing"]]
    for command, shown in outputs.items():
        assert shell(command) == shown, command
    text = kn("explain", "svc", "default/echo", "--lab", lab.name).stdout
    assert "$ ip netns exec " + f"{lab.name}-node-a iptables-save -t nat | grep -F -e '-j KUBE-SVC-" in text


@pytest.mark.parametrize("layout", ["kube-proxy", "maps"])
def test_explain_svc_in_nftables_mode_shows_the_maps_and_chains(tmp_path, layout):
    text = open(TWO_NODE).read().replace("proxyMode: iptables", f"proxyMode: nftables\n  nftables: {{layout: {layout}}}")
    path = tmp_path / "nft.yaml"
    path.write_text(text.replace("- workloads/", f"- {os.path.dirname(TWO_NODE)}/workloads/"))
    nft = Lab(str(path))
    try:
        nft.up()
        ex = explain(nft, "svc", "echo-nodeport")
        commands = [s["command"] for s in ex["steps"]]
        listed = f"ip netns exec {nft.name}-node-a nft list "
        assert f"{listed}map ip kube-proxy service-ips | grep -F -e '10.96.0.3 . tcp . 80 '" in commands
        assert f"{listed}map ip kube-proxy service-nodeports | grep -F -e 'tcp . 30080 '" in commands
        # ClientIP affinity keeps kube-proxy's chains in both layouts
        assert f"{listed}chain ip kube-proxy external-JVQ62JQQ-default/echo-nodeport/tcp/http" in commands
        assert sum("dnat to 10.244." in line for s in ex["steps"] for line in s["output"]) == 4
        assert not [s["title"] for s in ex["steps"] if s["missing"]]
        for step in ex["steps"]:
            assert shell(step["command"]) == step["output"], step["command"]
    finally:
        nft.down()
    assert lab_leftovers(nft.name) == []


def test_explain_node_shows_each_peers_route_neighbour_and_fdb_entry(lab):
    nodes = {n["metadata"]["name"]: n for n in items(lab.name, "nodes")}
    peer = nodes["node-b"]
    mac, underlay, cidr = (peer["status"]["netlab"]["vtepMAC"], peer["status"]["netlab"]["underlayIP"],
                           peer["spec"]["podCIDR"])
    ex = explain(lab, "node", "node-a")
    by_command = {s["command"]: s for s in ex["steps"]}
    netns = f"{lab.name}-node-a"
    route = by_command[f"ip netns exec {netns} ip route show {cidr}"]
    assert route["output"][0].startswith(f"{cidr} via {cidr.split('/')[0]} dev flannel.1 onlink")
    neigh = by_command[f"ip netns exec {netns} ip neigh show {cidr.split('/')[0]} dev flannel.1"]
    assert mac in neigh["output"][0] and "PERMANENT" in neigh["output"][0]
    fdb = by_command[f"ip netns exec {netns} bridge fdb show dev flannel.1 | grep -F -e {mac}"]
    assert fdb["output"] == [f"{mac} dst {underlay} self permanent"]
    assert not [s["title"] for s in ex["steps"] if s["missing"]]
    for command, step in by_command.items():
        assert shell(command) == step["output"], command


def test_explain_pod_reaches_it_from_the_other_node(lab):
    pod = next(p for p in items(lab.name, "pods", "-n", "default") if p["spec"]["nodeName"] == "node-a"
               and p["metadata"]["name"].startswith("echo-"))
    ex = explain(lab, "pod", pod["metadata"]["name"])
    ip = pod["status"]["podIP"]
    other = next(s for s in ex["steps"] if s["command"] == f"ip netns exec {lab.name}-node-b ip route get {ip}")
    assert "dev flannel.1" in other["output"][0]
    assert not [s["title"] for s in ex["steps"] if s["missing"]]


def test_logs_show_the_echo_servers_and_the_dns_pods_output(lab):
    echo = next(p["metadata"]["name"] for p in items(lab.name, "pods", "-n", "default"))
    out = kn("logs", echo, "--lab", lab.name).stdout
    assert f"echo: {echo} listening tcp=[8080] udp=[8080]" in out
    dns = next(p["metadata"]["name"] for p in items(lab.name, "pods", "-n", "kube-system"))
    assert "netlab-dns: serving cluster.local" in kn("logs", f"kube-system/{dns}", "--lab", lab.name).stdout
    missing = kn("logs", "nope", "--lab", lab.name, check=False)
    assert missing.returncode == 1 and 'pods "nope" not found' in missing.stderr


def test_logs_previous_after_a_container_restart(lab, tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(RESTARTING)
    kn("apply", "-q", "-f", str(path), "--lab", lab.name)
    several = kn("logs", "twice", "--lab", lab.name, check=False)
    assert several.returncode == 1
    assert "a container name must be specified for pod twice, choose one of: [runs idle]" in several.stderr
    first = eventually("the first run's line", lambda: kn("logs", "twice", "-c", "runs", "--lab", lab.name).stdout)
    pod = next(p for p in items(lab.name, "pods", "-n", "default") if p["metadata"]["name"] == "twice")
    pid = pod["status"]["netlab"]["containerPids"]["runs"]
    assert first == f"run {pid}\n"
    os.kill(pid, signal.SIGKILL)
    eventually("the restart", lambda: next(
        c["restartCount"] for p in items(lab.name, "pods", "-n", "default") if p["metadata"]["name"] == "twice"
        for c in p["status"]["containerStatuses"] if c["name"] == "runs") >= 1)
    assert kn("logs", "twice", "-c", "runs", "--previous", "--lab", lab.name).stdout == first
    now = eventually("the second run's line", lambda: kn("logs", "twice", "-c", "runs", "--lab", lab.name).stdout)
    assert now.startswith("run ") and now != first
    eventually("BackOff, then Started counted twice", lambda: {
        (e["reason"], e["count"]) for e in items(lab.name, "events", "-n", "default")
        if e["involvedObject"]["name"] == "twice"} >= {("BackOff", 1), ("Started", 2)})


def test_get_events_shows_what_the_agents_did(lab):
    evs = items(lab.name, "events")
    seen = {(e["reason"], e["involvedObject"]["kind"]) for e in evs}
    assert {("Created", "Pod"), ("Started", "Pod"), ("EndpointAdded", "Service"), ("RulesSynced", "Node"),
            ("LeaseAcquired", "Node"), ("PeerAdded", "Node")} <= seen
    synced = next(e for e in evs if e["reason"] == "RulesSynced")
    assert synced["source"]["component"] == "kube-proxy" and synced["source"]["host"] in ("node-a", "node-b")
    assert synced["message"].startswith("iptables full sync")
    echo_added = [e for e in evs if e["reason"] == "EndpointAdded" and e["involvedObject"]["name"] == "echo"]
    assert len(echo_added) == 4
    table = kn("get", "events", "-A", "--lab", lab.name).stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert any(" service/echo " in line and "EndpointAdded" in line for line in table)


def test_get_events_w_receives_a_new_event(lab, tmp_path):
    proc = subprocess.Popen([KUBE_NETLAB, "get", "events", "-w", "-A", "--lab", lab.name], stdout=subprocess.PIPE,
                            text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        assert "LAST SEEN" in lines.get(timeout=60)
        path = tmp_path / "late.yaml"
        path.write_text(LATE_SERVICE)
        kn("apply", "-q", "-f", str(path), "--lab", lab.name)
        line = ""
        while "service/late" not in line:
            line = lines.get(timeout=60)   # raises queue.Empty when -w printed nothing of the new Service
        assert "EndpointAdded" in line
    finally:
        proc.terminate()
        proc.wait(timeout=10)

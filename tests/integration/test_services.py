"""Services end to end through the CLI, on a two-node lab, in each proxy mode
the host kernel can run (iptables, nftables; IPVS runs in tests/kernel):
ClusterIP spread, NodePort from the external host, externalTrafficPolicy
Local, hairpin, ClientIP affinity, UDP across an endpoint replacement,
scaling, the kubernetes Service's REJECT, and the cluster DNS from a pod."""
from __future__ import annotations

import json
import os
import re
import time

import pytest

from labrun import TWO_NODE, Lab, in_pod, items, kn, lab_leftovers, on_node

EXTERNAL = "192.168.56.254"
NODE_IPS = {"node-a": "192.168.56.11", "node-b": "192.168.56.12"}

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports:
    - {name: http, port: 80, targetPort: http, protocol: TCP}
    - {name: udp, port: 80, targetPort: 8080, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: echo-np}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: echo}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: solo, labels: {app: solo}}
spec:
  nodeName: node-a
  containers: [{name: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: solo-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: solo}
  ports: [{port: 80, targetPort: 8080, nodePort: 30082}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-b
  containers: [{name: client, command: [sleep, infinity]}]
"""

UDP_APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: udp}
spec:
  replicas: 1
  selector: {matchLabels: {app: udp}}
  template:
    metadata: {labels: {app: udp, generation: "%d"}}
    spec:
      nodeName: node-a
      containers: [{name: echo, ports: [{containerPort: 9000, protocol: UDP}]}]
---
apiVersion: v1
kind: Service
metadata: {name: udp}
spec:
  selector: {app: udp}
  ports: [{port: 53, targetPort: 9000, protocol: UDP}]
"""

DNS_OBJECTS = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: echo, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: docs}
spec:
  type: ExternalName
  externalName: www.example.org
"""


def lab_file(tmp_path, mode: str) -> str:
    text = open(TWO_NODE).read().replace("proxyMode: iptables", f"proxyMode: {mode}")
    text = text.replace("    - workloads/echo-service.yaml\n", "")  # this module applies its own Services
    text = text.replace("- workloads/", f"- {os.path.dirname(TWO_NODE)}/workloads/")
    path = tmp_path / f"lab-{mode}.yaml"
    path.write_text(text)
    return str(path)


def manifest(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def lab(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    lab = Lab(lab_file(tmp, request.param))
    lab.mode, lab.tmp = request.param, tmp
    try:
        lab.up()
        kn("apply", "-q", "-f", manifest(tmp, "services.yaml", SERVICES), "--lab", lab.name)
        yield lab
    finally:
        lab.down()
    assert lab_leftovers(lab.name) == []


def svc(lab, name: str, ns: str = "default") -> dict:
    return json.loads(kn("get", "svc", name, "-n", ns, "-o", "json", "--lab", lab.name).stdout)


def echo_pods(lab) -> set[str]:
    return {p["metadata"]["name"] for p in items(lab.name, "pods") if p["metadata"]["name"].startswith("echo-")}


def answers(lab, where: list[str], url: str, n: int) -> list[str]:
    """n HTTP GETs from one place (a pod, or --external); each answer's first word (the pod name)."""
    loop = f"for i in $(seq {n}); do curl -s --max-time 2 {url}; done"
    out = kn("exec", *where, "--lab", lab.name, "--", "sh", "-c", loop, timeout=120).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_clusterip_from_the_other_node_spreads_over_every_endpoint(lab):
    ip = svc(lab, "echo")["spec"]["clusterIP"]
    seen = answers(lab, ["client"], f"http://{ip}/", 60)
    assert set(seen) == echo_pods(lab) and len(echo_pods(lab)) == 4


def test_nodeport_answers_from_the_external_host_on_every_node(lab):
    for node_ip in NODE_IPS.values():
        seen = answers(lab, ["--external"], f"http://{node_ip}:30080/", 20)
        assert len(seen) == 20 and set(seen) <= echo_pods(lab)


def test_external_traffic_policy_local_keeps_the_client_ip_and_answers_only_where_an_endpoint_runs(lab):
    out = kn("exec", "--external", "--lab", lab.name, "--", "curl", "-s", "--max-time", "2",
             f"http://{NODE_IPS['node-a']}:30082/").stdout
    pod, client = out.split()
    assert pod == "solo" and client.split(":")[0] == EXTERNAL
    other = kn("exec", "--external", "--lab", lab.name, "--", "curl", "-s", "--max-time", "2",
               f"http://{NODE_IPS['node-b']}:30082/", check=False)
    assert other.returncode != 0 and "solo" not in other.stdout


def test_a_pod_reaches_itself_through_its_own_service(lab):
    ip = svc(lab, "solo-local")["spec"]["clusterIP"]
    assert answers(lab, ["solo"], f"http://{ip}/", 3) == ["solo"] * 3


def test_client_ip_affinity_pins_a_client(lab):
    ip = svc(lab, "sticky")["spec"]["clusterIP"]
    seen = answers(lab, ["client"], f"http://{ip}/", 20)
    assert len(seen) == 20 and len(set(seen)) == 1


def test_the_kubernetes_service_has_no_endpoints_and_is_rejected(lab):
    connect = ("import socket\ns = socket.socket(); s.settimeout(5)\n"
               "try:\n    s.connect(('10.96.0.1', 443))\nexcept OSError as e:\n    print(type(e).__name__)")
    out = kn("exec", "client", "--lab", lab.name, "--", "python3", "-c", connect).stdout.strip()
    # kube-proxy's REJECT (icmp-port-unreachable): refused at once; not a timeout, and not the node's
    # "no route to host" / "network unreachable" before the proxy's rule is reached
    assert out == "ConnectionRefusedError"


UDP_CLIENT = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.3)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    s.sendto(b"x", (sys.argv[1], 53))
    try:
        print(s.recv(200).decode().split()[0], flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    time.sleep(0.2)
"""


def test_a_udp_client_keeps_working_after_its_endpoint_is_replaced(lab):
    import subprocess
    kn("apply", "-q", "-f", manifest(lab.tmp, "udp1.yaml", UDP_APP % 1), "--lab", lab.name)
    ip = svc(lab, "udp")["spec"]["clusterIP"]
    from labrun import KUBE_NETLAB
    client = subprocess.Popen([KUBE_NETLAB, "exec", "client", "--lab", lab.name, "--", "python3", "-c", UDP_CLIENT,
                               ip, "12"], stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    kn("apply", "-q", "-f", manifest(lab.tmp, "udp2.yaml", UDP_APP % 2), "--lab", lab.name)  # a new pod, a new IP
    out, _ = client.communicate(timeout=60)
    seen = [line for line in out.splitlines() if line]
    pods = [s for s in seen if s != "timeout"]
    assert pods and pods[0] != pods[-1], seen  # answered by the old pod, then by its replacement
    assert seen[-5:] == [pods[-1]] * 5, seen  # and it stays there: no stale conntrack entry


def _endpoint_count(lab, node: str) -> int:
    if lab.mode == "iptables":
        text = on_node(lab.name, node, "iptables-save", "-t", "nat").stdout
        return len(re.findall(r"^-A KUBE-SVC-\S+ .*default/echo:http -> ", text, re.M))
    text = on_node(lab.name, node, "nft", "list", "table", "ip", "kube-proxy").stdout
    return len(set(re.findall(r"chain endpoint-\w+-default/echo/tcp/http__([\d.]+)/8080", text)))


def test_scaling_changes_the_endpoints_in_every_nodes_rules(lab):
    echo = open(os.path.join(os.path.dirname(TWO_NODE), "workloads", "echo.yaml")).read()
    kn("apply", "-q", "-f", manifest(lab.tmp, "echo6.yaml", echo.replace("replicas: 4", "replicas: 6")),
       "--lab", lab.name)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_endpoint_count(lab, n) != 6 for n in NODE_IPS):
            time.sleep(0.2)
        assert [_endpoint_count(lab, n) for n in NODE_IPS] == [6, 6]
    finally:
        kn("apply", "-q", "-f", manifest(lab.tmp, "echo4.yaml", echo), "--lab", lab.name)


def test_cluster_dns_from_a_pod(lab):
    if lab.mode != "iptables":
        pytest.skip("DNS records do not depend on the proxy mode; the query path is covered by the UDP tests")
    kn("apply", "-q", "-f", manifest(lab.tmp, "dns.yaml", DNS_OBJECTS), "--lab", lab.name)
    echo_ip = svc(lab, "echo")["spec"]["clusterIP"]

    def dig(*args):
        return in_pod(lab.name, "client", "dig", "+short", *args).stdout.split()

    assert in_pod(lab.name, "client", "getent", "hosts", "echo").stdout.split()[0] == echo_ip
    assert dig("echo.default.svc.cluster.local") == [echo_ip]
    assert dig("SRV", "_http._tcp.echo.default.svc.cluster.local")[2:] == ["80", "echo.default.svc.cluster.local."]
    assert dig("-x", echo_ip) == ["echo.default.svc.cluster.local."]
    web = {p["metadata"]["name"]: p["status"]["podIP"] for p in items(lab.name, "pods")
           if p["metadata"]["name"] in ("web-0", "web-1")}
    assert sorted(dig("web.default.svc.cluster.local")) == sorted(web.values())
    assert dig("web-0.web.default.svc.cluster.local") == [web["web-0"]]
    assert dig("docs.default.svc.cluster.local")[0] == "www.example.org."
    status = in_pod(lab.name, "client", "dig", "nope.default.svc.cluster.local", check=False).stdout
    assert "status: NXDOMAIN" in status
    out = in_pod(lab.name, "client", "curl", "-s", "--max-time", "3", "http://echo/").stdout
    assert out.split()[0] in echo_pods(lab)


def test_up_with_another_proxy_mode_switches_and_removes_the_old_rules(tmp_path):
    lab = Lab(lab_file(tmp_path, "iptables"))
    try:
        lab.up()
        kn("apply", "-q", "-f", manifest(tmp_path, "services.yaml", SERVICES), "--lab", lab.name)
        assert "KUBE-SERVICES" in on_node(lab.name, "node-a", "iptables-save", "-t", "nat").stdout
        lab.path = lab_file(tmp_path, "nftables")
        lab.up()
        for node in NODE_IPS:
            assert "KUBE-" not in on_node(lab.name, node, "iptables-save").stdout
            assert "service-ips" in on_node(lab.name, node, "nft", "list", "table", "ip", "kube-proxy").stdout
        ip = svc(lab, "echo")["spec"]["clusterIP"]
        assert set(answers(lab, ["client"], f"http://{ip}/", 30)) == echo_pods(lab)
        assert [n["status"]["netlab"]["proxyMode"] for n in items(lab.name, "nodes")] == ["nftables"] * 2
    finally:
        lab.down()
    assert lab_leftovers(lab.name) == []


BAD_NODE_PORT = """
apiVersion: v1
kind: Service
metadata: {name: bad-np}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080, nodePort: 20000}]
"""

TAKEN_CLUSTER_IP = """
apiVersion: v1
kind: Service
metadata: {name: bad-ip}
spec:
  clusterIP: %s
  ports: [{port: 80}]
"""


def test_bad_service_input_names_the_field_and_changes_nothing(lab):
    before = kn("get", "svc", "-A", "-o", "json", "--lab", lab.name).stdout
    taken = svc(lab, "echo")["spec"]["clusterIP"]
    for text, words in ((BAD_NODE_PORT, ["spec.ports[0].nodePort", "30000-32767"]),
                        (TAKEN_CLUSTER_IP % taken, ["spec.clusterIP", taken, "echo"])):
        out = kn("apply", "-f", manifest(lab.tmp, "bad.yaml", text), "--lab", lab.name, check=False)
        assert out.returncode == 2 and "nothing was created or changed" in out.stderr
        assert all(w in out.stderr for w in words), out.stderr
    assert kn("get", "svc", "-A", "-o", "json", "--lab", lab.name).stdout == before


@pytest.mark.skipif(os.path.exists("/proc/net/ip_vs"), reason="this kernel has IPVS: tests/kernel covers the mode")
def test_ipvs_mode_on_a_kernel_without_ipvs_is_refused_before_anything_is_created(tmp_path):
    lab = Lab(lab_file(tmp_path, "ipvs"))
    out = lab.up(check=False)
    assert out.returncode == 1 and "spec.proxyMode" in out.stderr and "iptables or nftables" in out.stderr
    assert lab_leftovers(lab.name) == []

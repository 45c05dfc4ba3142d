"""`make demo`: bring up topologies/two-node.yaml and show pods talking across
nodes through the VXLAN overlay, then reaching a Service by name (cluster
DNS, ClusterIP, kube-proxy's rules) and a NodePort from the external host.
The lab stays up to be explored.

    sudo .venv/bin/python -m netlab.demo [LAB.yaml]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBE_NETLAB = os.path.join(os.path.dirname(sys.executable), "kube-netlab")


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def kn(*args: str, show: bool = True) -> subprocess.CompletedProcess:
    if show:
        print("$ kube-netlab " + " ".join(args), flush=True)
    proc = subprocess.run([KUBE_NETLAB, *args], text=True, stdout=subprocess.PIPE)
    if show and proc.stdout:
        print(proc.stdout.rstrip(), flush=True)
    return proc


def main() -> int:
    lab_file = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "topologies", "two-node.yaml")
    step(f"1. kube-netlab up {os.path.relpath(lab_file)}")
    up = subprocess.run([KUBE_NETLAB, "up", lab_file])
    if up.returncode != 0:
        return up.returncode
    from .model import load_lab
    name = load_lab(lab_file).name
    os.environ["NETLAB_LAB"] = name  # every command below is about this lab, whatever else runs
    pods = [{"name": p["metadata"]["name"], "node": p["spec"]["nodeName"], "ip": p["status"].get("podIP")}
            for p in json.loads(kn("get", "pods", "-o", "json", show=False).stdout)["items"]]
    first = pods[0]
    other = next((p for p in pods if p["node"] != first["node"]), None)
    if other is None:
        print("the lab has a single node: nothing crosses the overlay")
        return 0

    step(f"2. {first['name']} ({first['node']}) pings {other['name']} ({other['node']}) across nodes")
    ping = kn("exec", first["name"], "--", "ping", "-c", "3", "-i", "0.2", other["ip"])

    step("3. TCP to the echo server: it answers with its pod name and the client's address")
    curl = kn("exec", first["name"], "--", "curl", "-s", "--max-time", "5", f"http://{other['ip']}:8080/")

    step(f"4. how {first['node']} reaches {other['node']}'s pods: flannel.1 route, neighbour and FDB entry")
    kn("exec", "--node", first["node"], "--", "ip", "route", "show", "dev", "flannel.1")
    kn("exec", "--node", first["node"], "--", "ip", "neigh", "show", "dev", "flannel.1")
    kn("exec", "--node", first["node"], "--", "bridge", "fdb", "show", "dev", "flannel.1")

    step("5. the Service `echo` by name: cluster DNS, then the ClusterIP spread over every replica")
    kn("get", "services", "-A")
    kn("exec", first["name"], "--", "getent", "hosts", "echo")
    spread = kn("exec", first["name"], "--", "sh", "-c",
                "for i in 1 2 3 4 5 6 7 8; do curl -s --max-time 3 http://echo/; done")
    served = {line.split()[0] for line in spread.stdout.splitlines() if line.strip()}
    kn("exec", "--node", first["node"], "--", "sh", "-c",
       "iptables-save -t nat | grep -E 'default/echo:http' | head -8")

    step("6. the NodePort from the external host, on the other node's address")
    node_ip = json.loads(kn("get", "node", other["node"], "-o", "json", show=False).stdout)["status"]["addresses"][0]
    nodeport = kn("exec", "--external", "--", "curl", "-s", "--max-time", "5", f"http://{node_ip['address']}:30080/")

    ok = ping.returncode == 0 and curl.stdout.startswith(other["name"])
    ok_svc = len(served) > 1 and nodeport.stdout.startswith("echo-")
    print("\nRESULT: " + ("pods reach each other across nodes over VXLAN" if ok else "cross-node traffic FAILED")
          + "; " + (f"the echo Service answered from {len(served)} replicas and on its NodePort" if ok_svc
                    else "Services FAILED"))
    ok = ok and ok_svc
    kube = os.path.relpath(KUBE_NETLAB) if not os.path.relpath(KUBE_NETLAB).startswith("..") else KUBE_NETLAB
    print(f"\nThe lab stays up. Explore it:\n"
          f"  {kube} get pods -o wide\n"
          f"  {kube} exec {first['name']} -- sh -c 'ip addr; ip route'\n"
          f"  {kube} get svc,ep -o wide\n"
          f"  {kube} exec --node {first['node']} -- iptables-save -t nat\n"
          f"  ip netns exec {name}-underlay tcpdump -ni {first['node']} udp port 8472\n"
          f"Remove it with:\n  {kube} down {name}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

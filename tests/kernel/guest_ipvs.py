"""Runs INSIDE the qemu guest (tests/kernel/test_ipvs.py boots it): one node
namespace with a bridge and two pods answering with their names, a client
namespace outside the cluster, and IpvsProxier syncing a ClusterIP/NodePort
service and an affinity service. Prints what it saw as one `RESULT {json}`
line; the test on the host makes the assertions. One process on purpose:
Python starts slowly under TCG.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from cni import netns
from netlab.workload import echo
from proxy.ipvs import IpvsProxier
from proxy.types import Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName

NODE, CLIENT = "node", "client"
PODS = {"pod-a": "10.244.1.2", "pod-b": "10.244.1.3"}
GATEWAY, NODE_IP, CLIENT_IP = "10.244.1.1", "192.168.56.11", "192.168.56.100"
WEB = ServicePortName("default", "web", "http")
STICKY = ServicePortName("default", "sticky", "http")
EXTRA = ServicePortName("default", "extra", "http")
TARGET_PORT, NODE_PORT, CONNECTIONS = 8080, 30080, 12
NODE_INFO = ProxyNode("node-1", (NODE_IP,), "10.244.0.0/16")


def ip_batch(ns: str | None, commands: list[str]) -> None:
    """`ip` commands, one process per namespace (`ip -batch`)."""
    argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    subprocess.run(argv, input="\n".join(commands) + "\n", text=True, check=True)


def show(title: str, argv: list[str]) -> str:
    out = subprocess.run(["ip", "netns", "exec", NODE, *argv], capture_output=True, text=True)
    print(f"--- {title}: {' '.join(argv)}\n{out.stdout}{out.stderr}", flush=True)
    return out.stdout


def build_topology() -> None:
    ip_batch(None, [f"netns add {ns}" for ns in (NODE, CLIENT, *PODS)])
    node = ["link set lo up", "link add cni0 type bridge", f"addr add {GATEWAY}/24 dev cni0", "link set cni0 up",
            f"link add eth0 type veth peer name eth0 netns {CLIENT}",
            f"addr add {NODE_IP}/24 dev eth0", "link set eth0 up"]
    for i, pod in enumerate(PODS):
        node += [f"link add veth{i} type veth peer name eth0 netns {pod}", f"link set veth{i} master cni0 up",
                 f"link set veth{i} type bridge_slave hairpin on"]   # as the lab's CNI config (hairpinMode)
    ip_batch(NODE, node)
    for pod, ip in PODS.items():
        ip_batch(pod, ["link set lo up", f"addr add {ip}/24 dev eth0", "link set eth0 up",
                       f"route add default via {GATEWAY}"])
    ip_batch(CLIENT, ["link set lo up", f"addr add {CLIENT_IP}/24 dev eth0", "link set eth0 up",
                      f"route add 10.96.0.0/12 via {NODE_IP}"])
    with netns.entered(NODE):
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")


def start_responders() -> None:
    for pod in PODS:
        with netns.entered(pod):     # the listening socket belongs to the pod's namespace
            echo.serve(pod, [TARGET_PORT], [])


def ask(ns: str, ip: str, port: int) -> tuple[str, str]:
    """(pod name, the client address the pod saw) of one fresh TCP connection."""
    with netns.entered(ns):
        sock = socket.socket()
    with sock:
        sock.settimeout(10)      # TCG is slow; this is a hang guard, not a measure
        sock.connect((ip, port))
        sock.sendall(b"x\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    pod, seen = data.decode().split()
    return pod, seen.rsplit(":", 1)[0]


def survey(ns: str, ip: str, port: int, n: int = CONNECTIONS) -> dict:
    counts: dict[str, int] = {}
    sources = set()
    for _ in range(n):
        try:
            pod, seen = ask(ns, ip, port)
        except OSError as e:       # counted, so the test shows what failed and how often
            pod, seen = f"error: {e}", ""
        counts[pod] = counts.get(pod, 0) + 1
        sources.add(seen)
    return {"counts": counts, "sources": sorted(sources)}


def state(endpoint_pods: list[str]) -> ProxyState:
    eps = tuple(Endpoint(PODS[p], TARGET_PORT, NODE_INFO.name) for p in endpoint_pods)
    return ProxyState(
        services={WEB: ServicePort(WEB, "TCP", "10.96.0.20", 80, node_port=NODE_PORT),
                  STICKY: ServicePort(STICKY, "TCP", "10.96.0.21", 80, affinity_timeout=10800)},
        endpoints={WEB: eps, STICKY: tuple(Endpoint(PODS[p], TARGET_PORT, NODE_INFO.name) for p in PODS)})


def with_extra(base: ProxyState) -> ProxyState:
    """base plus a third Service on both pods: what a partial sync adds."""
    eps = tuple(Endpoint(PODS[p], TARGET_PORT, NODE_INFO.name) for p in PODS)
    return ProxyState({**base.services, EXTRA: ServicePort(EXTRA, "TCP", "10.96.0.22", 80)},
                      {**base.endpoints, EXTRA: eps})


def kube_rules() -> list[str]:
    """The node's KUBE-* rules as iptables-save prints them, sorted (a partial sync
    inserts new rules at the top of their chain; a full one writes them in order)."""
    saved = subprocess.run(["ip", "netns", "exec", NODE, "iptables-save"], capture_output=True, text=True).stdout
    return sorted(line for line in saved.splitlines() if line.startswith("-A") and "KUBE-" in line)


def leftovers() -> dict:
    links = subprocess.run(["ip", "-n", NODE, "-o", "link", "show"], capture_output=True, text=True).stdout
    saved = show("after cleanup", ["iptables-save"])
    table = show("after cleanup", ["ipvsadm", "-Ln"])
    return {"kube_ipvs0": "kube-ipvs0" in links,
            "virtual_servers": [line for line in table.splitlines() if line.startswith(("TCP", "UDP"))],
            "kube_rules": [line for line in saved.splitlines() if "KUBE-" in line]}


def main() -> int:
    t0 = time.monotonic()
    result: dict = {}
    build_topology()
    start_responders()
    proxier = IpvsProxier(NODE_INFO, netns=NODE)
    sync = proxier.sync(state(list(PODS)))
    result["first_sync"] = {"error": sync.error, "size": sync.size, "seconds": round(sync.seconds, 3)}
    show("after first sync", ["ipvsadm", "-Ln"])
    show("after first sync", ["ip", "-o", "addr", "show", "dev", "kube-ipvs0"])
    show("after first sync", ["iptables-save"])
    result["device_flags"] = subprocess.run(["ip", "-n", NODE, "-o", "link", "show", "kube-ipvs0"],
                                            capture_output=True, text=True).stdout
    result["sysctls"] = _sysctls()
    result["cluster_ip"] = survey(CLIENT, "10.96.0.20", 80)
    result["node_port"] = survey(CLIENT, NODE_IP, NODE_PORT, 4)
    result["affinity"] = survey(CLIENT, "10.96.0.21", 80)
    result["pod_to_cluster_ip"] = survey("pod-a", "10.96.0.20", 80)   # in-cluster, and hairpin half the time
    proxier.sync(state(list(PODS)), frozenset())
    result["same_sync_changes"] = proxier.ipvs_changes
    sync = proxier.sync(state(["pod-b"]), frozenset({WEB}))
    result["removal_sync"] = {"error": sync.error, "changes": proxier.ipvs_changes, "full": sync.full}
    show("after removing pod-a's endpoint", ["ipvsadm", "-Ln"])
    result["after_removal"] = survey(CLIENT, "10.96.0.20", 80)
    result["after_removal_node_port"] = survey(CLIENT, NODE_IP, NODE_PORT, 4)
    added = with_extra(state(["pod-b"]))
    sync = proxier.sync(added, frozenset({EXTRA}))
    result["added_sync"] = {"error": sync.error, "changes": proxier.ipvs_changes, "full": sync.full}
    result["added_service"] = survey(CLIENT, "10.96.0.22", 80)
    after_partials = kube_rules()
    sync = proxier.sync(added)          # a full sync reads the kernel back: the partial ones left nothing to do
    result["full_after_partials"] = {"error": sync.error, "changes": proxier.ipvs_changes,
                                     "same_rules": kube_rules() == after_partials}
    # someone deletes kube-ipvs0: the partial sync, trusting its memory, fails and says so;
    # the next one is full and puts the addresses back
    subprocess.run(["ip", "-n", NODE, "link", "del", "kube-ipvs0"], check=True)
    fourth = ServicePortName("default", "fourth", "http")
    grown = ProxyState({**added.services, fourth: ServicePort(fourth, "TCP", "10.96.0.23", 80)},
                       {**added.endpoints, fourth: added.endpoints[EXTRA]})
    broken = proxier.sync(grown, frozenset({fourth}))       # its address cannot go on a missing device
    repaired = proxier.sync(grown, frozenset({fourth}))
    result["interference"] = {"partial_failed": broken.error is not None and not broken.full,
                              "next_full": repaired.full, "next_error": repaired.error,
                              "after": survey(CLIENT, "10.96.0.20", 80), "fourth": survey(CLIENT, "10.96.0.23", 80)}
    # a partial sync that deletes: two Services go and pod-a leaves the last one using it,
    # so their masquerade rules and pod-a's hairpin rule are deleted (-D), nothing flushed
    shrunk = state(["pod-b"])
    shrunk = ProxyState(shrunk.services, {**shrunk.endpoints, STICKY: shrunk.endpoints[WEB]})
    sync = proxier.sync(shrunk, frozenset({EXTRA, fourth, STICKY}))
    after_deletes = kube_rules()
    full = proxier.sync(shrunk)
    result["deleting_sync"] = {"error": sync.error or full.error, "full": sync.full,
                               "hairpin_left": sum(f"{PODS['pod-a']}/32" in r for r in after_deletes),
                               "full_changes": proxier.ipvs_changes, "same_rules": kube_rules() == after_deletes}
    proxier.cleanup()
    result["leftovers"] = leftovers()
    result["guest_seconds"] = round(time.monotonic() - t0, 1)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _sysctls() -> dict:
    with netns.entered(NODE):
        return {k: open(f"/proc/sys/net/ipv4/vs/{k}").read().strip()
                for k in ("conntrack", "expire_nodest_conn", "expire_quiescent_template")}


if __name__ == "__main__":
    sys.exit(main())

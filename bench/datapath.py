#!/usr/bin/env python3
"""Service data path: new-connection latency and throughput to a ClusterIP with
10, 1000 and 10 000 Services programmed, in iptables and nftables mode, beside
the same client reaching the pod IP directly, in the same run.

Topology (plain namespaces of our own, built with `ip`): a node namespace with
`cni0` (10.244.1.1/24, ip_forward on, bridge-nf-call-iptables on as on a lab
node), a server pod (10.244.1.2) and a client pod (10.244.1.3), each a veth
into cni0 with its default route via the node. The proxier under test
programs the node namespace with N Services: N-2 synthetic ones (2 endpoints
each, never used) and two measured ones, `bench/zz-iperf` (5201 -> the
server's iperf3) and `bench/zz-latency` (80 -> the server's accept loop on
8080 and 8081), named so they sort LAST in KUBE-SERVICES (iptables' worst
case: a new connection walks every rule before its own; the bench checks the
position in `iptables-save`).

Latency: the client opens --connects fresh TCP connections one after another
(connect() until the handshake completes, then an RST close so no TIME_WAIT
piles up) and reports p50/p90/p99 in microseconds. Every connection is new,
so every SYN goes through the nat table (conntrack sends only a flow's first
packet there). Throughput: `iperf3 -c -t T -O 1`, one stream. The anchor is
the same client to 10.244.1.2 directly, measured right after, with the same
rules loaded (on a node with br_netfilter, bridged pod-to-pod packets pass the
same nat PREROUTING hook, so the iptables walk shows in the anchor too).

    sudo .venv/bin/python bench/datapath.py [--sizes 10,1000,10000]
        [--modes iptables-legacy,nftables,nftables-maps] [--connects 3000] [--time 5]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (DATE, NODE, PREFIX, guarded, loadavg, machine, need_root, parse_sizes,  # noqa: E402
                    parse_variants, percentile, plus, synthetic_state, timed, write_json)
from cni import netns  # noqa: E402
from netlab.realize.namespace import ensure_netns, run_in  # noqa: E402
from proxy.types import Endpoint, ServicePort, ServicePortName  # noqa: E402

NODE_NS, SERVER_NS, CLIENT_NS = PREFIX + "node", PREFIX + "server", PREFIX + "client"
SERVER_IP, CLIENT_IP, GATEWAY = "10.244.1.2", "10.244.1.3", "10.244.1.1"
LATENCY = ServicePort(ServicePortName("bench", "zz-latency"), "TCP", "10.96.0.100", 80)
IPERF = ServicePort(ServicePortName("bench", "zz-iperf"), "TCP", "10.96.0.101", 5201)
LATENCY_EPS = (Endpoint(SERVER_IP, 8080, NODE.name), Endpoint(SERVER_IP, 8081, NODE.name))
IPERF_EPS = (Endpoint(SERVER_IP, 5201, NODE.name),)

ACCEPT_LOOP = """
import selectors, socket
sel = selectors.DefaultSelector()
for port in (8080, 8081):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(4096); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept(); conn.close()
"""


# --- topology --------------------------------------------------------------------------------

def build_topology() -> list[subprocess.Popen]:
    """The node, server and client namespaces, the server's accept loop and iperf3 -s."""
    for ns in (NODE_NS, SERVER_NS, CLIENT_NS):
        ensure_netns(ns)
    lines = ["link add cni0 type bridge", "link set cni0 up", f"addr add {GATEWAY}/24 dev cni0"]
    for port, ns in (("vserver", SERVER_NS), ("vclient", CLIENT_NS)):
        lines += [f"link add {port} type veth peer name eth0 netns {ns}", f"link set {port} master cni0 up"]
    check(run_in(NODE_NS, ["ip", "-batch", "-"], input="\n".join(lines) + "\n"))
    for ns, ip in ((SERVER_NS, SERVER_IP), (CLIENT_NS, CLIENT_IP)):
        check(run_in(ns, ["ip", "-batch", "-"], input=f"addr add {ip}/24 dev eth0\nlink set eth0 up\n"
                                                       f"route add default via {GATEWAY}\n"))
    with netns.entered(NODE_NS):
        for key, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)
    procs = []
    with netns.entered(SERVER_NS):  # children inherit the namespace of the thread that forks them
        accept = subprocess.Popen([sys.executable, "-c", ACCEPT_LOOP], stdout=subprocess.PIPE, text=True)
        procs.append(accept)
        procs.append(subprocess.Popen(["iperf3", "-s", "-p", "5201"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    if accept.stdout.readline().strip() != "ready":
        raise RuntimeError("the accept loop in the server namespace did not start")
    return procs


def check(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(res.args[:6])}: exit {res.returncode}: {res.stderr.strip()[-1500:]}")
    return res


# --- measurements ----------------------------------------------------------------------------

def connect_latencies(ip: str, port: int, count: int) -> list[float]:
    """Microseconds per fresh TCP connect from the client pod (after 50 unmeasured ones)."""
    out = []
    linger = struct.pack("ii", 1, 0)   # close with RST: no TIME_WAIT, no port exhaustion
    with netns.entered(CLIENT_NS):
        for i in range(count + 50):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            t0 = time.perf_counter_ns()
            s.connect((ip, port))
            dt = time.perf_counter_ns() - t0
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.close()
            if i >= 50:
                out.append(dt / 1000)
    return out


def throughput(ip: str, seconds: int) -> float:
    """Gbit/s received, iperf3 one stream from the client pod."""
    res = check(run_in(CLIENT_NS, ["iperf3", "-c", ip, "-p", "5201", "-t", str(seconds), "-O", "1", "-J"]))
    return json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def position_in_kube_services(variant) -> str:
    """Where zz-latency's rule sits in nat KUBE-SERVICES (iptables modes)."""
    if variant.mode != "iptables":
        return "vmap (no walk)"
    save = check(run_in(NODE_NS, [f"iptables-{variant.option}-save", "-t", "nat"])).stdout
    rules = [line for line in save.splitlines() if line.startswith("-A KUBE-SERVICES ")]
    at = next(i for i, line in enumerate(rules) if f"{LATENCY.cluster_ip}/32" in line)
    return f"rule {at + 1} of {len(rules)}"


def measure(variant, n: int, connects: int, seconds: int) -> dict:
    state = plus(synthetic_state(n - 2), (IPERF, IPERF_EPS), (LATENCY, LATENCY_EPS))
    proxier = variant.proxier(NODE_NS)
    try:
        sync_s, result = timed(lambda: proxier.sync(state))
        if result.error:
            raise RuntimeError(f"{variant.key}: the kernel refused {n} Services: {result.error}")
        row = {"mode": variant.key, "services": n, "sync_s": sync_s, "position": position_in_kube_services(variant)}
        for side, ip, port in (("clusterip", LATENCY.cluster_ip, 80), ("pod", SERVER_IP, 8080)):
            lat = connect_latencies(ip, port, connects)
            row[side] = {p: percentile(lat, p) for p in (50, 90, 99)}
        row["clusterip"]["gbps"] = throughput(IPERF.cluster_ip, seconds)
        row["pod"]["gbps"] = throughput(SERVER_IP, seconds)
        return row
    finally:
        proxier.cleanup()
        run_in(NODE_NS, ["conntrack", "-F"], check=False)


# --- main ------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--sizes", default="10,1000,10000", help="Services programmed (default: %(default)s)")
    ap.add_argument("--modes", default="iptables-legacy,nftables,nftables-maps",
                    help="proxy variants: iptables-legacy, iptables-nft (slow to load at 10k), nftables, "
                         "nftables-maps (default: %(default)s)")
    ap.add_argument("--connects", type=int, default=3000, help="fresh connections per percentile set")
    ap.add_argument("--time", type=int, default=5, help="iperf3 seconds per run")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = ap.parse_args()
    sizes, variants = parse_sizes(args.sizes), parse_variants(args.modes)
    if min(sizes) < 3:
        raise SystemExit("--sizes: at least 3 Services (two are the measured ones)")
    need_root("bench/datapath.py")
    load0, rows = loadavg(), []

    def body():
        build_topology()
        for n in sizes:
            for variant in variants:
                rows.append(measure(variant, n, args.connects, args.time))
                r = rows[-1]
                print(f"  {variant.key:<16} {n:>6}: ClusterIP p50 {r['clusterip'][50]:.0f} us, "
                      f"pod p50 {r['pod'][50]:.0f} us, {r['clusterip']['gbps']:.1f} / {r['pod']['gbps']:.1f} Gbit/s "
                      f"(rules loaded in {r['sync_s']:.1f} s; {r['position']})", flush=True)

    if guarded(body):   # the server processes go with their namespace
        return 130

    print()
    print(f"Service data path, {DATE}, {machine()}; load average at start / end: {load0} / {loadavg()}")
    print(f"new TCP connection (connect() to established), {args.connects} per figure, microseconds; "
          f"iperf3 one stream {args.time} s, Gbit/s")
    print(f"{'mode':<16} {'services':>8} | {'ClusterIP p50':>13} {'p90':>6} {'p99':>6} {'Gbit/s':>6} | "
          f"{'pod IP p50':>10} {'p90':>6} {'p99':>6} {'Gbit/s':>6} | {'p50 x pod':>9} | position")
    for r in rows:
        c, p = r["clusterip"], r["pod"]
        print(f"{r['mode']:<16} {r['services']:>8} | {c[50]:13.0f} {c[90]:6.0f} {c[99]:6.0f} {c['gbps']:6.1f} | "
              f"{p[50]:10.0f} {p[90]:6.0f} {p[99]:6.0f} {p['gbps']:6.1f} | {c[50] / p[50]:9.2f} | {r['position']}")
    print("reference, KEP-3866 (first-packet RTT, ms, p50/p99): iptables 5k 0.049/0.156, 10k 0.061/0.262, "
          "30k 0.274/0.716; nftables flat 0.016/0.037")
    write_json(args.json, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

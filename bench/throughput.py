#!/usr/bin/env python3
"""Pod-to-pod TCP throughput (iperf3, one stream) in a two-node lab, on one node
and across nodes, beside bare kernel anchors between plain namespaces in the
same run.

Ours: `kube-netlab up` a two-node lab (node-a, node-b; underlay MTU 1500, so
pods, cni0 and flannel.1 have 1450) with three pods: `server` on node-a
running `iperf3 -s` as its container, `near` on node-a and `far` on node-b
(both `sleep infinity`). Clients run through `kube-netlab exec POD -- iperf3 -c`.

Anchors (plain namespaces, no agents, no iptables rules, built with `ip`):
  - bare bridge: two namespaces, each a veth into one bridge in a third
    namespace, MTU 1450 like the pods;
  - bare VXLAN: two namespaces, each with eth0 (MTU 1500) on an underlay bridge
    in a third namespace and a VXLAN device over it (VNI 1, UDP 8472, MTU 1450,
    nolearning, static neighbour + FDB entry like flannel's); iperf3 runs on
    the VXLAN addresses;
Two more, to tell where a gap comes from (not targets):
  - lab path by hand: the lab's own topology (underlay, two nodes with cni0
    and flannel.1, three pods on veths) built with `ip` as bench/lab.py's
    anchor does, no iptables rules: what the extra hops cost;
  - lab path by hand + rules: the same, with the iptables rules copied from
    the running lab's nodes (`iptables-save` there, `iptables-restore` here:
    flannel's FLANNEL-FWD and FLANNEL-POSTRTG, whose nat table turns on
    conntrack for every forwarded packet).

Each measurement is `iperf3 -c -t T -O 1` (the first second omitted), the
configurations interleaved round-robin, the median of --repeat runs.

    sudo .venv/bin/python bench/throughput.py [--time 5] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import lab as labbench  # noqa: E402  (anchor_plan/build_anchor: the lab's topology with bare ip)
from lab import Interrupted, _on_term, loadavg, netns_list, run  # noqa: E402

CLI = os.path.join(os.path.dirname(sys.executable), "kube-netlab")
PID = os.getpid() % 10_000_000
LAB = f"bt{PID}"              # lab names: at most 10 chars, [a-z][a-z0-9]*
ANCHOR = f"bu{PID}-"          # our plain namespaces
PORT = 20000 + PID % 10000    # distinctive, so a leftover server would be easy to find
TARGET = 0.90


# --- ours ----------------------------------------------------------------------------------

def lab_doc() -> dict:
    def pod(name, node, command):
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                "spec": {"nodeName": node, "containers": [{"name": name, "image": "networkstatic/iperf3",
                                                           "command": command}]}}
    return {"apiVersion": "netlab.dev/v1alpha1", "kind": "Lab", "metadata": {"name": "iperf"},
            "spec": {"nodes": ["node-a", "node-b"], "underlay": {"mtu": 1500}, "external": False,
                     "manifests": [pod("server", "node-a", ["iperf3", "-s", "-p", str(PORT)]),
                                   pod("near", "node-a", ["sleep", "infinity"]),
                                   pod("far", "node-b", ["sleep", "infinity"])]}}


def up_lab(tmp: str) -> dict[str, dict]:
    path = os.path.join(tmp, "iperf-lab.yaml")
    with open(path, "w") as f:
        json.dump(lab_doc(), f, indent=1)
    for attempt in range(3):
        res = subprocess.run([CLI, "up", "-q", path, "--name", LAB, "--timeout", "120"],
                             capture_output=True, text=True, timeout=180)
        if res.returncode == 0:
            break
        # the `up` race fixed in 170a436 (an agent reported exited while it exec()s), should it
        # come back: re-running `up` converges the same lab
        if "agent exited" not in res.stderr or attempt == 2:
            raise RuntimeError(f"kube-netlab up failed: {res.stderr.strip()[-1500:]}")
    pods = {p["name"]: p for p in json.loads(run([CLI, "get", "pods", "-o", "json", "--lab", LAB]).stdout)["items"]}
    for name in ("server", "near", "far"):
        if pods.get(name, {}).get("phase") != "Running" or not pods[name].get("ip"):
            raise RuntimeError(f"pod {name} is not running: {pods.get(name)}")
    return pods


def lab_client(pod: str) -> list[str]:
    return [CLI, "exec", pod, "--lab", LAB, "--"]


# --- anchors -------------------------------------------------------------------------------

def build_bridge() -> tuple[str, str, str]:
    """Two namespaces on one bridge. Returns (server ns, client ns, server IP)."""
    br, a, b = f"{ANCHOR}br", f"{ANCHOR}ba", f"{ANCHOR}bb"
    run(["ip", "-batch", "-"], input=f"netns add {br}\nnetns add {a}\nnetns add {b}\n")
    run(["ip", "-n", br, "-batch", "-"], input="\n".join([
        "link set lo up", "link add br0 type bridge", "link set br0 mtu 1450 up",
        f"link add va mtu 1450 type veth peer name eth0 netns {a}", "link set va master br0 up",
        f"link add vb mtu 1450 type veth peer name eth0 netns {b}", "link set vb master br0 up"]) + "\n")
    for ns, ip in ((a, "10.99.0.1"), (b, "10.99.0.2")):
        run(["ip", "-n", ns, "-batch", "-"], input=f"link set lo up\naddr add {ip}/24 dev eth0\nlink set eth0 up\n")
    return a, b, "10.99.0.1"


def build_vxlan() -> tuple[str, str, str]:
    """Two namespaces over VXLAN across an underlay bridge. Returns (server ns, client ns, server IP)."""
    u, v1, v2 = f"{ANCHOR}vu", f"{ANCHOR}v1", f"{ANCHOR}v2"
    run(["ip", "-batch", "-"], input=f"netns add {u}\nnetns add {v1}\nnetns add {v2}\n")
    run(["ip", "-n", u, "-batch", "-"], input="\n".join([
        "link set lo up", "link add underlay type bridge", "link set underlay mtu 1500 up",
        f"link add p1 mtu 1500 type veth peer name eth0 netns {v1}", "link set p1 master underlay up",
        f"link add p2 mtu 1500 type veth peer name eth0 netns {v2}", "link set p2 master underlay up"]) + "\n")
    macs = {1: "02:bc:00:00:00:01", 2: "02:bc:00:00:00:02"}
    for i, ns in ((1, v1), (2, v2)):
        peer = 3 - i
        run(["ip", "-n", ns, "-batch", "-"], input="\n".join([
            "link set lo up", f"addr add 192.168.57.{i}/24 dev eth0", "link set eth0 up",
            f"link add vxlan0 address {macs[i]} mtu 1450 type vxlan id 1 local 192.168.57.{i} dev eth0 "
            "dstport 8472 nolearning",
            f"addr add 10.98.0.{i}/24 dev vxlan0", "link set vxlan0 up",
            f"neigh add 10.98.0.{peer} lladdr {macs[peer]} dev vxlan0 nud permanent"]) + "\n")
        run(["bridge", "-n", ns, "fdb", "append", macs[peer], "dev", "vxlan0", "dst", f"192.168.57.{peer}"])
    return v1, v2, "10.98.0.1"


def build_same_path(tag: str) -> dict[str, str]:
    """The lab's topology by hand: 2 nodes, pods n0p0 (server), n0p1 (same node), n1p0 (other node)."""
    prefix = f"{ANCHOR}{tag}"
    all_ns, batches = labbench.anchor_plan(2, 3, prefix=prefix, per_node=[2, 1])
    labbench.build_anchor(all_ns, batches, prefix=prefix)
    return {"server": f"{prefix}n0p0", "near": f"{prefix}n0p1", "far": f"{prefix}n1p0", "ip": "10.244.1.2",
            "nodes": [f"{prefix}n0", f"{prefix}n1"]}


def copy_rules(lab_nodes: list[str], hand_nodes: list[str], pods: dict[str, dict]) -> None:
    """The lab nodes' iptables rules into the hand-built nodes (same subnets: node-a has
    10.244.1.0/24 like n0, node-b 10.244.2.0/24 like n1; checked)."""
    subnets = {p["node"]: p["ip"].rsplit(".", 1)[0] for p in pods.values()}
    for i, (src, dst) in enumerate(zip(lab_nodes, hand_nodes)):
        if subnets.get(["node-a", "node-b"][i]) != f"10.244.{i + 1}":
            raise RuntimeError(f"lab node {src} does not have 10.244.{i + 1}.0/24 ({subnets}); rules would not fit")
        rules = run(["ip", "netns", "exec", src, "iptables-save"]).stdout
        run(["ip", "netns", "exec", dst, "iptables-restore"], input=rules)


def ns_client(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def start_server(ns: str) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "iperf3", "-s", "-p", str(PORT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc


def wait_listening(server_ns: str, deadline: float = 10.0) -> None:
    """Until iperf3 -s listens in server_ns (looked at with ss, so the server sees no probe)."""
    end = time.monotonic() + deadline
    while True:
        out = run(["ip", "netns", "exec", server_ns, "ss", "-Hltn", f"sport = :{PORT}"], check=False).stdout
        if out.strip():
            return
        if time.monotonic() > end:
            raise RuntimeError(f"no iperf3 server listening on port {PORT} in {server_ns}")
        time.sleep(0.1)


# --- measuring -----------------------------------------------------------------------------

def iperf(prefix_cmd: list[str], ip: str, seconds: int) -> float:
    """Gbit/s received by the server, one TCP stream; one retry if the server was still busy."""
    argv = [*prefix_cmd, "iperf3", "-c", ip, "-p", str(PORT), "-t", str(seconds), "-O", "1", "-J",
            "--connect-timeout", "3000"]
    for attempt in range(2):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        try:
            doc = json.loads(res.stdout)
        except json.JSONDecodeError:
            doc = {"error": res.stderr.strip() or res.stdout.strip()[:300]}
        if res.returncode == 0 and "error" not in doc:
            return doc["end"]["sum_received"]["bits_per_second"] / 1e9
        if attempt == 0 and "busy" in str(doc.get("error", "")):
            time.sleep(1)
            continue
        raise RuntimeError(f"iperf3 to {ip}: {doc.get('error')}")
    raise AssertionError


# --- cleanup -------------------------------------------------------------------------------

def cleanup(servers: list[subprocess.Popen]) -> list[str]:
    """Stop our servers, remove our lab and namespaces; returns anything left behind."""
    for p in servers:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)
    if os.path.isdir(f"/run/netlab/{LAB}") or any(x.startswith(LAB + "-") for x in netns_list()):
        subprocess.run([CLI, "down", LAB], capture_output=True, timeout=120)
    ours = [x for x in netns_list() if x.startswith(ANCHOR)]
    for ns in ours:  # nothing may keep a namespace alive after its name is gone
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    if ours:
        subprocess.run(["ip", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in ours),
                       capture_output=True, text=True, timeout=60)
    left = [x for x in netns_list() if x.startswith((ANCHOR, LAB + "-"))]
    left += subprocess.run(["pgrep", "-af", f"iperf3 .*-p {PORT}"], capture_output=True, text=True).stdout.splitlines()
    return left


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--time", type=int, default=5, help="seconds per iperf3 run (plus 1 s omitted)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is shown")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/throughput.py needs root (it creates network namespaces)")
    if not shutil.which("iperf3"):
        raise SystemExit("iperf3 is not installed (apt-get install iperf3)")
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)

    load0 = loadavg()
    tmp = tempfile.mkdtemp(prefix="netlab-bench-iperf-")
    servers: list[subprocess.Popen] = []
    results: dict[str, list[float]] = {}
    print(f"lab {LAB}, anchor namespaces {ANCHOR}*, iperf3 port {PORT}; {args.repeat} x {args.time} s per "
          "configuration, interleaved", flush=True)
    try:
        pods = up_lab(tmp)
        srv_ip = pods["server"]["ip"]
        br_srv, br_cli, br_ip = build_bridge()
        vx_srv, vx_cli, vx_ip = build_vxlan()
        hand = build_same_path("h")
        ruled = build_same_path("r")
        copy_rules([f"{LAB}-node-a", f"{LAB}-node-b"], ruled["nodes"], pods)
        for ns in (br_srv, vx_srv, hand["server"], ruled["server"]):
            servers.append(start_server(ns))
        configs = {  # name -> (client command prefix, server IP)
            "ours: pod to pod, one node": (lab_client("near"), srv_ip),
            "anchor: bare bridge": (ns_client(br_cli), br_ip),
            "by hand: lab path, one node": (ns_client(hand["near"]), hand["ip"]),
            "by hand + rules: lab path, one node": (ns_client(ruled["near"]), ruled["ip"]),
            "ours: pod to pod, across nodes": (lab_client("far"), srv_ip),
            "anchor: bare VXLAN": (ns_client(vx_cli), vx_ip),
            "by hand: lab path, across nodes": (ns_client(hand["far"]), hand["ip"]),
            "by hand + rules: lab path, across nodes": (ns_client(ruled["far"]), ruled["ip"]),
        }
        for ns in (pods["server"]["netns"], br_srv, vx_srv, hand["server"], ruled["server"]):
            wait_listening(ns)
        results = {name: [] for name in configs}
        print("  Gbit/s per round, in this order: " + "; ".join(configs), flush=True)
        for r in range(args.repeat):
            for name, (cmd, ip) in configs.items():
                results[name].append(iperf(cmd, ip, args.time))
            print(f"  run {r + 1}: " + ", ".join(f"{v[-1]:.2f}" for v in results.values()) + " Gbit/s", flush=True)
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"interrupted ({str(e) or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        left = cleanup(servers)
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if left:
            print("LEFT BEHIND (remove by hand): " + "; ".join(left), file=sys.stderr)

    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print(f"iperf3 TCP, one stream, -t {args.time} -O 1, {args.repeat} rounds, Gbit/s as median (min-max); "
          "pods, cni0, flannel.1 and the anchors' devices MTU 1450, underlays 1500")
    print(f"load average at start / end: {load0} / {loadavg()}")
    print("ours/anchor: median of the per-round ratios (each round measures ours and its anchors back to back)")
    rows = [("one node", "one node", "anchor: bare bridge"), ("across nodes", "across nodes", "anchor: bare VXLAN")]

    def fig(k):
        return f"{med[k]:5.2f} ({min(results[k]):.1f}-{max(results[k]):.1f})"

    def ratio(a, b):  # median of the per-round ratios
        return statistics.median(x / y for x, y in zip(results[a], results[b]))

    verdicts = {}
    print(f"{'path':<13} {'ours':>19} | {'anchor':<12} {'':>19} | {'ours/anchor':>11} {'target':>7} "
          f"{'(of medians)':>12}")
    for label, key, a in rows:
        o = f"ours: pod to pod, {key}"
        verdicts[label] = r = ratio(o, a)
        print(f"{label:<13} {fig(o):>19} | {a.split(': ')[1]:<12} {fig(a):>19} | {r:11.0%} "
              f"{'met' if r >= TARGET else 'NOT met':>7} {med[o] / med[a]:12.0%}")
    print("where a gap comes from: the lab's path built by hand, without and with the lab's iptables rules")
    print(f"{'path':<13} {'by hand':>19} {'x anchor':>8} | {'by hand + rules':>19} {'x anchor':>8} | "
          f"{'ours/(by hand + rules)':>22}")
    for label, key, a in rows:
        o, h, hr = (f"ours: pod to pod, {key}", f"by hand: lab path, {key}", f"by hand + rules: lab path, {key}")
        print(f"{label:<13} {fig(h):>19} {ratio(h, a):8.0%} | {fig(hr):>19} {ratio(hr, a):8.0%} | "
              f"{ratio(o, hr):22.0%}")
    print(f"target: ours >= {TARGET:.0%} of the anchor")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"time": args.time, "repeat": args.repeat, "gbps": results, "ratios": verdicts,
                       "load": [load0, loadavg()]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

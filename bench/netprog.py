#!/usr/bin/env python3
"""Network programming latency: from `kube-netlab apply -f` of one Service to the
first packet to its ClusterIP answering, on a two-node lab already holding 2000
Services, for each proxy mode asked; beside the anchors measured in the same run.

Ours, through the CLI as a user runs it: `kube-netlab up` a two-node lab
(a Deployment `web` of 2 echo pods, a `client` pod on node-b), `kube-netlab
apply -f` one manifest of --services Services (all selecting `web`, each with
a given clusterIP), wait until the last of them answers; then --repeat times:
start a probe in the client pod (`kube-netlab exec client -- python3 ...`: a
fresh TCP connect to the new ClusterIP every few ms, 10 ms timeout), then
`kube-netlab apply -f` one more Service, and take the probe's first answer
(the echo server's line) on the same monotonic clock.

Anchors, same run: a `kube-netlab` process that does nothing (`--help`: the
interpreter and imports every apply pays); and the proxy backend the lab runs,
alone in a fresh namespace of our own at the same size (bench/proxy.py's
measurement: the proxier's one-Service partial sync, and its tool applying
the same text). The difference is the control plane: the CLI writing the
store, the agents' watch, the EndpointSlice, the proxy's rate limit.
kube-proxy's own figure (KEP-3453, 5000 nodes): network_programming_duration
p50 about 5 s with minSyncPeriod 1 s.

    sudo .venv/bin/python bench/netprog.py [--modes iptables,nftables] [--services 2000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATE, PID, VARIANTS, guarded, loadavg, machine, median, need_root, write_json  # noqa: E402
from lab import med_time, run, settle  # noqa: E402

# bench/proxy.py (the proxier alone: the anchor), loaded by path: `import proxy` is the project's package
_spec = importlib.util.spec_from_file_location("proxybench", os.path.join(os.path.dirname(__file__), "proxy.py"))
proxybench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(proxybench)

CLI = os.path.join(os.path.dirname(sys.executable), "kube-netlab")
LAB = f"bn{PID}"                       # lab names: at most 10 chars, [a-z][a-z0-9]*
SERVICE_BASE = ipaddress.IPv4Address("10.100.0.0")
PROBE = r"""
import socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
print("probing", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    s = socket.socket(); s.settimeout(0.01)
    try:
        s.connect((ip, port)); s.sendall(b"probe\n"); s.settimeout(2)
        line = s.recv(200).decode().strip()
        if line:
            print(f"{time.monotonic():.6f} {line}", flush=True); sys.exit(0)
    except OSError:
        time.sleep(0.002)
    finally:
        s.close()
sys.exit(1)
"""


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run([CLI, *args], timeout=timeout)


def lab_doc(mode: str, layout: str) -> dict:
    web = {"name": "web", "image": "echo", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}
    client = {"name": "client", "image": "busybox", "command": ["sleep", "infinity"]}
    return {"apiVersion": "netlab.dev/v1alpha1", "kind": "Lab", "metadata": {"name": "netprog"},
            "spec": {"nodes": ["node-a", "node-b"], "proxyMode": mode, "nftables": {"layout": layout},
                     "manifests": [
                         {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                          "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                                   "template": {"metadata": {"labels": {"app": "web"}},
                                                "spec": {"containers": [web]}}}},
                         {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
                          "spec": {"nodeName": "node-b", "containers": [client]}}]}}


def cluster_ip(i: int) -> str:
    return str(SERVICE_BASE + i)


def services_file(tmp: str, first: int, count: int) -> str:
    """One manifest (YAML documents, each written as JSON) of Services np-<i>, selecting web."""
    docs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"np-{i}"},
             "spec": {"selector": {"app": "web"}, "clusterIP": cluster_ip(i),
                      "ports": [{"port": 80, "targetPort": 8080}]}} for i in range(first, first + count)]
    path = os.path.join(tmp, f"services-{first}-{count}.yaml")
    with open(path, "w") as f:
        f.write("\n---\n".join(json.dumps(d) for d in docs) + "\n")
    return path


def start_probe(ip: str, limit: float) -> subprocess.Popen:
    """The probe loop in the client pod, started and probing when this returns."""
    probe = subprocess.Popen([CLI, "exec", "client", "--lab", LAB, "--", "python3", "-c", PROBE, ip, "80",
                              str(limit)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if probe.stdout.readline().strip() != "probing":
        probe.kill()
        raise RuntimeError(f"the probe did not start in the client pod: {probe.stderr.read().strip()[-800:]}")
    return probe


def answered_at(probe: subprocess.Popen, ip: str, limit: float) -> float:
    """The monotonic time of the probe's first answer from ip."""
    out, err = probe.communicate(timeout=limit + 30)
    if probe.returncode != 0 or not out.strip():
        raise RuntimeError(f"{ip}:80 did not answer within {limit:.0f} s: {err.strip()[-800:]}")
    return float(out.split()[0])


def measure_lab(mode: str, layout: str, n: int, repeat: int, limit: float, tmp: str) -> dict:
    path = os.path.join(tmp, f"lab-{mode}.yaml")
    with open(path, "w") as f:
        json.dump(lab_doc(mode, layout), f, indent=1)
    row = {"mode": mode if mode != "nftables" else f"nftables ({layout})", "services": n}
    try:
        t0 = time.perf_counter()
        cli("up", "-q", path, "--name", LAB, "--timeout", "300")
        row["up_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cli("apply", "-q", "--lab", LAB, "-f", services_file(tmp, 0, n))
        row["apply_bulk_s"] = time.perf_counter() - t0
        answered_at(start_probe(cluster_ip(n - 1), limit), cluster_ip(n - 1), limit)
        row["bulk_programmed_s"] = time.perf_counter() - t0
        row["apply_s"], row["answer_s"] = [], []
        for k in range(repeat):
            i = n + k
            probe = start_probe(cluster_ip(i), limit)
            t0 = time.monotonic()
            cli("apply", "-q", "--lab", LAB, "-f", services_file(tmp, i, 1))
            row["apply_s"].append(time.monotonic() - t0)
            row["answer_s"].append(answered_at(probe, cluster_ip(i), limit) - t0)
            print(f"  {row['mode']}: Service {k + 1}: apply returned {row['apply_s'][-1]:.2f} s, "
                  f"ClusterIP answered {row['answer_s'][-1]:.2f} s", flush=True)
    finally:
        subprocess.run([CLI, "down", LAB], capture_output=True, timeout=300)
        settle()
    return row


def backend_anchor(mode: str, layout: str, n: int) -> dict:
    if mode == "iptables":
        from proxy.iptables.backend import binary_backend   # the backend a lab node detects here
        key = f"iptables-{binary_backend()}"
    else:
        key = "nftables-maps" if layout == "maps" else "nftables"
    return proxybench.measure(VARIANTS[key], n, changes=3)


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--modes", default="iptables,nftables", help="lab proxyModes (default: %(default)s)")
    ap.add_argument("--nftables-layout", default="kube-proxy", choices=["kube-proxy", "maps"])
    ap.add_argument("--services", type=int, default=2000, help="Services in the lab before the measured one")
    ap.add_argument("--repeat", type=int, default=5, help="Services applied one by one; median shown")
    ap.add_argument("--limit", type=float, default=120.0, help="seconds to wait for a ClusterIP to answer")
    ap.add_argument("--json", metavar="FILE", help="also write the raw timings here")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("iptables", "nftables")]
    if bad:
        raise SystemExit(f"--modes: {', '.join(bad)} not measured here; use iptables and/or nftables "
                         "(ipvs needs a kernel with IP_VS)")
    if not 1 <= args.services <= 60_000 or args.repeat < 1:
        raise SystemExit("--services: 1-60000; --repeat: at least 1")
    need_root("bench/netprog.py")
    if not os.path.exists(CLI):
        raise SystemExit(f"{CLI} not found: run with the project's venv python (.venv/bin/python)")
    load0, rows, anchors = loadavg(), [], []
    cli_start = med_time([CLI, "--help"], 5)
    tmp = tempfile.mkdtemp(prefix="netlab-bench-netprog-")

    def body():
        for mode in modes:
            rows.append(measure_lab(mode, args.nftables_layout, args.services, args.repeat, args.limit, tmp))
            anchors.append(backend_anchor(mode, args.nftables_layout, args.services))

    try:
        if guarded(body):
            return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"Network programming latency, {DATE}, {machine()}; load average at start / end: {load0} / {loadavg()}")
    print(f"one Service applied to a two-node lab holding {args.services}; median of {args.repeat}; seconds")
    print(f"  a kube-netlab process that does nothing (`--help`): {cli_start:.2f} s")
    print(f"{'mode':<22} | {'apply returns':>13} {'ClusterIP answers':>17} {'(min-max)':>12} | "
          f"{'proxier change':>14} {'tool change':>11} {'(backend)':>16} | {'bulk apply':>10} {'programmed':>10}")
    for r, a in zip(rows, anchors):
        ans = r["answer_s"]
        print(f"{r['mode']:<22} | {median(r['apply_s']):13.2f} {median(ans):17.2f} "
              f"{f'{min(ans):.2f}-{max(ans):.2f}':>12} | {median(a['ours_change']):14.3f} "
              f"{median(a['tool_change']):11.3f} {a['mode']:>16} | {r['apply_bulk_s']:10.1f} {r['bulk_programmed_s']:10.1f}")
    print("reference: kube-proxy, KEP-3453 (5000 nodes): network_programming_duration p50 ~5 s with minSyncPeriod 1 s")
    write_json(args.json, cli_start=cli_start, rows=rows, anchors=anchors)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""How long `kube-netlab trace` takes on a two-node lab, beside what it cannot
avoid paying, measured in the same run (interleaved).

Ours: `kube-netlab trace SRC DST -o json` as a user runs it (a fresh process:
interpreter, CLI, scapy's layers, the probe, every hop's capture, NAT
attribution), for pod -> pod across nodes, pod -> ClusterIP and external ->
NodePort; and the same traces from a warm process (netlab.debug.trace.trace()
called again: what a long-running tool or a test pays). The issue's bar: under
2 s on a two-node lab.

Anchors, same run: `kube-netlab --help` (the interpreter and the CLI's
imports every command pays); `import scapy.all` in a fresh interpreter (what
importing all of scapy would cost; we import three layer modules); one ping
from pod to pod through `ip netns exec` (a process that sends one packet and
gets its answer).

    sudo .venv/bin/python bench/trace.py [--repeat 7] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATE, PID, guarded, loadavg, machine, median, need_root, percentile, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CLI = os.path.join(os.path.dirname(sys.executable), "kube-netlab")
LAB = f"btr{PID}"
TWO_NODE = os.path.join(ROOT, "topologies", "two-node.yaml")


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


def timed(argv: list[str], check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    res = run(argv, check)
    return time.perf_counter() - t0, res


def cases() -> dict[str, tuple[str, str]]:
    pods = json.loads(run([CLI, "get", "pods", "-n", "default", "-o", "json", "--lab", LAB]).stdout)["items"]
    by_node = {}
    for p in pods:
        by_node.setdefault(p["spec"]["nodeName"], p)
    a, b = by_node["node-a"], by_node["node-b"]
    return {"pod -> pod (VXLAN)": (a["metadata"]["name"], b["metadata"]["name"]),
            "pod -> ClusterIP": (a["metadata"]["name"], "svc/echo"),
            "external -> NodePort": ("external", "node/node-a:30080")}


def body(args) -> None:
    from netlab.debug import trace as tracemod
    print(f"# bench/trace.py — {DATE}, {machine()}, load {loadavg()}")
    run([CLI, "up", "-q", TWO_NODE, "--name", LAB])
    try:
        chosen = cases()
        a_netns = f"{LAB}-default.{chosen['pod -> pod (VXLAN)'][0]}"
        b_ip = json.loads(run([CLI, "get", "pods", chosen["pod -> pod (VXLAN)"][1], "-o", "json",
                               "--lab", LAB]).stdout)["status"]["podIP"]
        tracemod.trace(LAB, *chosen["pod -> ClusterIP"])   # warm: imports and the first lab read
        rows: dict[str, list[float]] = {}
        inner: dict[str, list[float]] = {}
        for _ in range(args.repeat):   # interleaved: load changes hit every row alike
            for label, (src, dst) in chosen.items():
                took, res = timed([CLI, "trace", src, dst, "-o", "json", "--lab", LAB])
                result = json.loads(res.stdout)
                assert result["verdict"] == "delivered", result
                rows.setdefault(f"CLI: {label}", []).append(took)
                inner.setdefault(f"CLI: {label}", []).append(result["seconds"])
                t0 = time.perf_counter()
                tracemod.trace(LAB, src, dst)
                rows.setdefault(f"warm process: {label}", []).append(time.perf_counter() - t0)
            rows.setdefault("anchor: kube-netlab --help", []).append(timed([CLI, "--help"])[0])
            rows.setdefault("anchor: python -c 'import scapy.all'", []).append(
                timed([sys.executable, "-c", "import scapy.all"])[0])
            rows.setdefault("anchor: ip netns exec POD ping -c 1", []).append(
                timed(["ip", "netns", "exec", a_netns, "ping", "-c", "1", "-W", "1", b_ip])[0])
    finally:
        run([CLI, "down", LAB], check=False)
    print(f"\n{'what':<46} {'median s':>9} {'p90 s':>7} {'in trace() s':>13}")
    for label, values in rows.items():
        within = f"{median(inner[label]):>13.3f}" if label in inner else ""
        print(f"{label:<46} {median(values):>9.3f} {percentile(values, 90):>7.3f} {within}")
    print(f"\n{args.repeat} runs each; load after: {loadavg()}")
    write_json(args.json, bench="trace", repeat=args.repeat, seconds=rows, in_trace=inner)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--json", help="write the raw figures here")
    args = p.parse_args()
    need_root("bench/trace.py")
    return guarded(lambda: body(args))


if __name__ == "__main__":
    sys.exit(main())

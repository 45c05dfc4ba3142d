#!/usr/bin/env python3
"""CNI ADD/DEL latency: netlab-bridge + netlab-ipam beside the reference
bridge + host-local (Debian's containernetworking-plugins), same config, same run.

Every plugin is exec'd from a process already inside the node namespace (no
`ip netns exec` in the timing), against fresh pod namespaces. Ours is timed
three ways: exec'd with the node's warm daemon listening (how a lab node runs
it), exec'd cold (no daemon: interpreter + pyroute2 import on every call), and
in-process (what the lab engine calls).

    sudo .venv/bin/python bench/cni.py [--pods 30]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from cni import netns  # noqa: E402
from cni.main import bridge  # noqa: E402

REFERENCE_DIR = "/usr/lib/cni"
VENV_BIN = os.path.dirname(sys.executable)
PREFIX = f"nlb{os.getpid() % 10000}"


def conf_for(kind: str, ip_masq: bool, data_dir: str, name: str) -> dict:
    """The flannel-shaped bridge config (isDefaultGateway, hairpinMode), with or without ipMasq."""
    return {"cniVersion": "1.0.0", "name": name, "type": "bridge" if kind == "reference" else "netlab-bridge",
            "bridge": "cni0", "isGateway": True, "isDefaultGateway": True, "hairpinMode": True,
            "ipMasq": ip_masq,
            "ipam": {"type": "host-local" if kind == "reference" else "netlab-ipam", "dataDir": data_dir,
                     "ranges": [[{"subnet": "10.250.0.0/24"}]]}}


def exec_once(exe: str, command: str, conf: dict, cid: str, pod: str, env_extra: dict) -> float:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0",
           "CNI_PATH": f"{VENV_BIN}:{REFERENCE_DIR}", **env_extra}
    data = json.dumps(conf).encode()
    t0 = time.perf_counter()
    proc = subprocess.run([exe], input=data, env=env, capture_output=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{exe} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def run_exec(exe: str, conf: dict, pods: list[str], env_extra: dict) -> tuple[list[float], list[float]]:
    adds = [exec_once(exe, "ADD", conf, pod, pod, env_extra) for pod in pods]
    dels = [exec_once(exe, "DEL", conf, pod, pod, env_extra) for pod in pods]
    return adds, dels


def run_in_process(conf: dict, pods: list[str]) -> tuple[list[float], list[float]]:
    adds, dels = [], []
    for pod in pods:
        t0 = time.perf_counter()
        bridge.add(conf, pod, f"/run/netns/{pod}")
        adds.append(time.perf_counter() - t0)
    for pod in pods:
        t0 = time.perf_counter()
        bridge.delete(conf, pod, f"/run/netns/{pod}")
        dels.append(time.perf_counter() - t0)
    return adds, dels


def start_daemon(sockdir: str) -> subprocess.Popen:
    proc = subprocess.Popen([os.path.join(VENV_BIN, "netlab-bridge"), "serve", "--socket-dir", sockdir],
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while not (os.path.isdir(sockdir) and os.listdir(sockdir)):
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit("netlab-bridge serve did not start")
        time.sleep(0.02)
    return proc


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=30, help="ADDs (then DELs) per measurement")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/cni.py needs root (it creates network namespaces)")
    node = f"{PREFIX}node"
    pods = [f"{PREFIX}pod{i}" for i in range(args.pods)]
    tmp = tempfile.mkdtemp(prefix="netlab-bench-")
    created = []
    daemon = None
    rows = []
    try:
        for ns in [node, *pods]:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            created.append(ns)
        with netns.entered(node):  # every plugin below runs with the node as its host namespace
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            daemon = start_daemon(os.path.join(tmp, "sock"))
            for ip_masq in (False, True):
                label = f"ipMasq {'on' if ip_masq else 'off'}"
                ref_conf = conf_for("reference", ip_masq, tmp, f"{PREFIX}ref")
                our_conf = conf_for("ours", ip_masq, tmp, f"{PREFIX}our")
                ref = run_exec(os.path.join(REFERENCE_DIR, "bridge"), ref_conf, pods, {})
                warm = run_exec(os.path.join(VENV_BIN, "netlab-bridge"), our_conf, pods,
                                {"NETLAB_CNI_SOCKET_DIR": os.path.join(tmp, "sock")})
                cold = run_exec(os.path.join(VENV_BIN, "netlab-bridge"), our_conf, pods[:10],
                                {"NETLAB_CNI_SOCKET_DIR": "/nonexistent"})
                inproc = run_in_process(our_conf, pods)
                rows.append((label, ref, warm, cold, inproc))
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait()
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"CNI ADD/DEL, median of {args.pods} (cold: 10) calls, ms; 'x ref' = ours / reference exec'd ADD")
    print(f"{'config':<12} {'what':<34} {'ADD':>8} {'DEL':>8} {'x ref':>7}")
    for label, ref, warm, cold, inproc in rows:
        base = ms(ref[0])
        for what, (a, d) in (("reference bridge+host-local, exec'd", ref),
                             ("netlab-bridge exec'd, warm daemon", warm),
                             ("netlab-bridge exec'd, cold", cold),
                             ("netlab-bridge in-process", inproc)):
            print(f"{label:<12} {what:<34} {ms(a):8.2f} {ms(d):8.2f} {ms(a) / base:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

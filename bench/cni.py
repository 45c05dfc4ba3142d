#!/usr/bin/env python3
"""CNI ADD/DEL latency: netlab-bridge + netlab-ipam beside the reference
bridge + host-local (Debian's containernetworking-plugins), same config, same run.

What a runtime pays (the rows that count against the 1.5x target): a node
namespace made with `ip netns add`, cni0 already up with its gateway address
(as a lab node has it), `netlab-bridge serve` started in it as its own
process (default socket directory), and ours installed the way a node
installs it (`netlab-bridge install-cni DIR`, DIR first in CNI_PATH). A
separate small "runtime" process sitting in the node namespace then does for
every call what containerd's libcni does: make the pod namespace (untimed),
find the plugin through CNI_PATH, fork+exec it with the runtime's own
environment plus CNI_*, the config on stdin, read stdout; DEL, then delete
the namespace (untimed). Each call is a fresh process.

The plugins take turns in short runs (--run consecutive calls of one, then
the next; which goes first rotates): a node runs one plugin, so a counted
call follows one of its own kind (the first call of a run follows another
plugin's and is not counted), while load from the rest of the machine, which
drifts over seconds, falls on all of them. A round's ratio is the ratio of
its medians; the figure is the median over --rounds rounds, with their range.

Other rows, same run: ours through the venv's console script (pip's
launcher, `site` on), ours exec'd cold (no daemon: the interpreter and
`import pyroute2` on every call; its own round, taking turns with the
reference the same way) and in-process (`cni.main.bridge.add` from this
process in the node namespace: what the lab engine calls).

    sudo .venv/bin/python bench/cni.py [--pods 30] [--rounds 5] [--run 4]
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
from cni import client, netns  # noqa: E402
from cni.main import bridge  # noqa: E402

REFERENCE_DIR = "/usr/lib/cni"
VENV_BIN = os.path.dirname(sys.executable)
PREFIX = f"nlb{os.getpid() % 10000}"
SUBNET, GATEWAY = "10.250.0.0/24", "10.250.0.1"
# One bridge and one subnet, split so every plugin's leases fit side by side, as on a node running them all.
RANGES = {"reference": ("10.250.0.2", "10.250.0.80"), "ours": ("10.250.0.81", "10.250.0.160"),
          "venv": ("10.250.0.161", "10.250.0.250")}


def conf_for(kind: str, ip_masq: bool, data_dir: str) -> dict:
    """The flannel-shaped bridge config (isDefaultGateway, hairpinMode), with or without ipMasq."""
    start, end = RANGES[kind]
    return {"cniVersion": "1.0.0", "name": f"{PREFIX}{kind[:3]}",
            "type": "bridge" if kind == "reference" else "netlab-bridge",
            "bridge": "cni0", "isGateway": True, "isDefaultGateway": True, "hairpinMode": True,
            "ipMasq": ip_masq,
            "ipam": {"type": "host-local" if kind == "reference" else "netlab-ipam", "dataDir": data_dir,
                     "ranges": [[{"subnet": SUBNET, "rangeStart": start, "rangeEnd": end}]]}}


def runtime_jobs(ip_masq: bool, data_dir: str, cni_bin: str) -> dict:
    """kind -> (config, CNI_PATH the runtime has): ours as `netlab-bridge install-cni` puts it in a CNI
    bin directory (-I -S launcher), and as the venv's console script (pip's launcher: site on)."""
    return {"reference": (conf_for("reference", ip_masq, data_dir), f"{cni_bin}:{REFERENCE_DIR}"),
            "ours": (conf_for("ours", ip_masq, data_dir), f"{cni_bin}:{REFERENCE_DIR}"),
            "venv": (conf_for("venv", ip_masq, data_dir), f"{VENV_BIN}:{REFERENCE_DIR}")}


# --- the runtime: a separate process in the node namespace, standard library only --------------

def find_plugin(plugin_type: str, cni_path: str) -> str:
    """As libcni's FindInPath: the first executable of that name in CNI_PATH."""
    for d in cni_path.split(":"):
        exe = os.path.join(d, plugin_type)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    raise SystemExit(f"plugin {plugin_type!r} is not in CNI_PATH {cni_path}")


def exec_plugin(conf: dict, cni_path: str, command: str, container_id: str, netns_path: str) -> float:
    """One call as libcni makes it: the runtime's environment plus CNI_*, config on stdin, stdout read."""
    exe = find_plugin(conf["type"], cni_path)
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_NETNS=netns_path,
               CNI_IFNAME="eth0", CNI_PATH=cni_path)
    data = json.dumps(conf).encode()
    t0 = time.perf_counter()
    proc = subprocess.run([exe], input=data, env=env, capture_output=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{exe} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def runtime_main(job: dict) -> None:
    """Runs of `run` consecutive calls of one plugin, the kinds taking turns run by run (which one
    goes first rotates); ADD for every pod, then DEL. A node runs one plugin, so a call follows one
    of its own kind: the first call of a run follows another plugin's (and pays what that one left
    behind: caches, deferred kernel work) and is not counted. Prints the times as JSON."""
    kinds, pods, run = job["kinds"], job["pods"], job["run"]
    names = list(kinds)
    times = {kind: {"ADD": [], "DEL": []} for kind in kinds}
    for command in ("ADD", "DEL"):
        for r, first in enumerate(range(0, len(pods), run)):
            for kind in names[r % len(names):] + names[:r % len(names)]:
                conf, cni_path = kinds[kind]
                for j, pod in enumerate(pods[first:first + run]):
                    name = f"{pod}{kind[:1]}"
                    if command == "ADD":
                        subprocess.run(["ip", "netns", "add", name], check=True)
                    elapsed = exec_plugin(conf, cni_path, command, name, f"/run/netns/{name}")
                    if j > 0 or run == 1:
                        times[kind][command].append(elapsed)
                    if command == "DEL":
                        subprocess.run(["ip", "netns", "del", name], check=True)
    json.dump(times, sys.stdout)


def run_as_runtime(kinds: dict, pods: list[str], run: int) -> dict:
    """Start the runtime process from this thread (so in the node namespace) and collect its times."""
    job = json.dumps({"kinds": kinds, "pods": pods, "run": run})
    proc = subprocess.run([sys.executable, "-I", os.path.abspath(__file__), "--runtime", job],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"runtime process failed: {proc.stdout} {proc.stderr}")
    return json.loads(proc.stdout)


# --- this process: namespaces, daemon, rounds, the table ---------------------------------------

def run_in_process(conf: dict, pods: list[str]) -> dict:
    times = {"ADD": [], "DEL": []}
    for pod in pods:
        subprocess.run(["ip", "netns", "add", pod], check=True)
        t0 = time.perf_counter()
        bridge.add(conf, pod, f"/run/netns/{pod}")
        times["ADD"].append(time.perf_counter() - t0)
    for pod in pods:
        t0 = time.perf_counter()
        bridge.delete(conf, pod, f"/run/netns/{pod}")
        times["DEL"].append(time.perf_counter() - t0)
        subprocess.run(["ip", "netns", "del", pod], check=True)
    return times


def start_daemon() -> subprocess.Popen:
    """`netlab-bridge serve` as a node runs it: its own process, the default socket directory."""
    proc = subprocess.Popen([os.path.join(VENV_BIN, "netlab-bridge"), "serve"], stderr=subprocess.DEVNULL)
    path = client.socket_path()
    deadline = time.time() + 30
    while not os.path.exists(path):
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit("netlab-bridge serve did not start")
        time.sleep(0.02)
    return proc


def stop(daemon: subprocess.Popen | None) -> None:
    if daemon is not None and daemon.poll() is None:
        daemon.terminate()
        daemon.wait()


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def cleanup_namespaces(prefix: str) -> None:
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=30, help="ADDs (then DELs) per plugin and round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per config (warm daemon)")
    ap.add_argument("--cold-pods", type=int, default=12, help="ADDs per plugin for the cold rows")
    ap.add_argument("--run", type=int, default=4, help="consecutive calls of one plugin before the next takes its turn")
    ap.add_argument("--runtime", help=argparse.SUPPRESS)  # internal: run as the runtime process
    args = ap.parse_args()
    if args.runtime:
        runtime_main(json.loads(args.runtime))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("bench/cni.py needs root (it creates network namespaces)")
    node = f"{PREFIX}node"
    tmp = tempfile.mkdtemp(prefix="netlab-bench-")
    cni_bin = client.install_cni(os.path.join(tmp, "bin"))  # as a node's install step puts it in /opt/cni/bin
    daemon = None
    results = []  # (label, {row: [times of each round]})
    try:
        subprocess.run(["ip", "netns", "add", node], check=True)
        with netns.entered(node):  # every plugin below runs with the node as its host namespace
            for cmd in (["ip", "link", "set", "lo", "up"],
                        ["ip", "link", "add", "cni0", "type", "bridge"],
                        ["ip", "addr", "add", f"{GATEWAY}/24", "dev", "cni0"],
                        ["ip", "link", "set", "cni0", "up"]):
                subprocess.run(cmd, check=True)
            for ip_masq in (False, True):
                kinds = runtime_jobs(ip_masq, tmp, os.path.dirname(cni_bin))
                rows = {row: [] for row in ("reference", "ours", "venv", "cold reference", "cold", "in-process")}
                daemon = start_daemon()
                for r in range(args.rounds):
                    times = run_as_runtime(kinds, [f"{PREFIX}r{r}p{i}" for i in range(args.pods)], args.run)
                    for kind in kinds:
                        rows[kind].append(times[kind])
                stop(daemon)
                daemon = None
                cold_kinds = {k: kinds[k] for k in ("reference", "ours")}
                times = run_as_runtime(cold_kinds, [f"{PREFIX}cp{i}" for i in range(args.cold_pods)], args.run)
                rows["cold reference"].append(times["reference"])
                rows["cold"].append(times["ours"])
                rows["in-process"].append(run_in_process(kinds["ours"][0], [f"{PREFIX}ip{i}" for i in range(args.pods)]))
                results.append((f"ipMasq {'on' if ip_masq else 'off'}", rows))
    finally:
        stop(daemon)
        cleanup_namespaces(PREFIX)
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, args)
    return 0


ROWS = (("reference", "reference bridge+host-local, exec'd"),
        ("ours", "netlab-bridge exec'd, warm daemon"),
        ("venv", "  the same through the venv's script"),
        ("cold", "netlab-bridge exec'd, cold"),
        ("in-process", "netlab-bridge in-process"))


def report(results: list, args: argparse.Namespace) -> None:
    print(f"CNI ADD/DEL, ms: median of the counted calls of {args.pods} a round (cold: {args.cold_pods}), "
          f"the median of {args.rounds} rounds (their range)")
    print(f"exec'd: by a runtime process in the node namespace, the plugins taking turns in runs of {args.run};")
    print("x ref = ours / reference ADD, round by round (cold: its own alternating round; in-process: "
          "the reference's median)")
    print(f"{'config':<12} {'what':<37} {'ADD':>22} {'DEL':>22} {'x ref ADD':>18}")
    for label, rows in results:
        def per_round(row, cmd):
            return [ms(t[cmd]) for t in rows[row]]
        ref_add = per_round("reference", "ADD")
        ratios = {row: [o / r for o, r in zip(per_round(row, "ADD"), ref_add)] for row in ("ours", "venv")}
        ratios["cold"] = [c / r for c, r in zip(per_round("cold", "ADD"), per_round("cold reference", "ADD"))]
        ratios["in-process"] = [ms(rows["in-process"][0]["ADD"]) / statistics.median(ref_add)]
        for row, what in ROWS:
            ratio = spread(ratios[row]) if row in ratios else "1.00"
            print(f"{label:<12} {what:<37} {spread(per_round(row, 'ADD')):>22} "
                  f"{spread(per_round(row, 'DEL')):>22} {ratio:>18}")


def spread(values: list[float]) -> str:
    """median, and the range over the rounds when there is more than one."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    sys.exit(main())

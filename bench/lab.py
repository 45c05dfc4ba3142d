#!/usr/bin/env python3
"""Lab up/down time: `kube-netlab up` (until ready) and `kube-netlab down` for
N nodes x M pods, beside the same kernel objects built and removed with bare
`ip` in the same run.

SIZE is NxM: N nodes and M pods IN TOTAL (a Deployment of M replicas spread
over the N nodes), so 10x100 is 10 nodes with 10 pods each, not 1000 pods.

Ours is the CLI as a user runs it: `kube-netlab up -q LAB.yaml --name LAB`
(interpreter start, validation, underlay and node namespaces, one agent per
node leasing its /24 and creating cni0 + flannel.1, CNI ADD for every pod,
a pause process and the workload per pod, until every node is ready and every
pod Running), then `kube-netlab down LAB`.

The anchor is the floor of the kernel work: the same namespaces (underlay,
external, N nodes, M pods), the same veth pairs (one per node and the external
host on the underlay bridge, one per pod into its node's cni0), the same
bridges, flannel.1 with its N*(N-1) neighbour/FDB/route entries, and the pods'
addresses and default routes, built with `ip -batch` (one `ip` process per
namespace) and removed with one `ip -batch` of `netns del`; no agents, no
processes in the pods. Mininet (Linux bridge, no controller) is quoted from
shared/DESIGN.md, not re-measured.

Both sides return before the kernel has freed the deleted namespaces (that
runs in a kernel workqueue); between measurements the bench waits until the
kernel's count of network namespaces stops falling, so one measurement's
cleanup does not slow the next.

    sudo .venv/bin/python bench/lab.py [--sizes 2x4,5x20,10x100] [--repeat 3] [--workload echo|sleep]
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

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CLI = os.path.join(os.path.dirname(sys.executable), "kube-netlab")
PID = os.getpid() % 10_000_000
LAB = f"bl{PID}"            # our lab (lab names: at most 10 chars, [a-z][a-z0-9]*)
ANCHOR = f"bk{PID}-"        # our plain namespaces
sys.path.insert(0, REPO)
from cni import netns  # noqa: E402  (setns for the current thread, as bench/cni.py uses it)

MININET = "Mininet 2.3 (DESIGN.md, not re-measured): 100 hosts 2.0 s up / 2.6 s down, 300 hosts 5.9 / 7.8 s"
TARGET = (10, 100, 30.0, 15.0)  # nodes, pods, up s, down s


class Interrupted(Exception):
    pass


def _on_term(signum, frame):
    raise Interrupted(f"signal {signum}")


# --- helpers -------------------------------------------------------------------------------

def run(argv: list[str], *, input: str | None = None, timeout: float = 60, check: bool = True):
    res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:8])}...: exit {res.returncode}: "
                           f"{(res.stderr.strip() or res.stdout.strip())[-2000:]}")
    return res


def netns_list() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def kernel_netns_count() -> int | None:
    """Network namespaces the kernel still holds (slab objects), freed ones included."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("net_namespace "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def settle(since: float | None = None, limit: float = 20.0, quiet: float = 0.5) -> float | None:
    """Wait until the kernel has finished freeing namespaces: its count of them has not
    fallen for `quiet` seconds. Returns seconds from `since` to the last fall (None without
    /proc/slabinfo). Other users' namespaces on the machine add noise to this figure."""
    start = time.perf_counter() if since is None else since
    last = kernel_netns_count()
    if last is None:
        time.sleep(1.0)
        return None
    last_fall = time.perf_counter()
    deadline = last_fall + limit
    while time.perf_counter() < deadline and time.perf_counter() - last_fall < quiet:
        time.sleep(0.02)
        now = kernel_netns_count()
        if now < last:
            last_fall = time.perf_counter()
        last = now
    return last_fall - start


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def med_time(argv: list[str], times: int) -> float:
    out = []
    for _ in range(times):
        t0 = time.perf_counter()
        run(argv)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def parse_size(text: str) -> tuple[int, int]:
    try:
        n, m = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use NxM, N nodes and M pods in total, e.g. 10x100")
    if not 1 <= n <= 200 or not 0 <= m <= 253 * n:
        raise argparse.ArgumentTypeError(f"{text!r}: 1-200 nodes, at most 253 pods per node")
    return n, m


def spread(n: int, m: int) -> list[int]:
    """Pods per node as the scheduler places a Deployment (least-loaded, ties to the first)."""
    return [m // n + (1 if i < m % n else 0) for i in range(n)]


# --- ours: the CLI -------------------------------------------------------------------------

def lab_file(tmp: str, n: int, m: int, workload: str) -> str:
    container = {"name": "app", "image": "busybox"}
    if workload == "echo":
        container["ports"] = [{"containerPort": 8080, "protocol": "TCP"}]
    else:
        container["command"] = ["sleep", "infinity"]
    lab = {"apiVersion": "netlab.dev/v1alpha1", "kind": "Lab", "metadata": {"name": "benchlab"},
           "spec": {"nodes": n, "manifests": []}}
    if m:
        lab["spec"]["manifests"].append({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
            "spec": {"replicas": m, "selector": {"matchLabels": {"app": "bench"}},
                     "template": {"metadata": {"labels": {"app": "bench"}}, "spec": {"containers": [container]}}}})
    path = os.path.join(tmp, f"lab-{n}x{m}-{workload}.yaml")
    with open(path, "w") as f:
        json.dump(lab, f, indent=1)  # JSON is YAML
    return path


FLAKES: list[str] = []


def ours_once(path: str, n: int, m: int, timeout: float) -> tuple[float, float, float | None]:
    """(up, down, down until the kernel freed the namespaces), seconds."""
    for attempt in range(3):
        t0 = time.perf_counter()
        res = subprocess.run([CLI, "up", "-q", path, "--name", LAB, "--timeout", str(timeout)],
                             capture_output=True, text=True, timeout=timeout + 60)
        up = time.perf_counter() - t0
        if res.returncode == 0:
            break
        # A race fixed in 170a436: `up` read an agent's /proc/PID/cmdline while nsenter exec()ed
        # the interpreter, found it empty and reported "agent exited" although the agent ran.
        # Should it come back, such a run is discarded and repeated, and the count is printed.
        if "agent exited" not in res.stderr or attempt == 2:
            raise RuntimeError(f"kube-netlab up failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        FLAKES.append(f"{n}x{m}: {res.stderr.strip().splitlines()[-1][:160]}")
        run([CLI, "down", LAB], timeout=120)
        settle()
    pods = json.loads(run([CLI, "get", "pods", "-o", "json", "--lab", LAB]).stdout)["items"]
    running = [p for p in pods if p["phase"] == "Running" and p["ip"]]
    if len(running) != m:
        raise RuntimeError(f"after up: {len(running)}/{m} pods running")
    t0 = time.perf_counter()
    run([CLI, "down", LAB], timeout=120)
    down = time.perf_counter() - t0
    freed = settle(since=t0)
    left = [x for x in netns_list() if x.startswith(LAB + "-")]
    if left:
        raise RuntimeError(f"after down: {len(left)} namespaces left, e.g. {left[0]}")
    return up, down, freed


# --- anchor: bare ip -----------------------------------------------------------------------

def write_sysctl(ns: str, key: str, value: str) -> None:
    """Like `ip netns exec NS sysctl -w KEY=VALUE`, without the process: /proc/sys/net is
    resolved against the opening thread's namespace."""
    with netns.entered(ns):
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)


def anchor_plan(n: int, m: int, prefix: str = ANCHOR, per_node: list[int] | None = None
                ) -> tuple[list[str], dict[str, list[str]]]:
    """The namespaces, and per namespace the `ip -batch` lines that build the lab's objects
    (in build order: the underlay creates the nodes' eth0, a node its pods' eth0).
    Names: <prefix>u (underlay), <prefix>x (external), <prefix>n<i> (node i, pods 10.244.<i+1>.0/24),
    <prefix>n<i>p<j> (pod j on node i, 10.244.<i+1>.<j+2>)."""
    under, ext = f"{prefix}u", f"{prefix}x"
    nodes = [f"{prefix}n{i}" for i in range(n)]
    per_node = per_node or spread(n, m)
    pods = [[f"{prefix}n{i}p{j}" for j in range(per_node[i])] for i in range(n)]
    all_ns = [under, ext, *nodes, *[p for ps in pods for p in ps]]
    mtu, omtu = 1500, 1450
    batches: dict[str, list[str]] = {under: ["link set lo up", "link add underlay type bridge",
                                             f"link set underlay mtu {mtu} up"]}
    for port, ns in [(f"n{i}", nodes[i]) for i in range(n)] + [("external", ext)]:
        batches[under] += [f"link add {port} mtu {mtu} type veth peer name eth0 netns {ns}",
                           f"link set {port} master underlay up"]
    batches[ext] = ["link set lo up", "addr add 192.168.56.254/24 dev eth0", "link set eth0 up"]
    macs = [f"02:bb:00:00:{i >> 8:02x}:{i & 0xff:02x}" for i in range(n)]
    for i, node in enumerate(nodes):
        k = i + 1
        lines = ["link set lo up", f"addr add 192.168.56.{11 + i}/24 dev eth0", "link set eth0 up",
                 "link add cni0 type bridge", f"link set cni0 mtu {omtu} up",
                 f"addr add 10.244.{k}.1/24 dev cni0",
                 f"link add flannel.1 address {macs[i]} mtu {omtu} type vxlan id 1 local 192.168.56.{11 + i} "
                 "dev eth0 dstport 8472 nolearning",
                 f"addr add 10.244.{k}.0/32 dev flannel.1", "link set flannel.1 up"]
        for r in range(n):
            if r != i:
                lines += [f"neigh add 10.244.{r + 1}.0 lladdr {macs[r]} dev flannel.1 nud permanent",
                          f"bridge fdb append {macs[r]} dev flannel.1 dst 192.168.56.{11 + r}",
                          f"route add 10.244.{r + 1}.0/24 via 10.244.{r + 1}.0 dev flannel.1 onlink"]
        for j, pod in enumerate(pods[i]):
            lines += [f"link add v{j} mtu {omtu} type veth peer name eth0 netns {pod}",
                      f"link set v{j} master cni0 up"]
            batches[pod] = ["link set lo up", f"addr add 10.244.{k}.{j + 2}/24 dev eth0", "link set eth0 up",
                            f"route add default via 10.244.{k}.1"]
        batches[node] = lines
    order = [under, ext, *nodes, *[p for ps in pods for p in ps]]
    return all_ns, {ns: batches[ns] for ns in order}


def build_anchor(all_ns: list[str], batches: dict[str, list[str]], prefix: str = ANCHOR) -> None:
    run(["ip", "-batch", "-"], input="".join(f"netns add {ns}\n" for ns in all_ns))
    for ns, lines in batches.items():
        run(["ip", "-n", ns, "-batch", "-"], input="".join(f"{x}\n" for x in lines if not x.startswith("bridge ")))
        fdb = [x[len("bridge "):] for x in lines if x.startswith("bridge ")]
        if fdb:
            run(["bridge", "-n", ns, "-batch", "-"], input="".join(f"{x}\n" for x in fdb))
        if ns.startswith(f"{prefix}n") and "p" not in ns[len(prefix):]:
            write_sysctl(ns, "net.ipv4.ip_forward", "1")  # nodes route between cni0 and flannel.1


def anchor_once(n: int, m: int) -> tuple[float, float, float | None]:
    """(up, down, down until the kernel freed the namespaces), seconds."""
    all_ns, batches = anchor_plan(n, m)
    t0 = time.perf_counter()
    try:
        build_anchor(all_ns, batches)
        up = time.perf_counter() - t0
        # check it is real: a pod on the last node reaches the first node's first pod over the VXLAN
        if n > 1 and spread(n, m)[-1] and spread(n, m)[0]:
            run(["ip", "netns", "exec", f"{ANCHOR}n{n - 1}p0", "ping", "-c1", "-W2", "10.244.1.2"], timeout=10)
    finally:
        t0 = time.perf_counter()
        ours = [x for x in netns_list() if x.startswith(ANCHOR)]
        if ours:
            run(["ip", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in ours), check=False)
        down = time.perf_counter() - t0
    return up, down, settle(since=t0)


# --- cleanup -------------------------------------------------------------------------------

def cleanup() -> None:
    """Whatever this process created: its lab, its plain namespaces. Never anyone else's."""
    if os.path.isdir(f"/run/netlab/{LAB}") or any(x.startswith(LAB + "-") for x in netns_list()):
        subprocess.run([CLI, "down", LAB], capture_output=True, timeout=120)
    ours = [x for x in netns_list() if x.startswith(ANCHOR)]
    if ours:
        subprocess.run(["ip", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in ours),
                       capture_output=True, text=True, timeout=120)


# --- main ----------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                 epilog="NxM = N nodes and M pods IN TOTAL (10x100: 10 nodes, 100 pods).")
    ap.add_argument("--sizes", default="2x4,5x20,10x100",
                    help="comma-separated NxM: N nodes, M pods in total (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size and side; the median is shown")
    ap.add_argument("--workload", choices=["echo", "sleep"], default="echo",
                    help="what each pod runs: the built-in echo server (default) or `sleep infinity`")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for one `up`")
    ap.add_argument("--json", metavar="FILE", help="also write the raw timings here")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if os.geteuid() != 0:
        raise SystemExit("bench/lab.py needs root (it creates network namespaces)")
    if not os.path.exists(CLI):
        raise SystemExit(f"{CLI} not found: run with the project's venv python (.venv/bin/python)")

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    load0 = loadavg()
    cli_start = med_time([CLI, "--help"], 5)
    tmp = tempfile.mkdtemp(prefix="netlab-bench-lab-")
    results = []
    print(f"lab {LAB}, anchor namespaces {ANCHOR}*; sizes are N nodes x M pods IN TOTAL; "
          f"workload {args.workload}; median of {args.repeat}", flush=True)
    try:
        for n, m in sizes:
            path = lab_file(tmp, n, m, args.workload)
            ours, anchor = [], []
            for r in range(args.repeat):  # interleaved, so drift in machine load hits both sides
                settle()
                ours.append(ours_once(path, n, m, args.timeout))
                settle()
                anchor.append(anchor_once(n, m))
                print(f"  {n}x{m} run {r + 1}: ours up {ours[-1][0]:.2f} s down {ours[-1][1]:.2f} s; "
                      f"anchor up {anchor[-1][0]:.2f} s down {anchor[-1][1]:.2f} s", flush=True)
            results.append({"nodes": n, "pods": m, "ours": ours, "anchor": anchor})
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"interrupted ({str(e) or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    med = statistics.median

    def col(runs, i):
        vals = [x[i] for x in runs if x[i] is not None]
        return med(vals) if vals else float("nan")

    print()
    print(f"kube-netlab up/down, N nodes x M pods (M = pods IN TOTAL, spread over the nodes); median of "
          f"{args.repeat}; seconds; pods run: {args.workload}")
    print("  up: until ready (every node Ready, every pod Running); down: until the command returns; "
          "freed: until the kernel stopped freeing namespaces")
    print(f"  load average at start / end: {load0} / {loadavg()}")
    print(f"  one kube-netlab process that does nothing (`kube-netlab --help`): {cli_start:.2f} s, included in ours")
    print(f"{'NxM':>7} {'nodes':>5} {'pods':>5} | {'ours up':>7} {'down':>5} {'freed':>5} | "
          f"{'anchor up':>9} {'down':>5} {'freed':>5} | {'up x anchor':>11} | {'ms/pod up: ours':>15} {'anchor':>6}")
    for r in results:
        n, m = r["nodes"], r["pods"]
        ou, od, of = (col(r["ours"], i) for i in range(3))
        au, ad, af = (col(r["anchor"], i) for i in range(3))
        per = (lambda v: f"{1000 * v / m:.1f}") if m else (lambda v: "-")
        print(f"{f'{n}x{m}':>7} {n:>5} {m:>5} | {ou:7.2f} {od:5.2f} {of:5.2f} | {au:9.2f} {ad:5.2f} {af:5.2f} | "
              f"{ou / au:11.1f} | {per(ou):>15} {per(au):>6}")
        if (n, m) == TARGET[:2]:
            verdict = "met" if ou <= TARGET[2] and od <= TARGET[3] else "NOT met"
            print(f"{'':>7} target, {n} nodes x {m} pods in total: up <= {TARGET[2]:.0f} s and down <= "
                  f"{TARGET[3]:.0f} s: {verdict} (up {ou:.2f} s, down {od:.2f} s)")
    print(f"reference: {MININET}")
    if FLAKES:
        print(f"discarded and repeated: {len(FLAKES)} `up` runs that reported a live agent as exited "
              "(the empty /proc/PID/cmdline race fixed in 170a436 is back?)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workload": args.workload, "repeat": args.repeat, "cli_start": cli_start, "load": [load0, loadavg()],
                       "columns": ["up", "down", "freed"], "results": results, "discarded": FLAKES}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

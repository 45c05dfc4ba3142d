#!/usr/bin/env python3
"""Lab up/down time and memory: ours per pod beside Mininet's per host (same run),
and `kube-netlab up` / `delete -f` / `down` for N nodes x M pods beside the same
kernel objects built and removed with bare `ip`.

Per pod (--deploy M, default 200), as the issue's outside check measured it: on a
two-node lab already up, `kube-netlab apply -f deploy.yaml` of a Deployment of M
replicas (each pod runs the built-in echo server) until it returns (apply waits
until every pod is Running), then `kube-netlab delete -f deploy.yaml` until it
returns (the agents removed every pod); per pod = time / M. Beside it, in the same
run and interleaved, Mininet 2.3 (LinuxBridge switch, no controller, one switch,
M hosts): build+start ("up") and net.stop() ("delete"), per host = time / M.
Mininet runs only inside a throwaway network namespace bm<pid>
(bench/mininet_run.py under the system python3): it puts its switch where it
runs and its cleanup deletes by name pattern, so never on the host.

Memory: the RSS of every process whose network namespace is one of the lab's
(agents, pause and container processes, the external host's, the cluster DNS,
any per-node helper), summed, and the PSS summed (/proc/PID/smaps_rollup: the
fair figure when processes share pages); per pod = sum / M. Mininet's: its host
shells, per host.

SIZE is NxM: N nodes and M pods IN TOTAL (a Deployment of M replicas spread over
the N nodes), so 10x100 is 10 nodes with 10 pods each. Per size: `kube-netlab up
-q LAB.yaml` of a lab file holding the Deployment (until every node is Ready and
every pod Running), `kube-netlab delete -f` of the Deployment, `kube-netlab down`
of the then empty lab. The anchor is the floor of the kernel work: the same
namespaces (underlay, external, N nodes, M pods), veth pairs, bridges, flannel.1
with its N*(N-1) neighbour/FDB/route entries, and the pods' addresses and default
routes, built with `ip -batch` and removed with one `ip -batch` of `netns del`; no
processes. Targets (issue 10): 10x1000 up <= 30 s, deleted <= 15 s; per pod up
and delete each <= Mininet's per host; 1x253 (a full /24).

Both sides return before the kernel has freed the deleted namespaces (a kernel
workqueue); between measurements the bench waits until the kernel's count of
network namespaces stops falling, so one measurement's cleanup does not slow the next.

    sudo .venv/bin/python bench/lab.py [--deploy 200] [--sizes 2x4,5x20,10x100,10x1000,1x253]
        [--repeat 3] [--mininet | --no-mininet] [--workload echo|sleep]
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CLI = os.path.join(os.path.dirname(sys.executable), "kube-netlab")
PID = os.getpid() % 10_000_000
LAB = f"bl{PID}"            # our lab (lab names: at most 10 chars, [a-z][a-z0-9]*)
ANCHOR = f"bk{PID}-"        # our plain namespaces
MININET_NS = f"bm{PID}"     # the throwaway namespace Mininet runs in
MININET_MARK = f"NETLAB_BENCH_MININET={PID}"  # in the environment of every process of our Mininet runs
MININET_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mininet_run.py")
MININET_PYTHON = "/usr/bin/python3"   # Debian's mininet package is for the system python
MININET_PACKAGES = ["mininet", "bridge-utils"]   # never openvswitch: LinuxBridge needs only brctl
sys.path.insert(0, REPO)
from cni import netns  # noqa: E402  (setns for the current thread, as bench/cni.py uses it)
from netlab.model.names import belongs_to  # noqa: E402
from netlab.realize.namespace import pids_by_netns, process_alive  # noqa: E402

TARGET = (10, 1000, 30.0, 15.0)  # nodes, pods in total, up s, deleted s (issue 10)
FULL_NODE = (1, 253)             # one node with a full /24
DEPLOY_NODES = 2                 # the per-pod measurement's lab: two-node.yaml's shape


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


# --- memory --------------------------------------------------------------------------------

def kb_field(text: str, name: str) -> int | None:
    """The kB value of a `Name:   123 kB` line of /proc/PID/status or smaps_rollup."""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == name:
            parts = rest.split()
            return int(parts[0]) if parts else None
    return None


def process_kind(argv: list[str]) -> str:
    """A short name for what a process is, for the memory breakdown: an interpreter is named
    by its module or script (`python -m netlab.agent` -> netlab.agent, `.../netlab-dns serve`
    -> netlab-dns serve), anything else by its program."""
    if len(argv) == 1 and " " in argv[0]:
        argv = argv[0].split()   # a title the process set itself (setproctitle-style: one string)
    if not argv:
        return "?"
    prog = os.path.basename(argv[0])
    if prog.startswith("python") and len(argv) > 1:
        if argv[1] == "-m" and len(argv) > 2:
            return argv[2]
        if not argv[1].startswith("-"):
            sub = argv[2] if len(argv) > 2 and not argv[2].startswith("-") else ""
            return f"{os.path.basename(argv[1])} {sub}".strip()
    return prog


@dataclass
class Memory:
    """Summed over processes: RSS and PSS in kB, and per kind [processes, RSS kB, PSS kB]."""

    processes: int = 0
    rss_kb: int = 0
    pss_kb: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)

    def add(self, kind: str, rss_kb: int, pss_kb: int) -> None:
        self.processes += 1
        self.rss_kb += rss_kb
        self.pss_kb += pss_kb
        row = self.by_kind.setdefault(kind, [0, 0, 0])
        row[0] += 1
        row[1] += rss_kb
        row[2] += pss_kb

    def per(self, count: int) -> tuple[float, float]:
        """(RSS, PSS) in MiB per pod or host."""
        return self.rss_kb / 1024 / count, self.pss_kb / 1024 / count

    def minus(self, base: "Memory") -> "Memory":
        """What this has on top of base (the empty lab), by kind too."""
        out = Memory(self.processes - base.processes, self.rss_kb - base.rss_kb, self.pss_kb - base.pss_kb)
        for kind, row in self.by_kind.items():
            b = base.by_kind.get(kind, [0, 0, 0])
            out.by_kind[kind] = [row[i] - b[i] for i in range(3)]
        return out

    def top(self, k: int = 6) -> str:
        rows = sorted(self.by_kind.items(), key=lambda kv: -kv[1][1])[:k]
        return ", ".join(f"{kind} x{n} {rss / 1024:.0f}/{pss / 1024:.0f}" for kind, (n, rss, pss) in rows)


def read_memory(pids: list[int]) -> Memory:
    """RSS (/proc/PID/status VmRSS) and PSS (/proc/PID/smaps_rollup) of these processes, summed;
    a process that exited meanwhile counts nothing."""
    mem = Memory()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = kb_field(f.read(), "VmRSS")
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss = kb_field(f.read(), "Pss")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if rss is None or pss is None:  # a zombie, or a kernel thread: no memory of its own
            continue
        mem.add(process_kind(argv), rss, pss)
    return mem


def lab_pids(lab: str) -> list[int]:
    """Every process whose network namespace is one of the lab's (whatever it is)."""
    by_ns = pids_by_netns([x for x in netns_list() if belongs_to(lab, x)])
    return sorted({p for pids in by_ns.values() for p in pids if p != os.getpid()})


def mem_total_kb() -> int:
    with open("/proc/meminfo") as f:
        return kb_field(f.read(), "MemTotal") or 0


# --- ours: the CLI -------------------------------------------------------------------------

def deployment(m: int, workload: str) -> dict:
    """Deployment default/bench of m replicas running the echo server (or `sleep infinity`)."""
    container = {"name": "app", "image": "busybox"}
    if workload == "echo":
        container["ports"] = [{"containerPort": 8080, "protocol": "TCP"}]
    else:
        container["command"] = ["sleep", "infinity"]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
            "spec": {"replicas": m, "selector": {"matchLabels": {"app": "bench"}},
                     "template": {"metadata": {"labels": {"app": "bench"}}, "spec": {"containers": [container]}}}}


def write_json_file(tmp: str, name: str, doc: dict) -> str:
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)  # JSON is YAML
    return path


def lab_file(tmp: str, n: int, m: int, workload: str, dns_pods: int | None = None) -> str:
    """A lab of n nodes holding the Deployment; defaults otherwise (external host, the cluster
    DNS's pods) unless dns_pods says how many cluster DNS pods to run."""
    lab = {"apiVersion": "netlab.dev/v1alpha1", "kind": "Lab", "metadata": {"name": "benchlab"},
           "spec": {"nodes": n, "manifests": [deployment(m, workload)] if m else []}}
    if dns_pods is not None:
        lab["spec"]["dns"] = {"replicas": dns_pods}
    return write_json_file(tmp, f"lab-{n}x{m}-{workload}-dns{dns_pods}.yaml", lab)


def deploy_file(tmp: str, m: int, workload: str) -> str:
    return write_json_file(tmp, f"deploy-{m}-{workload}.yaml", deployment(m, workload))


def bench_pods() -> list[dict]:
    pods = json.loads(run([CLI, "get", "pods", "-o", "json", "--lab", LAB]).stdout)["items"]
    return [p for p in pods if p["metadata"].get("labels", {}).get("app") == "bench"]


def check_running(m: int, when: str) -> None:
    pods = bench_pods()
    running = [p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")]
    if len(running) != m or len(pods) != m:
        raise RuntimeError(f"after {when}: {len(running)} of {m} pods running ({len(pods)} exist)")


def timed_cli(argv: list[str], timeout: float) -> float:
    t0 = time.perf_counter()
    run([CLI, *argv], timeout=timeout + 60)
    return time.perf_counter() - t0


def watched_cli(argv: list[str], timeout: float, prefix: str) -> tuple[float, float | None, float | None]:
    """timed_cli, while a thread notes (every 20 ms) when namespaces named prefix* appear or go:
    where the time goes, seen from outside. Returns (seconds until the command returned, first
    change, last change), from its start."""
    before = {x for x in netns_list() if x.startswith(prefix)}
    changes: list[float] = []
    done = threading.Event()
    t0 = time.perf_counter()

    def watch() -> None:
        seen = before
        while not done.is_set():
            now = {x for x in netns_list() if x.startswith(prefix)}
            if now != seen:
                changes.append(time.perf_counter() - t0)
                seen = now
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        seconds = timed_cli(argv, timeout)
    finally:
        done.set()
        watcher.join()
    return seconds, (changes[0] if changes else None), (changes[-1] if changes else None)


FLAKES: list[str] = []


def lab_up(path: str, label: str, timeout: float) -> float:
    """`kube-netlab up` of the lab file until ready; seconds."""
    for attempt in range(3):
        t0 = time.perf_counter()
        res = subprocess.run([CLI, "up", "-q", path, "--name", LAB, "--timeout", str(timeout)],
                             capture_output=True, text=True, timeout=timeout + 60)
        up = time.perf_counter() - t0
        if res.returncode == 0:
            return up
        # A race fixed in 170a436: `up` read an agent's /proc/PID/cmdline while nsenter exec()ed
        # the interpreter, found it empty and reported "agent exited" although the agent ran.
        # Should it come back, such a run is discarded and repeated, and the count is printed.
        if "agent exited" not in res.stderr or attempt == 2:
            raise RuntimeError(f"kube-netlab up failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        FLAKES.append(f"{label}: {res.stderr.strip().splitlines()[-1][:160]}")
        run([CLI, "down", LAB], timeout=120)
        settle()
    raise AssertionError("unreachable")


def lab_down() -> tuple[float, float | None]:
    """`kube-netlab down` (seconds), and until the kernel freed the namespaces; checks nothing is left."""
    t0 = time.perf_counter()
    run([CLI, "down", LAB], timeout=180)
    down = time.perf_counter() - t0
    freed = settle(since=t0)
    left = [x for x in netns_list() if belongs_to(LAB, x)]
    if left:
        raise RuntimeError(f"after down: {len(left)} namespaces left, e.g. {left[0]}")
    return down, freed


def ours_once(path: str, deploy: str, n: int, m: int, timeout: float) -> dict:
    """One size: up with the Deployment, its memory, `delete -f` of it, `down` of the empty lab."""
    up = lab_up(path, f"{n}x{m}", timeout)
    check_running(m, "up")
    mem = read_memory(lab_pids(LAB))
    delete = timed_cli(["delete", "-q", "-f", deploy, "--lab", LAB, "--timeout", str(timeout)], timeout) if m else 0.0
    if m and bench_pods():
        raise RuntimeError(f"after delete -f: {len(bench_pods())} pods left")
    down, freed = lab_down()
    return {"up": up, "delete": delete, "down": down, "freed": freed, "memory": mem}


def deploy_once(deploy: str, m: int, timeout: float) -> dict:
    """On the lab already up: `apply -f` of the Deployment until it returns (every pod Running),
    the lab's memory, `delete -f` until it returns (every pod gone)."""
    prefix = f"{LAB}-default.bench-"   # the pods' namespaces (<lab>-<namespace>.<pod>)
    apply, apply_first, apply_last = watched_cli(
        ["apply", "-q", "-f", deploy, "--lab", LAB, "--timeout", str(timeout)], timeout, prefix)
    check_running(m, "apply -f")
    mem = read_memory(lab_pids(LAB))
    delete, delete_first, delete_last = watched_cli(
        ["delete", "-q", "-f", deploy, "--lab", LAB, "--timeout", str(timeout)], timeout, prefix)
    left = bench_pods()
    if left:
        raise RuntimeError(f"after delete -f: {len(left)} pods left")
    return {"up": apply, "delete": delete, "memory": mem,
            "up_first": apply_first, "up_last": apply_last, "delete_first": delete_first, "delete_last": delete_last}


# --- Mininet, in a throwaway namespace -----------------------------------------------------

def mininet_installed() -> bool:
    probe = subprocess.run([MININET_PYTHON, "-c", "import mininet.net, mininet.nodelib"], capture_output=True)
    return probe.returncode == 0 and shutil.which("mnexec") is not None and shutil.which("brctl") is not None


def install_mininet() -> None:
    print(f"installing {' '.join(MININET_PACKAGES)} (apt-get, no recommends)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    res = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *MININET_PACKAGES],
                         capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0 or not mininet_installed():
        raise SystemExit(f"could not install Mininet: {(res.stderr or res.stdout).strip()[-1500:]}\n"
                         "run with --no-mininet to measure ours alone")


def mininet_pids() -> list[int]:
    """Processes of our Mininet runs, found by the mark in their environment (the driver,
    the switch's shell and every host's shell inherit it)."""
    mark = MININET_MARK.encode() + b"\0"
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mark in f.read():
                        out.append(int(entry))
            except OSError:
                continue
    return [p for p in out if process_alive(p)]


LEFTOVERS: list[str] = []


def remove_mininet() -> list[int]:
    """Kill what is left of our Mininet runs and delete their namespace; returns the pids it found."""
    left = mininet_pids()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if MININET_NS in netns_list():
        subprocess.run(["ip", "netns", "del", MININET_NS], capture_output=True, timeout=60)
    return left


def read_json_line(proc: subprocess.Popen, stderr, timeout: float, what: str) -> dict:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        proc.wait()
        stderr.seek(0)
        raise RuntimeError(f"Mininet ({what}): no answer within {timeout:.0f} s (exit {proc.returncode}): "
                           f"{stderr.read().strip()[-1500:]}")
    return json.loads(line)


def mininet_once(hosts: int, timeout: float) -> dict:
    """Mininet up and stop of `hosts` hosts in namespace bm<pid>; the hosts' memory while up;
    then checks nothing of it is left (no process, no namespace)."""
    run(["ip", "netns", "add", MININET_NS])
    proc = None
    stderr = tempfile.TemporaryFile(mode="w+")
    try:
        env = dict(os.environ, **dict([MININET_MARK.split("=", 1)]))
        # `ip netns exec` (not nsenter): its private mount namespace also gives Mininet its own /sys
        proc = subprocess.Popen(["ip", "netns", "exec", MININET_NS, MININET_PYTHON, MININET_RUN, "--hosts", str(hosts)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env=env, start_new_session=True)
        started = read_json_line(proc, stderr, timeout, "up")
        host_mem = read_memory(started["hosts"])
        all_mem = read_memory(mininet_pids())
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        stopped = read_json_line(proc, stderr, timeout, "stop")
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5   # Mininet's stop SIGHUPs the host shells and does not wait
        while time.monotonic() < deadline and mininet_pids():
            time.sleep(0.05)
        return {"up": started["up"], "delete": stopped["delete"], "memory": host_mem, "all": all_mem}
    finally:
        stderr.close()
        if proc is not None and proc.poll() is None:
            proc.terminate()   # mininet_run.py stops its network on SIGTERM
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        left = remove_mininet()
        if left:
            LEFTOVERS.append(f"Mininet left {len(left)} processes (killed): pids {left[:8]}")
        if MININET_NS in netns_list():
            LEFTOVERS.append(f"namespace {MININET_NS} could not be deleted")


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
    """Whatever this process created: its lab, its plain namespaces, its Mininet namespace and
    processes. Never anyone else's."""
    if os.path.isdir(f"/run/netlab/{LAB}") or any(belongs_to(LAB, x) for x in netns_list()):
        subprocess.run([CLI, "down", LAB], capture_output=True, timeout=180)
    ours = [x for x in netns_list() if x.startswith(ANCHOR)]
    if ours:
        subprocess.run(["ip", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in ours),
                       capture_output=True, text=True, timeout=120)
    remove_mininet()


# --- measurements --------------------------------------------------------------------------

def measure_deploy(tmp: str, m: int, repeat: int, workload: str, timeout: float, with_mininet: bool) -> dict:
    """Per pod: apply/delete -f of M replicas on a two-node lab, interleaved with Mininet's M hosts."""
    settle()
    lab_up_s = lab_up(lab_file(tmp, DEPLOY_NODES, 0, workload), "deploy lab", timeout)
    base = read_memory(lab_pids(LAB))
    deploy = deploy_file(tmp, m, workload)
    ours, mininet = [], []
    for r in range(repeat):  # interleaved, so drift in machine load hits both sides
        settle()
        ours.append(deploy_once(deploy, m, timeout))
        line = f"  deploy {m} run {r + 1}: ours apply {ours[-1]['up']:.2f} s delete {ours[-1]['delete']:.2f} s"
        if with_mininet:
            settle()
            mininet.append(mininet_once(m, timeout))
            line += f"; Mininet up {mininet[-1]['up']:.2f} s stop {mininet[-1]['delete']:.2f} s"
        print(line, flush=True)
    down, _ = lab_down()
    return {"pods": m, "lab_up": lab_up_s, "lab_down": down, "base": base, "ours": ours, "mininet": mininet}


def measure_size(tmp: str, n: int, m: int, repeat: int, workload: str, timeout: float,
                 dns_pods: int | None = None) -> dict:
    """One size, `repeat` times. Refused for want of addresses (the cluster DNS's pod takes one of
    a full node's), it says so and measures the size again without the cluster DNS pod."""
    path, deploy = lab_file(tmp, n, m, workload, dns_pods), deploy_file(tmp, m, workload)
    ours, anchor = [], []
    for r in range(repeat):
        settle()
        try:
            ours.append(ours_once(path, deploy, n, m, timeout))
        except RuntimeError as e:
            if r:
                raise
            cleanup()
            print(f"  {n}x{m}: refused or failed: {e}", flush=True)
            if "no room" in str(e) and dns_pods is None:
                again = measure_size(tmp, n, m, repeat, workload, timeout, dns_pods=0)
                return {**again, "refused_with_dns": str(e)}
            return {"nodes": n, "pods": m, "dns_pods": dns_pods, "failed": str(e), "ours": [], "anchor": []}
        settle()
        anchor.append(anchor_once(n, m))
        o = ours[-1]
        print(f"  {n}x{m} run {r + 1}: ours up {o['up']:.2f} s delete -f {o['delete']:.2f} s down {o['down']:.2f} s; "
              f"anchor up {anchor[-1][0]:.2f} s down {anchor[-1][1]:.2f} s", flush=True)
    return {"nodes": n, "pods": m, "dns_pods": dns_pods, "ours": ours, "anchor": anchor}


# --- report --------------------------------------------------------------------------------

def med(values: list) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


def median_memory(runs: list[dict], key: str = "memory") -> Memory:
    """The run whose summed RSS is the median (so its breakdown is a real one)."""
    mems = sorted((r[key] for r in runs), key=lambda x: x.rss_kb)
    return mems[(len(mems) - 1) // 2]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report_deploy(d: dict, workload: str, repeat: int) -> list[str]:
    m, ours, mn = d["pods"], d["ours"], d["mininet"]
    out = [f"Per pod: `apply -f` / `delete -f` of a Deployment of {m} replicas (pods run {workload}) on a "
           f"{DEPLOY_NODES}-node lab already up, beside Mininet 2.3 (LinuxBridge, no controller) with {m} hosts "
           f"up / net.stop(); median of {repeat}",
           f"  ({DEPLOY_NODES}-node lab itself: up {d['lab_up']:.2f} s, down {d['lab_down']:.2f} s; not in the per-pod figures)",
           f"  {'':<20} {'ours s':>7} {'ms/pod':>7} | {'Mininet s':>9} {'ms/host':>7} | {'ours/Mininet':>12}"]
    summary = []
    for key, label in (("up", "up (apply -f)"), ("delete", "delete (delete -f)")):
        o = med([r[key] for r in ours])
        if mn:
            k = med([r[key] for r in mn])
            out.append(f"  {label:<20} {o:7.2f} {1000 * o / m:7.1f} | {k:9.2f} {1000 * k / m:7.1f} | {o / k:12.2f}")
            summary.append(f"target per pod {key} <= Mininet's per host: {verdict(o <= k)} "
                           f"({1000 * o / m:.1f} ms against {1000 * k / m:.1f} ms, {o / k:.2f}x)")
        else:
            out.append(f"  {label:<20} {o:7.2f} {1000 * o / m:7.1f} | {'-':>9} {'-':>7} | {'-':>12}")
    for key, verb in (("up", "appeared"), ("delete", "went")):
        first, last, ret = (med([r[k] for r in ours]) for k in (f"{key}_first", f"{key}_last", key))
        out.append(f"  {'apply -f' if key == 'up' else 'delete -f'}, seen from outside: the first pod namespace {verb} "
                   f"after {first:.2f} s, the last after {last:.2f} s ({1000 * (last - first) / max(m - 1, 1):.1f} ms a pod "
                   f"between), the command returned at {ret:.2f} s")
    mem = median_memory(ours)
    added = mem.minus(d["base"])
    rss, pss = mem.per(m)
    arss, apss = added.per(m)
    out.append(f"  memory, MiB per pod: everything in the lab's namespaces / {m}: RSS {rss:.1f}, PSS {pss:.1f} "
               f"({mem.processes} processes); on top of the empty lab: RSS {arss:.1f}, PSS {apss:.1f}")
    if mn:
        hm = median_memory(mn)
        hrss, hpss = hm.per(m)
        am = median_memory(mn, "all")
        out.append(f"  memory, MiB per Mininet host (its shell): RSS {hrss:.1f}, PSS {hpss:.1f}; "
                   f"ours / Mininet: RSS {rss / hrss:.1f}x, PSS {pss / hpss:.1f}x "
                   f"(Mininet's switch shell and python driver too: {am.rss_kb / 1024:.0f} MiB RSS in all)")
    out.append(f"  ours by process (count, RSS/PSS MiB): {mem.top()}")
    out.append(f"  the empty {DEPLOY_NODES}-node lab: {d['base'].processes} processes, RSS {d['base'].rss_kb / 1024:.0f} MiB, "
               f"PSS {d['base'].pss_kb / 1024:.0f} MiB: {d['base'].top()}")
    return out + [""] + summary


def report_sizes(sizes: list[dict], workload: str, repeat: int) -> tuple[list[str], list[str]]:
    out = [f"kube-netlab up / delete -f / down, N nodes x M pods IN TOTAL (spread over the nodes); median of {repeat}; "
           f"seconds; pods run: {workload}",
           "  up: until ready (every node Ready, every pod Running); delete -f: of the Deployment, until every pod is "
           "gone; down: of the then empty lab; freed: until the kernel stopped freeing namespaces",
           f"{'NxM':>7} | {'up':>6} {'del -f':>6} {'down':>5} {'freed':>5} | {'anchor up':>9} {'down':>5} "
           f"{'freed':>5} | {'up/anchor':>9} | {'ms/pod up':>9} {'del':>5} {'anchor':>6} | {'MiB/pod RSS':>11} {'PSS':>5}"]
    summary = []
    for s in sizes:
        n, m = s["nodes"], s["pods"]
        label = f"{n}x{m}" + ("*" if s.get("dns_pods") == 0 else "")
        if s.get("failed"):
            out.append(f"{label:>7} | failed: {s['failed'][-300:]}")
        else:
            ou, od, odn, ofr = (med([r[k] for r in s["ours"]]) for k in ("up", "delete", "down", "freed"))
            au, ad, af = (med([x[i] for x in s["anchor"]]) for i in range(3))
            if m:
                mem = median_memory(s["ours"])
                rss, pss = mem.per(m)
                per = f"{1000 * ou / m:9.1f} {1000 * od / m:5.1f} {1000 * au / m:6.1f} | {rss:11.1f} {pss:5.1f}"
            else:
                per = f"{'-':>9} {'-':>5} {'-':>6} | {'-':>11} {'-':>5}"
            out.append(f"{label:>7} | {ou:6.2f} {od:6.2f} {odn:5.2f} {ofr:5.2f} | {au:9.2f} {ad:5.2f} {af:5.2f} | "
                       f"{ou / au:9.1f} | {per}")
        if (n, m) == TARGET[:2]:
            if s.get("failed"):
                summary.append(f"target {n} nodes x {m} pods up <= {TARGET[2]:.0f} s, deleted <= {TARGET[3]:.0f} s: "
                               f"NOT met (it failed)")
            else:
                summary.append(f"target {n} nodes x {m} pods up <= {TARGET[2]:.0f} s: {verdict(ou <= TARGET[2])} "
                               f"({ou:.2f} s); deleted (delete -f) <= {TARGET[3]:.0f} s: {verdict(od <= TARGET[3])} "
                               f"({od:.2f} s; down of the empty lab {odn:.2f} s)")
                mem = median_memory(s["ours"])
                summary.append(f"memory of {n}x{m}: RSS {mem.rss_kb / 2**20:.2f} GiB, PSS {mem.pss_kb / 2**20:.2f} GiB "
                               f"of this machine's {mem_total_kb() / 2**20:.1f} GiB; by process: {mem.top()}")
        if (n, m) == FULL_NODE:
            refused = s.get("refused_with_dns")
            summary.append(f"one node with a full /24 ({m} pods): " +
                           (f"refused with the cluster DNS pod ({refused.splitlines()[0][-300:]}); " if refused else "") +
                           (f"failed: {s['failed'][-400:]}" if s.get("failed") else
                            f"runs{' without the cluster DNS pod' if s.get('dns_pods') == 0 else ''} "
                            f"(up {med([r['up'] for r in s['ours']]):.2f} s, "
                            f"delete -f {med([r['delete'] for r in s['ours']]):.2f} s)"))
    if any(s.get("dns_pods") == 0 for s in sizes):
        out.append("      * without the cluster DNS pod (spec.dns.replicas 0): with it the size does not fit")
    return out, summary


# --- main ----------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                 epilog="NxM = N nodes and M pods IN TOTAL (10x100: 10 nodes, 100 pods).")
    ap.add_argument("--deploy", type=int, default=200, metavar="M",
                    help="per pod: apply/delete -f of M replicas on a 2-node lab, Mininet with M hosts "
                         "(0: skip; default %(default)s)")
    ap.add_argument("--sizes", default="2x4,5x20,10x100,10x1000,1x253",
                    help="comma-separated NxM: N nodes, M pods in total; '' to skip (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size and side; the median is shown")
    ap.add_argument("--mininet", action=argparse.BooleanOptionalAction, default=None,
                    help="run Mininet beside ours (--mininet installs it when missing; default: when installed)")
    ap.add_argument("--workload", choices=["echo", "sleep"], default="echo",
                    help="what each pod runs: the built-in echo server (default) or `sleep infinity`")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for one up / apply / delete")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = ap.parse_args()
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as e:
        ap.error(f"--sizes {e}")
    if args.repeat < 1:
        ap.error("--repeat: at least 1")
    if not 0 <= args.deploy <= 253 * DEPLOY_NODES:
        ap.error(f"--deploy {args.deploy}: 0-{253 * DEPLOY_NODES} pods ({DEPLOY_NODES} nodes, one /24 each)")
    if os.geteuid() != 0:
        raise SystemExit("bench/lab.py needs root (it creates network namespaces)")
    if not os.path.exists(CLI):
        raise SystemExit(f"{CLI} not found: run with the project's venv python (.venv/bin/python)")
    with_mininet = bool(args.deploy) and args.mininet is not False and (mininet_installed() or args.mininet)
    if with_mininet and not mininet_installed():
        install_mininet()

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    load0 = loadavg()
    cli_start = med_time([CLI, "--help"], 5)
    tmp = tempfile.mkdtemp(prefix="netlab-bench-lab-")
    deploy, results = None, []
    print(f"lab {LAB}, anchor namespaces {ANCHOR}*, Mininet namespace {MININET_NS}; workload {args.workload}; "
          f"median of {args.repeat}; Mininet: {'yes' if with_mininet else 'no'}", flush=True)
    try:
        if args.deploy:
            deploy = measure_deploy(tmp, args.deploy, args.repeat, args.workload, args.timeout, with_mininet)
        for n, m in sizes:
            results.append(measure_size(tmp, n, m, args.repeat, args.workload, args.timeout))
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"interrupted ({str(e) or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    lines, summary = [], []
    if deploy:
        part = report_deploy(deploy, args.workload, args.repeat)
        cut = part.index("")
        lines += part[:cut] + [""]
        summary += part[cut + 1:]
    if results:
        part, s = report_sizes(results, args.workload, args.repeat)
        lines += part + [""]
        summary += s
    print()
    print(f"load average at start / end: {load0} / {loadavg()}; one kube-netlab process that does nothing "
          f"(`kube-netlab --help`): {cli_start:.2f} s, in every figure of ours")
    print("\n".join(lines))
    for s in summary:
        print(f"SUMMARY {s}")
    if FLAKES:
        print(f"discarded and repeated: {len(FLAKES)} `up` runs that reported a live agent as exited "
              "(the empty /proc/PID/cmdline race fixed in 170a436 is back?)")
    for x in LEFTOVERS:
        print(f"LEFT BEHIND: {x}")
    if args.json:
        def plain(o):
            return o.__dict__ if isinstance(o, Memory) else str(o)
        with open(args.json, "w") as f:
            json.dump({"workload": args.workload, "repeat": args.repeat, "cli_start": cli_start,
                       "load": [load0, loadavg()], "deploy": deploy, "sizes": results,
                       "discarded": FLAKES, "left_behind": LEFTOVERS}, f, indent=1, default=plain)
    return 1 if LEFTOVERS else 0


if __name__ == "__main__":
    sys.exit(main())

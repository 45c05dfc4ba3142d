"""The exercise framework: what an exercise is (Exercise, Check), what it gets to look at
and change (Context), and the verbs the CLI runs (start, run_checks, next_hint, reset,
solution_lines). How to write one: the package's docstring (netlab/exercises/__init__.py).

A running exercise is one record in the lab's store (state.ExerciseRecord: name, seed, the
chosen params, the paused repairs, hints shown, the healthy lab's baseline) plus the paused
repair tokens the agents read (state.PAUSED_REPAIRS_KEY). Nothing else is kept anywhere:
any machine that reaches the store can check, hint, reset.
"""
from __future__ import annotations

import random
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from .. import engine
from ..realize.namespace import run_in
from ..state import ExerciseRecord, LabState

TOPOLOGIES = "topologies"
PAUSE_SETTLE_SECONDS = 0.5   # a sync that read the pauses just before they were written finishes meanwhile
TCP_CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()"
RESET_TIMEOUT = 30.0         # the agents repair within a resync period (5 s) once resumed


class ExerciseError(engine.LabError):
    """A user-facing failure of an exercise command (the message says what to do)."""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    why: str            # what was seen: the reason it failed, or what shows it passes

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "why": self.why}


@dataclass(frozen=True)
class PodInfo:
    """A running, ready pod as the checks need it."""

    namespace: str
    name: str
    node: str
    ip: str
    netns: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Exercise:
    """One fault, its symptom, hints, checks and fix. Subclass, set the texts, override the
    methods; register with @register. See the package docstring for an example."""

    name: str = ""
    title: str = ""
    goal: str = ""                 # what the student learns
    symptom: str = ""              # what the student sees with ordinary tools
    hints: tuple[str, ...] = ()    # progressive; str.format()ed with params
    explanation: str = ""          # for the instructor (solution --instructor); formatted with params
    lab_file: str = "two-node.yaml"

    def choose(self, ctx: "Context", rng: random.Random) -> dict:
        """Which node, pod or peer to break (JSON-able); rng is seeded by --seed."""
        return {}

    def pauses(self, params: dict) -> set[str]:
        """The repair tokens (state.pause_token) to pause while it runs: exactly what inject breaks."""
        return set()

    def inject(self, ctx: "Context", params: dict) -> None:
        raise NotImplementedError

    def checks(self, ctx: "Context", params: dict) -> list[Check]:
        """This exercise's own checks; the framework adds the collateral ones."""
        raise NotImplementedError

    def solution(self, ctx: "Context", params: dict) -> list[str]:
        """The fix as shell lines (kube-netlab exec --node ..., ip netns exec ...)."""
        raise NotImplementedError

    def undo(self, ctx: "Context", params: dict) -> None:
        """On reset, after the pauses are lifted: put right what no agent repairs (default: nothing)."""

    def hint_texts(self, params: dict) -> list[str]:
        return [h.format(**params) for h in self.hints]

    def summary(self) -> dict:
        return {"name": self.name, "title": self.title, "goal": self.goal, "symptom": self.symptom,
                "lab": f"{TOPOLOGIES}/{self.lab_file}", "hints": len(self.hints)}


REGISTRY: dict[str, Exercise] = {}


def register(cls: type[Exercise]) -> type[Exercise]:
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"exercise {cls.__name__}: name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls()
    return cls


def exercises() -> list[Exercise]:
    from . import load
    load()
    return [REGISTRY[n] for n in sorted(REGISTRY)]


def get(name: str) -> Exercise:
    known = {e.name: e for e in exercises()}
    if name not in known:
        raise ExerciseError(f"no exercise {name!r}; list them with: kube-netlab exercise list "
                            f"({', '.join(known)})")
    return known[name]


# --- what an exercise looks at and changes ----------------------------------------------------

class Context:
    """One lab, as an exercise sees it: its nodes, running pods, and commands in its namespaces."""

    def __init__(self, lab_name: str):
        self.paths, self.store, self.lab = engine.open_lab(lab_name)
        self.state = LabState(self.store)

    @property
    def lab_name(self) -> str:
        return self.lab.name

    @property
    def node_names(self) -> list[str]:
        return list(self.lab.node_names)

    def node_netns(self, node: str) -> str:
        return self.lab.node_netns(node)

    def run(self, netns: str, *argv: str) -> subprocess.CompletedProcess:
        """argv in a namespace of the lab; never raises on a non-zero exit (checks read it)."""
        return run_in(netns, list(argv), check=False)

    def node_run(self, node: str, *argv: str) -> subprocess.CompletedProcess:
        return self.run(self.node_netns(node), *argv)

    def must(self, netns: str, *argv: str) -> str:
        """argv in a namespace, raising when it fails (inject and undo: a fault must really land)."""
        return run_in(netns, list(argv)).stdout

    def pods(self, namespace: str | None = None) -> list[PodInfo]:
        """Ready pods (every container running) with an IP, by key."""
        out = []
        for key, st in sorted(self.state.pod_statuses().items()):
            ns, name = key.split("/", 1)
            if st.ready and st.pod_ip and namespace in (None, ns):
                out.append(PodInfo(ns, name, st.node, st.pod_ip, st.netns))
        return out

    def pod(self, key: str) -> PodInfo:
        found = next((p for p in self.pods() if p.key == key), None)
        if found is None:
            raise ExerciseError(f"pod {key} is not running in lab {self.lab_name}; check with: "
                                f"kube-netlab get pods -A --lab {self.lab_name}")
        return found

    def node_facts(self, node: str):
        """The node's status (pod_cidr, vtep_mac, underlay_ip), as its agent reported it."""
        st = self.state.node_status(node)
        if st is None or not st.pod_cidr:
            raise ExerciseError(f"node {node} has not reported its subnet yet; is its agent running? "
                                f"(kube-netlab status --lab {self.lab_name})")
        return st

    def ping(self, netns: str, ip: str, *, size: int | None = None, count: int = 1) -> bool:
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", "1", *(["-s", str(size)] if size else []), ip]
        return self.run(netns, *argv).returncode == 0

    def link_mtu(self, netns: str, dev: str = "eth0") -> str:
        """The MTU of a link in the namespace, by netlink (/sys shows the mounter's namespace, not ours)."""
        m = re.search(r" mtu (\d+)", self.run(netns, "ip", "-o", "link", "show", "dev", dev).stdout)
        return m.group(1) if m else "none"

    def tcp_connects(self, netns: str, ip: str, port: int, timeout: float = 1.5) -> bool:
        """A TCP handshake completes (a socket timeout: `timeout bash -c` puts bash in a background
        process group, which the terminal can stop)."""
        return self.run(netns, "python3", "-c", TCP_CONNECT, ip, str(port), str(timeout)).returncode == 0

    # the shell lines of a solution
    def node_cmd(self, node: str, cmd: str) -> str:
        return f"kube-netlab exec --lab {self.lab_name} --node {node} -- {cmd}"

    def pod_cmd(self, pod: PodInfo, cmd: str) -> str:
        return f"kube-netlab exec --lab {self.lab_name} -n {pod.namespace} {pod.name} -- {cmd}"


# --- the healthy lab's shape, and the collateral checks against it -----------------------------

def _count(text: str, keep: Callable[[str], bool] = lambda line: True) -> int:
    return sum(1 for line in text.splitlines() if line.strip() and keep(line))


def node_shape(ctx: Context, node: str) -> dict:
    """What a fix must leave as it was on the healthy lab: counts, not contents (a student's
    route may differ in harmless detail; a flushed table may not)."""
    dev = ctx.lab.vxlan.device

    def out(*argv):
        return ctx.node_run(node, *argv).stdout

    return {
        f"{dev} routes": _count(out("ip", "-4", "route", "show", "dev", dev)),
        f"{dev} FDB entries": _count(out("bridge", "fdb", "show", "dev", dev), lambda l: " dst " in l),
        f"{dev} neighbours": _count(out("ip", "-4", "neigh", "show", "dev", dev), lambda l: "PERMANENT" in l),
        "iptables rules": _count(out("iptables-save"), lambda l: l.startswith("-A ")),
        "nftables ruleset lines": _count(out("nft", "list", "ruleset")),
        "net.ipv4.ip_forward": out("sysctl", "-n", "net.ipv4.ip_forward").strip(),
    }


def pod_mtus(ctx: Context) -> dict[str, str]:
    pods = ctx.pods()
    return dict(zip((p.key for p in pods), _in_parallel(ctx.link_mtu, [(p.netns,) for p in pods])))


def baseline(ctx: Context) -> dict:
    shapes = _in_parallel(lambda n: node_shape(ctx, n), [(n,) for n in ctx.node_names])
    return {"nodes": dict(zip(ctx.node_names, shapes)), "pods": pod_mtus(ctx),
            "services": service_reach(ctx)}


def _differences(before: dict, now: dict) -> list[str]:
    return [f"{k} {now.get(k)} (was {v})" for k, v in before.items() if now.get(k) != v]


def collateral_checks(ctx: Context, base: dict | None) -> list[Check]:
    """The lab as a whole: each node's tables as on the healthy lab, every pod's MTU as it was,
    every pod reaching a pod on each other node, each Service port that answered still answering."""
    checks = []
    nodes = [n for n in ctx.node_names if n in (base or {}).get("nodes", {})]
    for node, now in zip(nodes, _in_parallel(lambda n: node_shape(ctx, n), [(n,) for n in nodes])):
        before = base["nodes"][node]
        diff = _differences(before, now)
        checks.append(Check(f"{node}: routes, FDB, neighbours, rules and ip_forward as on the healthy lab",
                            not diff, "; ".join(diff) if diff else
                            ", ".join(f"{k} {v}" for k, v in before.items())))
    before_mtus = (base or {}).get("pods", {})
    now_mtus = pod_mtus(ctx)
    diff = [f"{k}: eth0 MTU {now_mtus.get(k, 'gone')} (was {v})" for k, v in before_mtus.items()
            if now_mtus.get(k) != v]
    checks.append(Check("every pod still runs, its eth0 MTU as before", not diff,
                        "; ".join(diff) if diff else f"{len(before_mtus)} pods"))
    checks.append(_cross_node_check(ctx))
    checks.append(_services_check(ctx, (base or {}).get("services")))
    return checks


def _in_parallel(probe: Callable, jobs: list) -> list:
    """Probes at once (a lost ping costs its full timeout; a broken lab would take long one by one)."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        return list(pool.map(lambda job: probe(*job), jobs))


def _cross_node_check(ctx: Context) -> Check:
    pods = ctx.pods()
    pairs = [(p, q) for p in pods for node in ctx.node_names if node != p.node
             for q in [next((q for q in pods if q.node == node), None)] if q is not None]
    answered = _in_parallel(lambda p, q: ctx.ping(p.netns, q.ip), pairs)
    failed = [f"{p.key} ({p.ip}, {p.node}) -> {q.ip} ({q.node})" for (p, q), ok in zip(pairs, answered) if not ok]
    return Check("every pod pings a pod on each other node", not failed,
                 ("no reply: " + "; ".join(failed)) if failed else f"{len(pairs)} pings answered")


def service_reach(ctx: Context) -> list[str]:
    """The ClusterIP TCP ports (of Services with a ready endpoint) that one pod per node connects
    to, as "ns/svc IP:port from node" (a port nothing listens on, e.g. kube-dns's 9153, is left out)."""
    by_node = {}
    for p in ctx.pods():
        by_node.setdefault(p.node, p)
    jobs = []
    for key, svc in sorted(ctx.state.services().items()):
        ready = any(e.ready for s in ctx.state.endpoint_slices(key) for e in s.endpoints)
        if svc.has_cluster_ip and svc.cluster_ip and ready:
            jobs += [(f"{key} {svc.cluster_ip}:{port.port} from {node}", p.netns, svc.cluster_ip, port.port)
                     for port in svc.ports if port.protocol == "TCP" for node, p in sorted(by_node.items())]
    connected = _in_parallel(lambda _name, netns, ip, port: ctx.tcp_connects(netns, ip, port), jobs)
    return [job[0] for job, ok in zip(jobs, connected) if ok]


def _services_check(ctx: Context, before: list[str] | None) -> Check:
    now = set(service_reach(ctx))
    lost = [r for r in before or () if r not in now]
    return Check("every Service port that answered on the healthy lab still answers from each node", not lost,
                 ("no connection: " + "; ".join(lost)) if lost else f"{len(now)} connections")


# --- the verbs ---------------------------------------------------------------------------------

def running(ctx: Context) -> tuple[Exercise, ExerciseRecord]:
    rec = ctx.state.exercise()
    if rec is None:
        raise ExerciseError(f"no exercise is running on lab {ctx.lab_name}; start one with: "
                            f"kube-netlab exercise start NAME (kube-netlab exercise list)")
    return get(rec.name), rec


def start(name: str, *, lab_name: str | None = None, seed: int | None = None, root: str = ".",
          up_timeout: float = 180.0) -> tuple[Context, Exercise, ExerciseRecord]:
    """Bring up the exercise's lab (or use lab_name, running), check it is healthy, pause the
    repairs, inject the fault, record it. root: where topologies/ is."""
    import os
    ex = get(name)
    if lab_name is None:
        lab_name = engine.up(os.path.join(root, TOPOLOGIES, ex.lab_file), timeout=up_timeout).name
    ctx = Context(engine.resolve_lab(lab_name))
    current = ctx.state.exercise()
    if current is not None:
        raise ExerciseError(f"exercise {current.name} is running on lab {ctx.lab_name}; finish it first with: "
                            f"kube-netlab exercise reset --lab {ctx.lab_name}")
    if ctx.state.paused_repairs():
        raise ExerciseError(f"lab {ctx.lab_name} has paused repairs but no exercise; run: "
                            f"kube-netlab exercise reset --lab {ctx.lab_name}")
    seed = random.SystemRandom().randrange(1, 10**6) if seed is None else seed
    params = ex.choose(ctx, random.Random(seed))
    unhealthy = [c for c in all_checks(ctx, ex, params, None) if not c.passed]
    if unhealthy:
        raise ExerciseError(f"lab {ctx.lab_name} is not healthy before the fault, so the exercise could not be "
                            "graded: " + "; ".join(f"{c.name}: {c.why}" for c in unhealthy))
    pauses = tuple(sorted(ex.pauses(params)))
    rec = ExerciseRecord(ex.name, seed, params, pauses, 0, time.time(), baseline(ctx))
    ctx.state.put_exercise(rec)          # first: a failed inject still leaves something reset can undo
    ctx.state.put_paused_repairs(pauses)
    time.sleep(PAUSE_SETTLE_SECONDS)
    ex.inject(ctx, params)
    return ctx, ex, rec


def all_checks(ctx: Context, ex: Exercise | None, params: dict, base: dict | None) -> list[Check]:
    """The exercise's own checks, then the collateral ones; both sets probe at the same time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        own = pool.submit(ex.checks, ctx, params) if ex is not None else None
        collateral = collateral_checks(ctx, base)
        return (own.result() if own is not None else []) + collateral


def run_checks(ctx: Context) -> tuple[Exercise, ExerciseRecord, list[Check]]:
    ex, rec = running(ctx)
    return ex, rec, all_checks(ctx, ex, rec.params, rec.baseline)


def next_hint(ctx: Context) -> tuple[list[str], int]:
    """The hints shown so far, one more than last time (all of them once exhausted), and the total."""
    ex, rec = running(ctx)
    texts = ex.hint_texts(rec.params)
    shown = min(rec.hints_shown + 1, len(texts))
    if shown != rec.hints_shown:
        from dataclasses import replace
        ctx.state.put_exercise(replace(rec, hints_shown=shown))
    return texts[:shown], len(texts)


def solution_lines(ctx: Context, instructor: bool = False) -> list[str]:
    ex, rec = running(ctx)
    lines = list(ex.solution(ctx, rec.params))
    if instructor:
        notes = [f"exercise {ex.name} (seed {rec.seed}): {ex.title}",
                 f"injected fault: {rec.params}",
                 f"paused repairs: {', '.join(rec.pauses) or 'none (no agent repairs this)'}",
                 *ex.explanation.format(**rec.params).splitlines()]
        lines = [f"# {n}" if n else "#" for n in notes] + lines
    return lines


def reset(ctx: Context, timeout: float = RESET_TIMEOUT) -> list[Check]:
    """Resume every paused repair, undo what nothing repairs, forget the exercise, and wait until
    the lab is healthy again (the exercise's own and the collateral checks); returns the checks
    still failing at the timeout (empty: healthy)."""
    rec = ctx.state.exercise()
    ex = get(rec.name) if rec is not None else None
    ctx.state.put_paused_repairs(())
    if ex is not None:
        ex.undo(ctx, rec.params)
    deadline = time.monotonic() + timeout
    while True:
        failing = [c for c in all_checks(ctx, ex, rec.params if rec else {}, rec.baseline if rec else None)
                   if not c.passed]
        if not failing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    ctx.state.delete_exercise()
    return failing

"""Course exercises on a real two-node lab, through the CLI: for each exercise its checker
fails after start (past an agent resync: the paused repair does not undo the fault), passes
after `sh` runs the commands of `solution`, and reset leaves a healthy lab; a fix that
breaks something else does not pass; a paused repair stays broken while unpaused ones
(another repair of the same node, the same repair of another node) are repaired: the
overlay's, a pod's restarts, kube-proxy's resync."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from labrun import Lab, kn, lab_leftovers, on_node
from netlab import state
from netlab.agent.controller import Controller
from netlab.pods import CONTAINER_RESTART_BACKOFF
from proxy.types import DEFAULT_SYNC_PERIOD
from netlab.store import open_store

RESYNC = Controller.resync_seconds            # the agents' full-sync period
PATH = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"  # kube-netlab for the solution's lines


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        kn("exercise", "reset", "--lab", lab.name, check=False)
        lab.down()
    assert lab_leftovers(lab.name) == []


@pytest.fixture
def labstate(lab):
    """The lab's records; whatever a test paused is resumed afterwards."""
    store = open_store(state.LabPaths(lab.name).store)
    try:
        yield state.LabState(store)
    finally:
        state.LabState(store).put_paused_repairs(())
        store.close()


def check(lab) -> tuple[int, dict]:
    out = kn("exercise", "check", "-o", "json", "--lab", lab.name, check=False)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def failing(result: dict) -> list[str]:
    return [c["name"] for c in result["checks"] if not c["passed"]]


def run_solution(lab, *extra: str) -> str:
    lines = kn("exercise", "solution", *extra, "--lab", lab.name).stdout
    subprocess.run(["sh", "-e"], input=lines, text=True, check=True, env={**os.environ, "PATH": PATH},
                   capture_output=True)
    return lines


def wait_for(what, predicate, timeout=4 * RESYNC):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


def exercise_cycle(lab, name: str, seed: int) -> None:
    """What every exercise must do (other exercise test modules import this): its checker fails
    after start, past a full resync of every agent; hints come one more at a time; the commands
    of its solution, run by sh, make every check pass; reset leaves a healthy lab."""
    started = kn("exercise", "start", name, "--seed", str(seed), "--lab", lab.name)
    assert f"exercise {name} started on lab {lab.name} (seed {seed})" in started.stdout
    time.sleep(RESYNC + 1)   # past a full resync of every agent: nothing repaired the fault
    code, result = check(lab)
    assert code == 1 and result["exercise"] == name and result["seed"] == seed and not result["passed"]
    assert failing(result), result
    assert all(c["why"] for c in result["checks"])

    first, second = (kn("exercise", "hint", "--lab", lab.name).stdout for _ in range(2))
    assert first.count("hint ") == 1 and second.count("hint ") == 2 and second.startswith(first.rstrip("\n"))

    lines = run_solution(lab)
    assert lines.strip() and all(line.startswith("kube-netlab exec --lab ") for line in lines.splitlines())
    code, result = check(lab)
    assert (code, failing(result)) == (0, []), result

    reset = kn("exercise", "reset", "--lab", lab.name)
    assert "healthy" in reset.stdout
    gone = kn("exercise", "check", "--lab", lab.name, check=False)
    assert gone.returncode == 1 and "no exercise is running" in gone.stderr


@pytest.mark.parametrize("name, seed", [("fdb-missing", 1), ("route-missing", 2), ("ip-forward-off", 3),
                                        ("pod-mtu", 4)])
def test_an_exercise_fails_until_its_solution_runs_and_reset_restores_the_lab(lab, name, seed):
    exercise_cycle(lab, name, seed)


def test_reset_alone_restores_a_broken_lab(lab, labstate):
    kn("exercise", "start", "route-missing", "--seed", "5", "--lab", lab.name)
    assert check(lab)[0] == 1
    kn("exercise", "reset", "--lab", lab.name)   # exit 0: healthy again (the agents repaired it once resumed)
    assert labstate.paused_repairs() == frozenset() and labstate.exercise() is None


def test_a_fix_that_breaks_something_else_does_not_pass(lab):
    kn("exercise", "start", "fdb-missing", "--seed", "7", "--lab", lab.name)
    run_solution(lab)
    pods = {p["metadata"]["name"]: p for p in json.loads(kn("get", "pods", "-o", "json", "--lab", lab.name).stdout)["items"]}
    victim = sorted(pods)[0]
    kn("exec", victim, "--lab", lab.name, "--", "ip", "link", "set", "eth0", "mtu", "1400")
    code, result = check(lab)
    assert code == 1 and failing(result) == ["every pod still runs, its eth0 MTU as before"], result
    why = next(c["why"] for c in result["checks"] if not c["passed"])
    assert f"default/{victim}: eth0 MTU 1400 (was 1450)" in why
    kn("exec", victim, "--lab", lab.name, "--", "ip", "link", "set", "eth0", "mtu", "1450")
    assert check(lab)[0] == 0
    kn("exercise", "reset", "--lab", lab.name)


def test_one_exercise_at_a_time_and_the_instructor_sees_the_fault(lab):
    kn("exercise", "start", "ip-forward-off", "--seed", "11", "--lab", lab.name)
    again = kn("exercise", "start", "pod-mtu", "--lab", lab.name, check=False)
    assert again.returncode == 1 and "exercise ip-forward-off is running" in again.stderr
    lines = run_solution(lab, "--instructor").splitlines()
    comments = [line for line in lines if line.startswith("#")]
    assert lines[:len(comments)] == comments   # comments first, then the commands
    assert any("seed 11" in line for line in comments)
    assert any("paused repairs: node.sysctl/node-" in line for line in comments)
    assert check(lab)[0] == 0
    kn("exercise", "reset", "--lab", lab.name)


def _fdb_entries(lab, node) -> int:
    out = on_node(lab.name, node, "bridge", "fdb", "show", "dev", "flannel.1").stdout
    return sum(1 for line in out.splitlines() if " dst " in line)


def _ip_forward(lab, node) -> str:
    return on_node(lab.name, node, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()


def _delete_fdb(lab, node):
    entry = on_node(lab.name, node, "bridge", "fdb", "show", "dev", "flannel.1").stdout.split()
    on_node(lab.name, node, "bridge", "fdb", "del", entry[0], "dev", "flannel.1", "dst", entry[entry.index("dst") + 1])


def test_a_paused_repair_stays_broken_while_unpaused_ones_are_repaired(lab, labstate):
    labstate.put_paused_repairs([state.pause_token("overlay.fdb", "node-a")])
    time.sleep(0.5)
    _delete_fdb(lab, "node-a")                                     # paused
    _delete_fdb(lab, "node-b")                                     # the same repair, another node
    on_node(lab.name, "node-a", "sysctl", "-qw", "net.ipv4.ip_forward=0")  # another repair, the same node
    wait_for("node-b's FDB entry is back", lambda: _fdb_entries(lab, "node-b") == 1)
    wait_for("node-a's ip_forward is 1 again", lambda: _ip_forward(lab, "node-a") == "1")
    time.sleep(RESYNC + 1)
    assert _fdb_entries(lab, "node-a") == 0                        # past a full resync: still broken
    labstate.put_paused_repairs(())
    wait_for("node-a's FDB entry is back once resumed", lambda: _fdb_entries(lab, "node-a") == 1)


def _echo_containers(labstate) -> dict[str, state.ContainerStatus]:
    return {k: st.containers[0] for k, st in sorted(labstate.pod_statuses().items())
            if k.startswith("default/echo-") and st.containers}


def test_a_held_pod_is_not_restarted_while_another_is_and_resumes_after(lab, labstate):
    held, free = list(_echo_containers(labstate))[:2]
    labstate.put_paused_repairs([state.pause_token("pods.restart", held)])
    time.sleep(0.5)
    before = _echo_containers(labstate)
    for key in (held, free):
        os.kill(before[key].pid, 9)
    wait_for(f"{free} restarted", lambda: (c := _echo_containers(labstate)[free]).running
             and c.restart_count == before[free].restart_count + 1)
    time.sleep(3 * CONTAINER_RESTART_BACKOFF.initial)   # past the restart backoff the free one got
    c = _echo_containers(labstate)[held]
    assert (c.running, c.reason, c.restart_count) == (False, "CrashLoopBackOff", before[held].restart_count)
    labstate.put_paused_repairs(())
    wait_for(f"{held} restarted once released", lambda: _echo_containers(labstate)[held].running)


def _service_rules(lab, node) -> int:
    out = on_node(lab.name, node, "iptables-save", "-t", "nat").stdout
    return sum(1 for line in out.splitlines() if line.startswith("-A KUBE-SERVICES "))


def test_a_paused_proxy_keeps_a_flushed_chain_until_resumed_while_another_node_resyncs(lab, labstate):
    want = _service_rules(lab, "node-a")
    assert want > 0 and _service_rules(lab, "node-b") == want
    labstate.put_paused_repairs([state.pause_token("proxy", "node-a")])
    time.sleep(0.5)
    for node in ("node-a", "node-b"):
        on_node(lab.name, node, "iptables", "-t", "nat", "-F", "KUBE-SERVICES")
    wait_for("node-b's KUBE-SERVICES rewritten by its periodic full sync",
             lambda: _service_rules(lab, "node-b") == want, timeout=2 * DEFAULT_SYNC_PERIOD)
    assert _service_rules(lab, "node-a") == 0
    labstate.put_paused_repairs(())           # the resume itself syncs fully
    wait_for("node-a's KUBE-SERVICES rewritten once resumed", lambda: _service_rules(lab, "node-a") == want,
             timeout=RESYNC)

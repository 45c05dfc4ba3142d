"""The cluster DNS and VTEP exercises (netlab/exercises/dns.py, vtep.py) on one real two-node
lab, through the CLI: each fails after start (past an agent resync when it pauses a repair),
passes after `sh` runs its solution, and reset leaves a healthy lab; --seed moves the fault;
a killed DNS server stays down until reset; a VXLAN device re-created with a new MAC fails.
Last, the pure pieces: the wrong search paths, the wrong VTEP MAC, reading a process group."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from labrun import kn, on_node
from netlab import state
from netlab.exercises import framework
from netlab.exercises.dns import WRONG_KINDS, process_group, with_search, wrong_searches
from netlab.exercises.vtep import random_vtep_mac
from test_exercises import PATH, RESYNC, check, exercise_cycle, failing, wait_for
from test_exercises import lab, labstate  # noqa: F401  (fixtures: a two-node lab for the module, its records)


def run_sh(lines: str) -> None:
    subprocess.run(["sh", "-e"], input=lines, text=True, check=True, env={**os.environ, "PATH": PATH},
                   capture_output=True)


def start(lab, name, seed):
    started = kn("exercise", "start", name, "--seed", str(seed), "--lab", lab.name)
    assert f"exercise {name} started on lab {lab.name} (seed {seed})" in started.stdout


def reset(lab):
    assert "healthy" in kn("exercise", "reset", "--lab", lab.name).stdout


@pytest.mark.parametrize("name, seed", [("dns-pod-stopped", 1), ("resolv-search-wrong", 2),
                                        ("neigh-wrong-mac", 3), ("vxlan-port-mismatch", 4)])
def test_an_exercise_fails_until_its_solution_runs_and_reset_restores_the_lab(lab, name, seed):
    exercise_cycle(lab, name, seed)


@pytest.mark.parametrize("name, what", [("dns-pod-stopped", "clients"), ("resolv-search-wrong", "pod"),
                                        ("neigh-wrong-mac", "node"), ("vxlan-port-mismatch", "node")])
def test_the_seed_chooses_what_breaks_and_the_same_seed_the_same(lab, name, what):
    ctx, ex = framework.Context(lab.name), framework.get(name)
    chosen = [ex.choose(ctx, random.Random(seed)) for seed in range(12)]
    assert len({repr(c[what]) for c in chosen}) > 1
    assert ex.choose(ctx, random.Random(5)) == chosen[5]


def _coredns(labstate) -> tuple[str, state.PodStatus]:
    return next((k, st) for k, st in labstate.pod_statuses().items() if k.startswith("kube-system/coredns-"))


def test_a_killed_dns_server_is_not_restarted_until_reset(lab, labstate):
    start(lab, "dns-pod-stopped", 6)
    key, before = _coredns(labstate)
    os.killpg(before.containers[0].pid, signal.SIGKILL)   # a student "fixes" the stopped server by killing it
    wait_for("the kubelet saw the container exit", lambda: _coredns(labstate)[1].containers[0].reason == "CrashLoopBackOff")
    time.sleep(2 * RESYNC / 5 + 1)                         # past its restart backoff (1 s) twice over
    code, result = check(lab)
    assert code == 1 and f"{key} is Ready (its container runs)" in failing(result), result
    assert _coredns(labstate)[1].containers[0].restart_count == before.containers[0].restart_count
    reset(lab)                                             # the restart resumes: healthy again
    after = _coredns(labstate)[1]
    assert after.ready and after.containers[0].restart_count == before.containers[0].restart_count + 1


def test_a_vxlan_device_re_created_with_a_new_mac_does_not_pass(lab):
    start(lab, "vxlan-port-mismatch", 8)
    lines = kn("exercise", "solution", "--lab", lab.name).stdout.splitlines()
    node = lines[0].split("--node ")[1].split()[0]
    mac = next(line.split(" address ")[1].split()[0] for line in lines if " address " in line)
    new_mac = "02:00:00:00:00:09"
    wrong_fix = "\n".join(line.replace(f"address {mac} ", f"address {new_mac} ") for line in lines)
    run_sh(wrong_fix)
    code, result = check(lab)
    fails = failing(result)
    assert code == 1 and any(f"keeps VTEP MAC {mac}" in c for c in fails), result
    assert any("ping each other" in c for c in fails)      # the peers' entries still name the old MAC
    why = next(c["why"] for c in result["checks"] if f"keeps VTEP MAC {mac}" in c["name"])
    assert f"mac {new_mac}" in why
    assert on_node(lab.name, node, "ip", "-d", "link", "show", "flannel.1").stdout.count("dstport 8472") == 1
    reset(lab)                                             # the agent re-creates flannel.1 with its own MAC



# --- the pure pieces (no lab) ---------------------------------------------------------------

@pytest.mark.parametrize("kind", WRONG_KINDS)
def test_every_wrong_search_path_misses_the_namespace_suffix_and_only_the_search_line_changes(kind):
    right = "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    wrong = wrong_searches(kind, "default", "cluster.local", "kube-system")
    assert "default.svc.cluster.local" not in wrong and wrong
    text = with_search(right, wrong)
    assert text.splitlines()[1:] == right.splitlines()[1:] and text.splitlines()[0] == "search " + " ".join(wrong)


def test_a_wrong_vtep_mac_is_locally_administered_unicast_and_none_of_the_real_ones():
    rng, real = random.Random(1), {"02:00:00:00:00:01"}
    macs = [random_vtep_mac(rng, real) for _ in range(50)]
    assert all(int(m[:2], 16) & 0x03 == 0x02 for m in macs) and not real & set(macs)


def test_a_process_group_is_read_with_each_process_state():
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        os.kill(child.pid, signal.SIGSTOP)
        wait_for("the child stopped", lambda: process_group(child.pid).get(child.pid) == "T", timeout=5)
        os.kill(child.pid, signal.SIGCONT)
        wait_for("the child runs", lambda: process_group(child.pid).get(child.pid) in ("S", "R"), timeout=5)
        assert list(process_group(child.pid)) == [child.pid]
    finally:
        child.kill()
        child.wait()

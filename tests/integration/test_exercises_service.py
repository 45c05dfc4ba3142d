"""The Service exercises (netlab/exercises/service.py) on real two-node labs, through the CLI:
for each, its checker fails after start, passes after `sh` runs the commands of `solution`,
and reset leaves a healthy lab, also from the unfixed fault. iptables mode for all four,
nftables mode for those that differ there (the endpoint's rules) or depend on its cleanup
(the stale UDP entry); masquerade-missing is iptables only and says so."""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from labrun import TWO_NODE, Lab, kn, lab_leftovers, on_node
from proxy.types import DEFAULT_SYNC_PERIOD
from test_exercises import PATH, check, failing, run_solution

FAILING_AFTER_START = {   # words of the exercise's own checks that the fault fails (the rest pass, or are collateral)
    "hairpin-off": ("is in hairpin mode", "reaches itself through default/echo"),
    "endpoint-rules-missing": ("DNATs to", "every endpoint of default/echo answers"),
    "masquerade-missing": ("KUBE-POSTROUTING masquerades", "reaches itself through default/echo"),
    "stale-udp-conntrack": ("points at a pod that is gone", "gets answers"),
}


def up(mode: str, tmp_path_factory) -> Lab:
    text = open(TWO_NODE).read().replace("proxyMode: iptables", f"proxyMode: {mode}")
    text = text.replace("- workloads/", f"- {TWO_NODE.rsplit('/', 1)[0]}/workloads/")
    path = tmp_path_factory.mktemp(mode) / "lab.yaml"
    path.write_text(text)
    lab = Lab(str(path))
    lab.up()
    return lab


def running_lab(mode: str, tmp_path_factory):
    lab = None
    try:
        lab = up(mode, tmp_path_factory)
        yield lab
    finally:
        if lab is not None:
            kn("exercise", "reset", "--lab", lab.name, check=False)
            lab.down()
            assert lab_leftovers(lab.name) == []


@pytest.fixture(scope="module")
def iptables_lab(tmp_path_factory):
    yield from running_lab("iptables", tmp_path_factory)


@pytest.fixture(scope="module")
def nftables_lab(tmp_path_factory):
    yield from running_lab("nftables", tmp_path_factory)


def own_failing(name: str, result: dict) -> list[str]:
    """The words of FAILING_AFTER_START[name] that name a failing check."""
    return [words for words in FAILING_AFTER_START[name] if any(words in c for c in failing(result))]


def start(lab, name: str, seed: int) -> None:
    started = kn("exercise", "start", name, "--seed", str(seed), "--lab", lab.name)
    assert f"exercise {name} started on lab {lab.name} (seed {seed})" in started.stdout


def reset_is_healthy(lab) -> None:
    reset = kn("exercise", "reset", "--lab", lab.name)
    assert "healthy again" in reset.stdout
    assert kn("exercise", "check", "--lab", lab.name, check=False).returncode == 1   # no exercise any more


CASES = [("hairpin-off", 1, "iptables"), ("endpoint-rules-missing", 2, "iptables"),
         ("masquerade-missing", 3, "iptables"), ("stale-udp-conntrack", 4, "iptables"),
         ("endpoint-rules-missing", 5, "nftables"), ("stale-udp-conntrack", 6, "nftables")]


@pytest.mark.parametrize("name, seed, mode", CASES)
def test_a_service_exercise_fails_until_its_solution_runs_and_reset_restores_the_lab(request, name, seed, mode):
    lab = request.getfixturevalue(f"{mode}_lab")
    start(lab, name, seed)
    code, result = check(lab)
    assert code == 1 and result["exercise"] == name
    assert own_failing(name, result) == list(FAILING_AFTER_START[name]), result

    lines = run_solution(lab)
    assert all(line.startswith("kube-netlab exec --lab ") for line in lines.splitlines())
    code, result = check(lab)
    assert (code, failing(result)) == (0, []), result
    reset_is_healthy(lab)


@pytest.mark.parametrize("name, seed", [("hairpin-off", 7), ("endpoint-rules-missing", 8),
                                        ("masquerade-missing", 9), ("stale-udp-conntrack", 10)])
def test_reset_alone_restores_the_lab_from_the_unfixed_fault(iptables_lab, name, seed):
    lab = iptables_lab
    start(lab, name, seed)
    assert own_failing(name, check(lab)[1]) == list(FAILING_AFTER_START[name])
    reset_is_healthy(lab)


def test_the_proxys_full_resync_does_not_repair_the_endpoint_while_paused_but_does_after_reset(iptables_lab):
    lab = iptables_lab
    start(lab, "endpoint-rules-missing", 11)
    rules_check = check(lab)[1]["checks"][0]["name"]   # "node-x: KUBE-SVC-... jumps to KUBE-SEP-..., which DNATs to ..."
    node, sep_chain = rules_check.split(":")[0], re.search(r"KUBE-SEP-\w+", rules_check).group(0)
    time.sleep(DEFAULT_SYNC_PERIOD + 1)   # past the proxy's periodic full sync
    assert own_failing("endpoint-rules-missing", check(lab)[1]) == list(FAILING_AFTER_START["endpoint-rules-missing"])
    assert f":{sep_chain} " not in on_node(lab.name, node, "iptables-save", "-t", "nat").stdout
    reset_is_healthy(lab)                 # the resumed proxy rewrote the chain
    assert f":{sep_chain} " in on_node(lab.name, node, "iptables-save", "-t", "nat").stdout


def test_an_endpoint_jump_put_back_at_another_place_does_not_pass(iptables_lab):
    lab = iptables_lab
    start(lab, "endpoint-rules-missing", 13)
    lines = kn("exercise", "solution", "--lab", lab.name).stdout
    first = re.sub(r" -I (KUBE-SVC-\w+) \d+ ", r" -I \1 1 ", lines)   # before the off-cluster masquerade mark
    assert first != lines
    subprocess.run(["sh", "-e"], input=first, text=True, check=True, env={**os.environ, "PATH": PATH},
                   capture_output=True)
    code, result = check(lab)
    assert code == 1 and [c for c in failing(result) if "as the proxy wrote them" in c], result
    why = next(c["why"] for c in result["checks"] if not c["passed"])
    assert "the same rules in another order" in why
    reset_is_healthy(lab)


def test_flushing_the_whole_conntrack_table_does_not_pass(iptables_lab):
    lab = iptables_lab
    start(lab, "stale-udp-conntrack", 12)
    node = check(lab)[1]["checks"][0]["name"].split(":")[0]   # "node-x: no UDP conntrack entry ..."
    on_node(lab.name, node, "conntrack", "-F")
    code, result = check(lab)
    assert code == 1 and failing(result) == [f"{node}: the client's other flow (to 10.96.0.10:53 from port 40054) "
                                             "kept its conntrack entry"], result
    reset_is_healthy(lab)


def test_masquerade_missing_needs_iptables_mode_and_says_so(nftables_lab):
    out = kn("exercise", "start", "masquerade-missing", "--lab", nftables_lab.name, check=False)
    assert out.returncode == 1 and "needs a lab with proxyMode iptables (this one has nftables)" in out.stderr
    assert kn("exercise", "check", "--lab", nftables_lab.name, check=False).returncode == 1   # nothing was started

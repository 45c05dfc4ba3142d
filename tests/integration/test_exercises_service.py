"""The Service exercises (netlab/exercises/service.py) on real two-node labs, through the CLI:
for each, its checker fails after start, passes after `sh` runs the commands of `solution`,
and reset leaves a healthy lab, also from the unfixed fault. iptables mode for all four,
nftables mode for those that differ there (the endpoint's rules) or depend on its cleanup
(the stale UDP entry); masquerade-missing is iptables only and says so."""
from __future__ import annotations

import re
import time

import pytest

from labrun import TWO_NODE, Lab, kn, lab_leftovers, on_node
from proxy.types import DEFAULT_SYNC_PERIOD
from test_exercises import check, failing, run_solution

OWN_CHECKS = {   # the first words of each exercise's own checks (the rest are the collateral ones)
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


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def lab(request, tmp_path_factory):
    lab = None
    try:
        lab = up(request.param, tmp_path_factory)
        lab.mode = request.param
        yield lab
    finally:
        if lab is not None:
            kn("exercise", "reset", "--lab", lab.name, check=False)
            lab.down()
            assert lab_leftovers(lab.name) == []


def own_failing(name: str, result: dict) -> list[str]:
    return [c for c in failing(result) if any(words in c for words in OWN_CHECKS[name])]


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
def test_a_service_exercise_fails_until_its_solution_runs_and_reset_restores_the_lab(lab, name, seed, mode):
    if lab.mode != mode:
        pytest.skip(f"runs on the {mode} lab")
    start(lab, name, seed)
    code, result = check(lab)
    assert code == 1 and result["exercise"] == name
    assert sorted(own_failing(name, result)) == sorted(c["name"] for c in result["checks"][:2]), result

    lines = run_solution(lab)
    assert all(line.startswith("kube-netlab exec --lab ") for line in lines.splitlines())
    code, result = check(lab)
    assert (code, failing(result)) == (0, []), result
    reset_is_healthy(lab)


@pytest.mark.parametrize("name, seed", [("hairpin-off", 7), ("endpoint-rules-missing", 8),
                                        ("masquerade-missing", 9), ("stale-udp-conntrack", 10)])
def test_reset_alone_restores_the_lab_from_the_unfixed_fault(lab, name, seed):
    if lab.mode != "iptables":
        pytest.skip("once is enough: reset does not depend on the proxy mode")
    start(lab, name, seed)
    assert own_failing(name, check(lab)[1])
    reset_is_healthy(lab)


def test_the_proxys_full_resync_does_not_repair_the_endpoint_while_paused_but_does_after_reset(lab):
    if lab.mode != "iptables":
        pytest.skip("the pause is the proxy controller's, whatever the mode")
    start(lab, "endpoint-rules-missing", 11)
    rules_check = check(lab)[1]["checks"][0]["name"]   # "node-x: KUBE-SVC-... jumps to KUBE-SEP-..., which DNATs to ..."
    node, sep_chain = rules_check.split(":")[0], re.search(r"KUBE-SEP-\w+", rules_check).group(0)
    time.sleep(DEFAULT_SYNC_PERIOD + 1)   # past the proxy's periodic full sync
    assert own_failing("endpoint-rules-missing", check(lab)[1])
    assert f":{sep_chain} " not in on_node(lab.name, node, "iptables-save", "-t", "nat").stdout
    reset_is_healthy(lab)                 # the resumed proxy rewrote the chain
    assert f":{sep_chain} " in on_node(lab.name, node, "iptables-save", "-t", "nat").stdout


def test_masquerade_missing_needs_iptables_mode_and_says_so(lab):
    if lab.mode != "nftables":
        pytest.skip("the refusal is on the nftables lab")
    out = kn("exercise", "start", "masquerade-missing", "--lab", lab.name, check=False)
    assert out.returncode == 1 and "needs a lab with proxyMode iptables (this one has nftables)" in out.stderr
    assert kn("exercise", "check", "--lab", lab.name, check=False).returncode == 1   # nothing was started

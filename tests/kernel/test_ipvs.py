"""IPVS mode end to end under Debian's kernel (one boot for the whole file):
tests/kernel/guest_ipvs.py builds a node with two echo pods and an outside
client in the guest, syncs IpvsProxier and reports what the client got."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.kernel

MODULES = ["ip_vs", "ip_vs_rr", "dummy", "veth", "bridge", "br_netfilter",
           "nf_conntrack", "nf_nat", "nf_tables", "nft_compat", "nft_chain_nat",
           "xt_mark", "xt_MASQUERADE", "xt_addrtype", "xt_comment", "xt_conntrack", "xt_tcpudp"]
GUEST = ".venv/bin/python tests/kernel/guest_ipvs.py"


@pytest.fixture(scope="module")
def guest(boot_kernel):
    run = boot_kernel(GUEST, MODULES, timeout=600)
    print(run.output)          # ipvsadm -Ln, kube-ipvs0 and iptables-save, in the test log
    lines = [line for line in run.output.splitlines() if line.startswith("RESULT ")]
    assert run.rc == 0 and lines, run.explain()
    return json.loads(lines[-1].removeprefix("RESULT ")), run


def test_sync_programs_the_kernel(guest):
    result, run = guest
    assert result["first_sync"]["error"] is None, run.explain()
    assert "NOARP" in result["device_flags"] and "state DOWN" in result["device_flags"]
    assert result["sysctls"] == {"conntrack": "1", "expire_nodest_conn": "1", "expire_quiescent_template": "1"}
    assert "TCP  10.96.0.20:80 rr" in run.output
    assert "TCP  10.96.0.21:80 rr persistent 10800" in run.output
    assert "-> 10.244.1.2:8080" in run.output and "Masq" in run.output
    assert result["same_sync_changes"] == 0, "a sync without changes must not touch virtual servers"


def test_cluster_ip_spreads_over_both_endpoints(guest):
    result, _ = guest
    assert result["cluster_ip"]["counts"] == {"pod-a": 6, "pod-b": 6}   # rr: strictly alternating
    # the client is outside the cluster CIDR: masqueraded to the node's bridge address
    assert result["cluster_ip"]["sources"] == ["10.244.1.1"]


def test_pod_reaches_cluster_ip_and_itself(guest):
    result, _ = guest
    assert result["pod_to_cluster_ip"]["counts"] == {"pod-a": 6, "pod-b": 6}
    # in-cluster sources keep their address; only the hairpin (pod-a to itself) is masqueraded
    assert result["pod_to_cluster_ip"]["sources"] == ["10.244.1.1", "10.244.1.2"]


def test_node_port_answers_from_the_client(guest):
    result, _ = guest
    assert sum(result["node_port"]["counts"].values()) == 4
    assert result["node_port"]["sources"] == ["10.244.1.1"]


def test_client_ip_affinity_pins_the_client(guest):
    result, _ = guest
    assert len(result["affinity"]["counts"]) == 1, result["affinity"]


def test_removed_endpoint_gets_no_more_traffic(guest):
    result, _ = guest
    # incremental: one real server out of the ClusterIP and one out of the NodePort
    assert result["removal_sync"] == {"error": None, "changes": 2, "full": False}
    assert result["after_removal"]["counts"] == {"pod-b": 12}
    assert result["after_removal_node_port"]["counts"] == {"pod-b": 4}


def test_partial_sync_adds_a_service_without_reading_the_kernel(guest):
    result, _ = guest
    # one virtual server, its two real servers and its address; its masquerade rule inserted
    assert result["added_sync"] == {"error": None, "changes": 4, "full": False}
    assert result["added_service"] == {"counts": {"pod-a": 6, "pod-b": 6}, "sources": ["10.244.1.1"]}


def test_full_sync_after_partial_ones_finds_the_kernel_as_planned(guest):
    result, _ = guest
    assert result["full_after_partials"] == {"error": None, "changes": 0, "same_rules": True}


def test_a_partial_sync_the_kernel_refuses_makes_the_next_one_full(guest):
    result, run = guest
    outcome = result["interference"]
    assert (outcome["partial_failed"], outcome["next_full"], outcome["next_error"]) == (True, True, None), run.explain()
    assert outcome["after"]["counts"] == {"pod-b": 12}
    assert outcome["fourth"]["counts"] == {"pod-a": 6, "pod-b": 6}


def test_partial_sync_deletes_only_rules_no_service_port_uses_any_more(guest):
    result, run = guest
    assert result["deleting_sync"] == {"error": None, "full": False, "hairpin_left": 0, "full_changes": 0,
                                       "same_rules": True}, run.explain()


def test_cleanup_leaves_nothing(guest):
    result, _ = guest
    assert result["leftovers"] == {"kube_ipvs0": False, "virtual_servers": [], "kube_rules": []}

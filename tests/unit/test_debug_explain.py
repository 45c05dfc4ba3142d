"""explain's plans from records, without the kernel: the steps come in the order a packet
meets them, with the exact commands (kube-proxy's chain names) and a grep -F that
selects what run() shows; a missing piece is flagged."""
from __future__ import annotations

import os

from netlab.debug.explain import (Explanation, NodeFacts, Probe, explain_node, explain_pod, explain_service,
                                  iptables_save, run)
from netlab.model import load_lab
from netlab.model.endpoints import EndpointPort, EndpointSlice, SliceEndpoint
from netlab.model.workloads import Service, ServicePort
from netlab.state import LabPaths, PodStatus
from proxy.source import service_ports, slice_endpoints

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWO_NODE = os.path.join(ROOT, "topologies", "two-node.yaml")
LAB = load_lab(TWO_NODE, name="ex")
NODES = [NodeFacts("node-a", "ex-node-a", "192.168.56.11", "10.244.1.0/24", "0e:00:00:00:00:01"),
         NodeFacts("node-b", "ex-node-b", "192.168.56.12", "10.244.2.0/24", "0e:00:00:00:00:02")]
ECHO = Service("echo", (ServicePort(80, 8080, name="http"),), selector={"app": "echo"}, cluster_ip="10.96.0.2")
SLICES = [EndpointSlice("echo-node-a", "default", "echo", "node-a", (EndpointPort("http", 8080),),
                        (SliceEndpoint("10.244.1.2", "node-a", "echo-a"),)),
          EndpointSlice("echo-node-b", "default", "echo", "node-b", (EndpointPort("http", 8080),),
                        (SliceEndpoint("10.244.2.2", "node-b", "echo-b"),))]


def commands(ex: Explanation) -> list[str]:
    return [s.probe.command for s in ex.steps]


def service(lab=LAB, svc=ECHO, slices=SLICES):
    return explain_service(lab, svc, slices, NODES[0], NODES, client_netns="ex-default.client",
                           pod_netns={"10.244.1.2": "ex-default.echo-a"}, backend=None)


def test_iptables_service_in_packet_order_with_kube_proxys_chain_names():
    ex = service()
    cmds = commands(ex)
    assert cmds[:2] == ["ip netns exec ex-default.client dig +short A echo.default.svc.cluster.local",
                        "ip netns exec ex-default.client dig +short SRV _http._tcp.echo.default.svc.cluster.local"]
    save = "ip netns exec ex-node-a iptables-save -t nat | grep -F -e"
    # KUBE-SVC- + base32(sha256("default/echo:http" + "tcp"))[:16], as docs/services.md shows it
    assert cmds[2] == f"{save} '-j KUBE-SVC-ZJMBFACUQCTMIK2C'"
    assert cmds[3] == f"{save} '-A KUBE-SVC-ZJMBFACUQCTMIK2C '"
    assert cmds[4].startswith(f"{save} '-A KUBE-SEP-") and "10.244.1.2:8080" in ex.steps[4].title
    assert cmds[5].startswith(f"{save} '-A KUBE-SEP-") and "10.244.2.2:8080" in ex.steps[5].title
    # after the DNAT, routing: the local endpoint out cni0 and its veth, the remote one over VXLAN
    assert cmds[6:] == [
        "ip netns exec ex-node-a ip route get 10.244.1.2",
        "ip netns exec ex-node-a ip -o link show master cni0 | grep -F -e 'link-netns ex-default.echo-a'",
        "ip netns exec ex-node-a ip route get 10.244.2.2",
        "ip netns exec ex-node-a ip route show 10.244.2.0/24",
        "ip netns exec ex-node-a ip neigh show 10.244.2.0 dev flannel.1",
        "ip netns exec ex-node-a bridge fdb show dev flannel.1 | grep -F -e 0e:00:00:00:00:02",
        "ip netns exec ex-node-a iptables-save -t nat | grep -F -e '-A KUBE-POSTROUTING' -e '-A KUBE-MARK-MASQ'"]
    assert ex.steps[11].expect == "dst 192.168.56.12"


def test_a_service_without_endpoints_is_shown_by_its_reject():
    ex = service(slices=[])
    assert commands(ex)[2] == ("ip netns exec ex-node-a iptables-save -t filter | grep -F -e "
                               "'\"default/echo:http has no endpoints\"'")
    assert ex.steps[2].expect == "REJECT"


def test_nftables_service_lists_the_dispatch_map_then_its_chains():
    from dataclasses import replace
    lab = replace(LAB, proxy_mode="nftables")
    cmds = commands(service(lab))
    nft = "ip netns exec ex-node-a nft list"
    assert cmds[2] == f"{nft} map ip kube-proxy service-ips | grep -F -e '10.96.0.2 . tcp . 80 '"
    assert cmds[3] == f"{nft} chain ip kube-proxy service-2GUAAQIC-default/echo/tcp/http"
    assert [c.split()[-1].split("__")[-1] for c in cmds[4:6]] == ["10.244.1.2/8080", "10.244.2.2/8080"]
    assert cmds[-1] == f"{nft} chain ip kube-proxy masquerading"


def test_ipvs_service_asks_ipvsadm_for_the_virtual_server():
    from dataclasses import replace
    cmds = commands(service(replace(LAB, proxy_mode="ipvs")))
    assert cmds[2] == "ip netns exec ex-node-a ipvsadm -Ln -t 10.96.0.2:80"


def test_run_filters_like_grep_f_and_flags_what_is_missing():
    ex = Explanation("Node", "node-a")
    ex.add("fdb", "ns", ("bridge", "fdb", "show", "dev", "flannel.1"), grep=("0e:00:00:00:00:02",),
           expect="dst 192.168.56.12")
    ex.add("fdb again", "ns", ("bridge", "fdb", "show", "dev", "flannel.1"), grep=("0e:00:00:00:00:03",),
           expect="dst 192.168.56.13")
    calls = []

    def runner(argv):
        calls.append(argv)
        return "0e:00:00:00:00:02 dst 192.168.56.12 self permanent\n33:33:00:00:00:01 self permanent\n", None

    run(ex, runner)
    assert len(calls) == 1   # one command, run once for both steps
    assert ex.steps[0].output == ("0e:00:00:00:00:02 dst 192.168.56.12 self permanent",)
    assert not ex.steps[0].missing and ex.steps[1].missing
    assert "MISSING: expected a line with 'dst 192.168.56.13'" in ex.text()


def test_a_probe_is_the_command_a_student_pastes():
    p = Probe("lab-node-a", ("iptables-save", "-t", "nat"), ("-A KUBE-SEP-X ", "it's"))
    assert p.command == "ip netns exec lab-node-a iptables-save -t nat | grep -F -e '-A KUBE-SEP-X ' -e 'it'\"'\"'s'"
    assert Probe(None, ("cat", "/run/x")).command == "cat /run/x"


def test_node_shows_each_peers_route_neighbour_and_fdb_entry():
    ex = explain_node(LAB, NODES[1], NODES, LabPaths("ex", root="/run/netlab"), "iptables", backend=None)
    cmds = commands(ex)
    assert cmds[:3] == ["ip netns exec ex-node-b ip -o -4 addr show dev eth0", "cat /run/netlab/ex/nodes/node-b/subnet.env",
                        "ip netns exec ex-node-b ip -d link show flannel.1 | grep -F -e 'vxlan id'"]
    peer = cmds.index("ip netns exec ex-node-b ip route show 10.244.1.0/24")
    assert cmds[peer + 1:peer + 3] == ["ip netns exec ex-node-b ip neigh show 10.244.1.0 dev flannel.1",
                                       "ip netns exec ex-node-b bridge fdb show dev flannel.1 | grep -F -e "
                                       "0e:00:00:00:00:01"]
    assert ex.steps[peer + 2].expect == "dst 192.168.56.11"


def test_pod_from_its_services_dnat_to_its_eth0():
    st = PodStatus("node-a", "ex-default.echo-a", "Running", "10.244.1.2")
    (port,) = service_ports(ECHO)
    serving = [(port, ep) for ep in slice_endpoints(port, SLICES) if ep.ip == "10.244.1.2"]
    pod = type("P", (), {"namespace": "default", "name": "echo-a"})()
    cmds = commands(explain_pod(LAB, pod, st, NODES[0], NODES, serving, backend=None))
    order = [next(i for i, c in enumerate(cmds) if key in c) for key in
             ("10-244-1-2.default.pod.cluster.local", "-A KUBE-SEP-", "ex-node-b ip route get 10.244.1.2",
              "ex-node-b bridge fdb", "ex-node-a ip route get 10.244.1.2", "link-netns ex-default.echo-a",
              "ex-default.echo-a ip -o -4 addr show dev eth0", "resolv.conf")]
    assert order == sorted(order)


def test_iptables_save_names_the_backend_only_when_it_is_not_the_systems():
    from proxy.iptables import backend as be
    other = "legacy" if be.binary_backend() == "nft" else "nft"
    assert iptables_save(be.binary_backend()) == iptables_save(None) == "iptables-save"
    assert iptables_save(other) == f"iptables-{other}-save"


def test_nftables_maps_layout_dispatch_then_the_shared_chain_then_its_slots():
    from dataclasses import replace
    cmds = commands(service(replace(LAB, proxy_mode="nftables", nftables_layout="maps")))
    nft = "ip netns exec ex-node-a nft list"
    assert cmds[2:7] == [f"{nft} map ip kube-proxy service-ips | grep -F -e '10.96.0.2 . tcp . 80 '",
                         f"{nft} chain ip kube-proxy lb-2",
                         f"{nft} map ip kube-proxy service-endpoints-tcp | grep -F -e '10.96.0.2 . tcp . 80 . 0 '",
                         f"{nft} map ip kube-proxy service-endpoints-tcp | grep -F -e '10.96.0.2 . tcp . 80 . 1 '",
                         f"{nft} set ip kube-proxy hairpin-endpoints | grep -F -e '10.244.1.2 . 10.244.1.2,' "
                         f"-e '10.244.1.2 . 10.244.1.2 }}'"]

"""kube-netlab trace on a real two-node lab, through the CLI: the VXLAN hop of a
cross-node probe, the DNAT to the endpoint that answered with the KUBE-SEP (or
nftables chain) that chose it in both proxy modes, DNAT and SNAT of a NodePort
from the external host, a deleted FDB entry and a too-small pod MTU named as
the drop's cause, and the probe's pcap read by tshark."""
from __future__ import annotations

import html
import json
import os
import signal
import subprocess

import pytest

from labrun import TWO_NODE, Lab, items, kn, lab_leftovers
from netlab import state

NODE_IPS = {"node-a": "192.168.56.11", "node-b": "192.168.56.12"}


def lab_file(tmp_path, mode: str) -> str:
    text = open(TWO_NODE).read().replace("proxyMode: iptables", f"proxyMode: {mode}")
    text = text.replace("- workloads/", f"- {os.path.dirname(TWO_NODE)}/workloads/")
    path = tmp_path / f"lab-{mode}.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def lab(request, tmp_path_factory):
    lab = Lab(lab_file(tmp_path_factory.mktemp(request.param), request.param))
    lab.mode = request.param
    try:
        lab.up()
        pods = [p for p in items(lab.name, "pods", "-n", "default") if p["metadata"]["name"].startswith("echo-")]
        lab.pods = {node: [p for p in pods if p["spec"]["nodeName"] == node] for node in NODE_IPS}
        yield lab
    finally:
        lab.down()
    assert lab_leftovers(lab.name) == []


def trace(lab, *args) -> dict:
    out = kn("trace", *args, "-o", "json", "--lab", lab.name, check=False)
    assert out.returncode in (0, 1), out.stderr
    result = json.loads(out.stdout)
    assert (out.returncode == 0) == (result["verdict"] == "delivered")
    return result


def name(pod) -> str:
    return pod["metadata"]["name"]


def test_pod_to_pod_across_nodes_shows_the_vxlan_hop(lab):
    a, b = lab.pods["node-a"][0], lab.pods["node-b"][0]
    result = trace(lab, name(a), name(b))
    assert result["verdict"] == "delivered" and result["drop"] is None and result["nat"] == []
    encapsulated = [h for h in result["hops"] if h["encap"]]
    assert encapsulated, result["hops"]
    for hop in encapsulated:
        assert hop["encap"] == {**hop["encap"], "type": "vxlan", "vni": 1, "port": 8472,
                                "outerSrc": NODE_IPS["node-a"], "outerDst": NODE_IPS["node-b"]}
    where = [(h["netns"], h["interface"], h["direction"]) for h in result["hops"]]
    node_a, node_b = f"{lab.name}-node-a", f"{lab.name}-node-b"
    assert where[0] == (a["status"]["netlab"]["netns"], "eth0", "out")
    assert where[-1] == (b["status"]["netlab"]["netns"], "eth0", "in")
    for hop in [(node_a, "cni0", "in"), (node_a, "flannel.1", "out"), (node_a, "eth0", "out"),
                (f"{lab.name}-underlay", "node-b", "out"), (node_b, "flannel.1", "in"), (node_b, "cni0", "out")]:
        assert hop in where, hop
    assert where.index((node_a, "flannel.1", "out")) < where.index((node_a, "eth0", "out")) \
        < where.index((node_b, "eth0", "in")) < where.index((node_b, "flannel.1", "in"))
    reply = result["reply"]["hops"]
    assert reply[0]["src"] == f"{b['status']['podIP']}:8080" and reply[-1]["netns"] == where[0][0]
    assert any(h["encap"] and h["encap"]["outerSrc"] == NODE_IPS["node-b"] for h in reply)


def test_pod_to_clusterip_names_the_dnat_to_the_endpoint_that_answered(lab):
    a = lab.pods["node-a"][0]
    result = trace(lab, name(a), "svc/echo")
    assert result["verdict"] == "delivered"
    [dnat] = [n for n in result["nat"] if n["type"] == "DNAT"]
    endpoints = {f"{p['status']['podIP']}:8080" for pods in lab.pods.values() for p in pods}
    svc_ip = next(s for s in items(lab.name, "svc", "-n", "default") if s["metadata"]["name"] == "echo")["spec"]["clusterIP"]
    assert dnat["netns"] == f"{lab.name}-node-a" and dnat["from"] == f"{svc_ip}:80" and dnat["to"] in endpoints
    assert result["reply"]["hops"][0]["src"] == dnat["to"]          # the endpoint that answered
    assert result["reply"]["hops"][-1]["src"] == f"{svc_ip}:80"     # and the reply un-NATed on the way back
    ip, port = dnat["to"].split(":")
    if lab.mode == "iptables":
        assert dnat["chain"].startswith("KUBE-SEP-") and f"--to-destination {dnat['to']}" in dnat["rule"]
        assert [c[:9] for c in dnat["chains"][-3:]] == ["KUBE-SERV", "KUBE-SVC-", "KUBE-SEP-"]
    else:
        assert dnat["chain"].startswith("endpoint-") and dnat["chain"].endswith(f"default/echo/tcp/http__{ip}/{port}")
        assert f"dnat to {dnat['to']}" in dnat["rule"] and "service-ips" in dnat["chains"]
    assert f"dst={svc_ip}" in dnat["conntrack"] and f"src={ip}" in dnat["conntrack"]


def test_a_service_dns_name_resolves_like_the_pod_would(lab):
    result = trace(lab, "default/" + name(lab.pods["node-b"][0]), "echo.default")
    assert result["verdict"] == "delivered" and result["nat"][0]["type"] == "DNAT"


def test_external_to_nodeport_shows_dnat_and_snat(lab):
    result = trace(lab, "external", "node/node-a:30080")
    assert result["verdict"] == "delivered"
    kinds = {n["type"]: n for n in result["nat"]}
    assert kinds["DNAT"]["from"] == f"{NODE_IPS['node-a']}:30080" and kinds["DNAT"]["to"].endswith(":8080")
    assert kinds["SNAT"]["from"].startswith("192.168.56.254:") and kinds["SNAT"]["netns"] == f"{lab.name}-node-a"
    assert "masquerade" in kinds["SNAT"]["rule"].lower()
    assert result["reply"]["hops"][-1]["netns"] == f"{lab.name}-external"


def test_a_deleted_fdb_entry_is_named_with_the_node_and_flannel_1(lab):
    if lab.mode != "iptables":
        pytest.skip("the overlay is the same in every proxy mode")
    a, b = lab.pods["node-a"][0], lab.pods["node-b"][0]
    node_a = f"{lab.name}-node-a"
    fdb = json.loads(subprocess.run(["bridge", "-n", node_a, "-j", "fdb", "show", "dev", "flannel.1"],
                                    capture_output=True, text=True, check=True).stdout)
    [entry] = [e for e in fdb if e.get("dst") == NODE_IPS["node-b"]]
    agent = state.read_pid(state.LabPaths(lab.name).agent_pid("node-a"))
    os.kill(agent, signal.SIGSTOP)   # its resync would put the entry back within 5 s
    try:
        subprocess.run(["bridge", "-n", node_a, "fdb", "del", entry["mac"], "dev", "flannel.1",
                        "dst", NODE_IPS["node-b"], "self"], check=True)
        result = trace(lab, name(a), name(b))
    finally:
        subprocess.run(["bridge", "-n", node_a, "fdb", "replace", entry["mac"], "dev", "flannel.1",
                        "dst", NODE_IPS["node-b"], "self", "permanent"], check=True)
        os.kill(agent, signal.SIGCONT)
    assert result["verdict"] == "dropped"
    drop = result["drop"]
    assert (drop["netns"], drop["interface"]) == (node_a, "flannel.1")
    assert "FDB" in drop["reason"] and entry["mac"] in drop["reason"] and "node-b" in drop["reason"]
    assert result["hops"][-1]["interface"] == "flannel.1" and result["reply"]["hops"] == []


def test_a_pod_mtu_below_a_df_probe_is_named_as_mtu(lab):
    if lab.mode != "iptables":
        pytest.skip("the overlay is the same in every proxy mode")
    a, b = lab.pods["node-a"][0], lab.pods["node-b"][0]
    netns = b["status"]["netlab"]["netns"]
    subprocess.run(["ip", "-n", netns, "link", "set", "eth0", "mtu", "1000"], check=True)
    try:
        result = trace(lab, name(a), name(b), "--size", "1400")
    finally:
        subprocess.run(["ip", "-n", netns, "link", "set", "eth0", "mtu", "1450"], check=True)
    assert result["verdict"] == "dropped" and result["drop"]["reason"].startswith("MTU")
    assert "1000" in result["drop"]["reason"] and result["drop"]["netns"] == f"{lab.name}-node-b"


def test_the_probes_pcap_is_read_by_tshark_with_each_hop_named(lab, tmp_path):
    if lab.mode != "iptables":
        pytest.skip("one pcap check is enough")
    pcap = tmp_path / "probe.pcap"
    a, b = lab.pods["node-a"][0], lab.pods["node-b"][0]
    kn("trace", name(a), name(b), "-w", str(pcap), "--lab", lab.name)
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", "udp.port==8472,vxlan", "-T", "fields",
                          "-e", "frame.interface_name", "-e", "vxlan.vni", "-e", "tcp.flags.str"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert f"{lab.name}-node-a:flannel.1" in {r[0] for r in rows}
    assert any(r[0] == f"{lab.name}-node-a:eth0" and r[1] == "1" for r in rows)      # VXLAN decoded, VNI 1
    assert len(rows) >= 20                                                           # the probe and the reply


def test_table_output_svg_and_bad_input(lab, tmp_path):
    a = lab.pods["node-a"][0]
    svg = tmp_path / "path.svg"
    out = kn("trace", name(a), "svc/echo", "--svg", str(svg), "--lab", lab.name).stdout
    drawn = html.unescape(svg.read_text())     # Graphviz escapes "-" and ">" in its text
    assert drawn.lstrip().startswith(("<?xml", "<svg")) and "DNAT 10.96.0.2:80 -> 10.244." in drawn
    assert ("(KUBE-SEP-" if lab.mode == "iptables" else "(endpoint-") in drawn and "[1," in drawn   # numbered hops
    assert out.splitlines()[0].startswith(f"trace default/{name(a)}") and "DNAT in node/node-a" in out
    assert out.rstrip().splitlines()[-1].startswith("DELIVERED")
    bad = kn("trace", name(a), "svc/nope", "--lab", lab.name, check=False)
    assert bad.returncode == 1 and "no Service 'nope' in namespace default" in bad.stderr
    bad = kn("trace", name(a), "svc/echo", "--port", "81", "--lab", lab.name, check=False)
    assert bad.returncode == 1 and "has no port 81/TCP" in bad.stderr and "80/TCP" in bad.stderr


def test_a_service_without_endpoints_is_named(lab):
    result = trace(lab, name(lab.pods["node-a"][0]), "svc/kubernetes")
    assert result["verdict"] == "dropped" and result["hops"][0]["dst"] == "10.96.0.1:443"
    assert result["drop"]["reason"].startswith("no endpoints: Service default/kubernetes has no ready endpoints")
    assert result["drop"]["netns"] == f"{lab.name}-node-a"      # the node's kernel answered for it

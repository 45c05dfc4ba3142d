"""kube-netlab capture on a real two-node lab: a pod, a node and the underlay at
once, one decoded line a packet (VXLAN down to the inner frame), and one
time-ordered pcapng that tshark reads with each packet's hop named."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from labrun import Lab, in_pod, items, kn, lab_leftovers


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    try:
        lab.up()
        pods = [p for p in items(lab.name, "pods", "-n", "default") if p["metadata"]["name"].startswith("echo-")]
        lab.a = next(p for p in pods if p["spec"]["nodeName"] == "node-a")
        lab.b = next(p for p in pods if p["spec"]["nodeName"] == "node-b")
        yield lab
    finally:
        lab.down()
    assert lab_leftovers(lab.name) == []


def pinging(lab, stop: threading.Event) -> threading.Thread:
    """Pings from pod a to pod b until stopped: the capture's traffic, whenever it starts listening."""
    def run():
        while not stop.is_set():
            in_pod(lab.name, lab.a["metadata"]["name"], "ping", "-c", "1", "-W", "1", lab.b["status"]["podIP"],
                   check=False)
            time.sleep(0.1)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_capture_merges_targets_into_one_pcapng_tshark_reads(lab, tmp_path):
    pcap = tmp_path / "merged.pcapng"
    stop = threading.Event()
    thread = pinging(lab, stop)
    try:
        out = kn("capture", lab.a["metadata"]["name"], "node/node-a", "underlay", "--filter", "icmp or udp port 8472",
                 "-c", "30", "--timeout", "20", "-w", str(pcap), "--lab", lab.name)
    finally:
        stop.set()
        thread.join()
    lines = out.stdout.splitlines()
    assert len(lines) == 30
    assert any(f" node/node-a:eth0 out VXLAN vni 1 192.168.56.11 > 192.168.56.12 | {lab.a['status']['podIP']} > "
               f"{lab.b['status']['podIP']} ICMP echo-request" in line for line in lines), lines
    assert any(f"default/{lab.a['metadata']['name']}:eth0 out" in line for line in lines)
    assert any(" underlay:node-a in " in line for line in lines)
    fields = subprocess.run(["tshark", "-r", str(pcap), "-d", "udp.port==8472,vxlan", "-T", "fields",
                             "-e", "frame.time_epoch", "-e", "frame.interface_name", "-e", "vxlan.vni",
                             "-e", "frame.comment"], capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in fields.splitlines()]
    assert len(rows) == 30
    assert [float(r[0]) for r in rows] == sorted(float(r[0]) for r in rows)          # one time-ordered file
    assert {r[1] for r in rows} >= {"node/node-a:flannel.1", "node/node-a:eth0", "underlay:node-a"}
    assert any(r[1] == "node/node-a:eth0" and r[2] == "1" for r in rows)
    assert all(r[3].startswith(r[1]) for r in rows)                                   # the comment names the hop


def test_capture_refuses_bad_input_naming_the_fix(lab):
    out = kn("capture", "node/node-a", "-i", "nope0", "--timeout", "1", "--lab", lab.name, check=False)
    assert out.returncode == 1 and "no interface 'nope0'" in out.stderr and "ip -n" in out.stderr
    out = kn("capture", "node/node-a", "--filter", "tcp port", "--timeout", "1", "--lab", lab.name, check=False)
    assert out.returncode == 1 and "--filter" in out.stderr
    out = kn("capture", "nosuchpod", "--timeout", "1", "--lab", lab.name, check=False)
    assert out.returncode == 1 and "pod default/nosuchpod not found" in out.stderr

"""node join's choices on a host, in a namespace of the test standing in for a Vagrant VM:
which interface carries the overlay, refusing a host where cni0 is someone else's,
re-running join (converges), and control up starting its own etcd with --listen."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cni import netns as _netns
from netlab.cluster.control import control_up
from netlab.cluster.host import HostError, choose_underlay
from netlab.store import open_store
from netlab.store.subnets import get_network_config

from test_cluster_hosts import STORE, Cluster, on


def _veth_with(ns: str, ifname: str, address: str) -> None:
    """An interface with an address in ns (a veth whose peer stays there too: no dummy module here)."""
    subprocess.run(["ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", ifname + "p"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", address, "dev", ifname], check=True)
    for dev in (ifname, ifname + "p"):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)


@pytest.fixture
def vagrant_vm(namespaces):
    """eth0 on VirtualBox's NAT (10.0.2.15, the default route), eth1 on the private network."""
    ns = namespaces.new("vm")
    _veth_with(ns, "eth0", "10.0.2.15/24")
    _veth_with(ns, "eth1", "192.168.56.11/24")
    subprocess.run(["ip", "-n", ns, "route", "add", "default", "via", "10.0.2.2"], check=True)
    return ns


def test_the_underlay_is_the_private_network_never_the_management_nic(vagrant_vm):
    with _netns.entered(vagrant_vm):
        picked = choose_underlay()
        assert (picked.iface, str(picked.ip)) == ("eth1", "192.168.56.11")
        assert "skipped eth0 (10.0.2.15, Vagrant's management network)" in picked.why
        assert choose_underlay(store_host="192.168.56.10").why.startswith("eth1 is on the store's network")
        assert choose_underlay(iface="eth0").iface == "eth0"        # asked for: given, as flanneld does
        assert choose_underlay(public_ip="192.168.56.11").iface == "eth1"
        with pytest.raises(HostError, match="--iface eth7: no such interface.*eth0, eth1"):
            choose_underlay(iface="eth7")
        with pytest.raises(HostError, match="not an address of this machine"):
            choose_underlay(public_ip="192.168.56.99")


def test_join_again_converges_and_a_foreign_cni0_is_refused(namespaces, tmp_path):
    cluster = Cluster(namespaces, tmp_path)
    try:
        on(cluster.vm1, "control", "up", "--store", STORE, "--lab", cluster.name)
        first = on(cluster.vm1, "node", "join", "--store", STORE, "--name", cluster.vm1).stdout
        again = on(cluster.vm1, "node", "join", "--store", STORE, "--name", cluster.vm1).stdout
        assert "agent started" in first and "agent already running" in again and "is Ready" in again
        assert list(cluster.leases()) == ["192.168.56.11"]
        # vm2 has a cni0 nobody recorded (another CNI): join refuses and makes nothing
        subprocess.run(["ip", "-n", cluster.vm2, "link", "add", "cni0", "type", "bridge"], check=True)
        refused = on(cluster.vm2, "node", "join", "--store", STORE, "--name", cluster.vm2, check=False)
        assert refused.returncode == 1 and "cni0 already exist" in refused.stderr
        assert "flannel.1" not in subprocess.run(["ip", "-n", cluster.vm2, "link"], capture_output=True,
                                                 text=True).stdout
    finally:
        cluster.teardown()


def test_control_up_listen_starts_etcd_and_running_it_again_uses_it(namespaces, tmp_path):
    ns = namespaces.new("ctl")
    _veth_with(ns, "eth1", "192.168.56.11/24")
    data = str(tmp_path / "etcd")
    try:
        with _netns.entered(ns):
            lab, url = control_up(None, listen="192.168.56.11", name="ctl", etcd_data_dir=data)
            assert url == "etcd://192.168.56.11:2379" and str(lab.underlay.cidr) == "192.168.56.0/24"
            lab2, _ = control_up(url, listen="192.168.56.11", name="ctl", etcd_data_dir=data)
            store = open_store(url)
            assert str(get_network_config(store).network) == "10.244.0.0/16"
            assert sorted(k.key for k in store.list("/netlab/services/")) == [
                "/netlab/services/default/kubernetes", "/netlab/services/kube-system/kube-dns"]
            store.close()
    finally:
        out = subprocess.run(["pgrep", "-f", f"--data-dir {data}"], capture_output=True, text=True).stdout
        for pid in out.split():
            os.kill(int(pid), signal.SIGKILL)


HOST_MODE_PROBE = """
import sys
from netlab.realize import RootNamespaceError, enable_host_mode, ensure_node, remove_netns
from netlab.realize.namespace import run_in
try:
    run_in("/proc/self/ns/net", ["true"])
    sys.exit("changed the host namespace without host mode")
except RootNamespaceError:
    pass
here = enable_host_mode()
ensure_node(here)                       # the host is the node: sysctls set in it, nothing created
print(run_in(here, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip())
try:
    remove_netns(here)
    sys.exit("removed the host namespace in host mode")
except RootNamespaceError as e:
    print(e)
"""


def test_host_mode_lets_realizers_change_the_host_but_never_remove_it(namespaces):
    # a process of its own, in a namespace of the test: host mode is per process, and
    # the test process itself must never enable it (its namespace is the real host's)
    host = namespaces.new("host")
    out = subprocess.run(["nsenter", f"--net=/run/netns/{host}", "--", sys.executable, "-c", HOST_MODE_PROBE],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr + out.stdout
    forwarding, refusal = out.stdout.strip().splitlines()
    assert forwarding == "1" and "refusing to remove it" in refusal

"""cni.rtnl against the kernel: the requests of a CNI ADD made by hand-packed netlink in
namespaces the test creates, checked with iproute2's own view of the result."""
from __future__ import annotations

import os
import subprocess

import pytest

from cni.rtnl import NetlinkError, Rtnl


def ip(ns, *args):
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=True).stdout


def test_an_add_made_by_hand_is_what_iproute2_sees(namespaces):
    host_ns, pod_ns = namespaces.new("rh"), namespaces.new("rp")
    host_fd = os.open(f"/run/netns/{host_ns}", os.O_RDONLY)
    with Rtnl(f"/run/netns/{host_ns}") as host, Rtnl(f"/run/netns/{pod_ns}") as pod:
        host.link("add", ifname="cni0", kind="bridge", address="02:00:00:00:00:01", state="up", mtu=1450)
        br = host.link("get", ifname="cni0")[0]
        assert br.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "bridge" and br.get("IFLA_MTU") == 1450
        pod.link("add", ifname="eth0", kind="veth", state="up", mtu=1450,
                 peer={"ifname": "vethtest0", "net_ns_fd": host_fd, "address": "02:00:00:00:00:02", "mtu": 1450})
        eth0 = pod.link("get", ifname="eth0")[0]
        peer = eth0.get("IFLA_LINK")
        assert host.link_lookup("vethtest0") == [peer]
        host.link("set", index=peer, master=br["index"], state="up", ifalias="netlab-bridge net=n id=c")
        host.brport("set", index=peer, mode=1)
        pod.addr("add", index=eth0["index"], address="10.250.0.2", prefixlen=24)
        host.addr("add", index=br["index"], address="10.250.0.1", prefixlen=24)
        pod.route("add", dst="0.0.0.0/0", oif=eth0["index"], gateway="10.250.0.1")

        with pytest.raises(NetlinkError) as e:
            host.addr("add", index=br["index"], address="10.250.0.1", prefixlen=24)
        assert e.value.code == 17  # EEXIST, as the plugin expects it
        with pytest.raises(NetlinkError) as e:
            pod.link("get", ifname="nope0")
        assert e.value.code == 19  # ENODEV
        assert [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=eth0["index"], family=2)] == [
            ("10.250.0.2", 24)]
        assert ("10.250.0.1", 0) in {(r.get("RTA_GATEWAY"), r["dst_len"]) for r in pod.get_routes(oif=eth0["index"])}
        assert "netlab-bridge net=n id=c" in {link.get("IFLA_IFALIAS") for link in host.get_links()}
    os.close(host_fd)

    veth = ip(host_ns, "-d", "link", "show", "vethtest0")
    assert "master cni0" in veth and "mtu 1450" in veth and "alias netlab-bridge net=n id=c" in veth
    assert "02:00:00:00:00:02" in veth and "hairpin on" in subprocess.run(
        ["bridge", "-n", host_ns, "-d", "link", "show", "dev", "vethtest0"], capture_output=True, text=True).stdout
    assert "inet 10.250.0.2/24" in ip(pod_ns, "addr", "show", "eth0")
    assert "default via 10.250.0.1 dev eth0 proto static" in ip(pod_ns, "route")
    ping = subprocess.run(["ip", "netns", "exec", pod_ns, "ping", "-c", "1", "-W", "2", "10.250.0.1"],
                          capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    with Rtnl(f"/run/netns/{pod_ns}") as pod:
        pod.link("del", index=pod.link_lookup("eth0")[0])
        assert pod.link_lookup("eth0") == []
    assert "vethtest0" not in ip(host_ns, "link")  # the peer goes with it

"""netlab-bridge against the real kernel: namespaces, veths, a bridge, iptables,
real packets. Every plugin runs inside a node namespace the test creates."""
from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import subprocess
import sys
import time

import pytest

from cni import iptables, netns
from cni.main import bridge
from cni.spec import CniError
from cnirun import exec_conflist, exec_plugin
from conftest import unique_name

PLUGIN = "netlab-bridge"


def make_conf(data_dir, name=None, subnet="10.99.0.0/24", ipam_type="netlab-ipam", version="1.0.0", **extra):
    conf = {"cniVersion": version, "name": name or unique_name("net"), "type": PLUGIN, "bridge": "cni0",
            "isGateway": True, "isDefaultGateway": True, "ipMasq": True, "hairpinMode": True,
            "ipam": {"type": ipam_type, "dataDir": str(data_dir), "ranges": [[{"subnet": subnet}]]}}
    conf.update(extra)
    return conf


def leases(conf):
    d = os.path.join(conf["ipam"]["dataDir"], conf["name"])
    if not os.path.isdir(d):
        return []
    return sorted(f for f in os.listdir(d) if f[0].isdigit() or ":" in f)


def node_links(node):
    out = subprocess.run(["ip", "-n", node, "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]


def nat_chains(node):
    out = subprocess.run(["ip", "netns", "exec", node, "iptables-save", "-t", "nat"],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "CNI-" in line]


def in_ns(ns, *cmd, **kw):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=30, **kw)


@pytest.fixture
def node(namespaces):
    return namespaces.new("node")


def add(conf, node, pod, cid=None, ifname="eth0", **kw):
    return exec_plugin(PLUGIN, "ADD", conf, node, cid or pod, f"/run/netns/{pod}", ifname, **kw)


def delete(conf, node, pod, cid=None, ifname="eth0"):
    return exec_plugin(PLUGIN, "DEL", conf, node, cid or pod, f"/run/netns/{pod}", ifname)


def pod_ip(result):
    return str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)


class TcpEcho:
    """A one-line TCP server in a pod: replies with what it got."""
    CODE = ("import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
            "s.bind(('0.0.0.0',{port}));s.listen(8);print('ready',flush=True)\n"
            "while True:\n c,_=s.accept();c.sendall(b'echo:'+c.recv(100));c.close()")

    def __init__(self, ns, port=8080):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", self.CODE.format(port=port)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def close(self):
        self.proc.kill()
        self.proc.wait()


def tcp_request(ns, ip, port, payload="hi"):
    code = (f"import socket;c=socket.create_connection(('{ip}',{port}),timeout=5);c.sendall(b'{payload}');"
            "print(c.recv(100).decode())")
    return in_ns(ns, sys.executable, "-c", code).stdout.strip()


def test_two_pods_on_one_bridge_reach_each_other(node, namespaces, tmp_path):
    conf = make_conf(tmp_path)
    p1, p2 = namespaces.new("pod"), namespaces.new("pod")
    rc1, r1 = add(conf, node, p1)
    rc2, r2 = add(conf, node, p2)
    assert rc1 == 0 and rc2 == 0, (r1, r2)
    # result shape: bridge, host veth, container interface in its sandbox
    assert [i["name"] for i in r1["interfaces"]] == ["cni0", bridge.host_veth_name(p1, "eth0"), "eth0"]
    assert r1["interfaces"][2]["sandbox"] == f"/run/netns/{p1}"
    assert r1["ips"][0]["interface"] == 2 and r1["ips"][0]["gateway"] == "10.99.0.1"
    assert r1["cniVersion"] == "1.0.0"
    ip1, ip2 = pod_ip(r1), pod_ip(r2)
    assert ip1 != ip2
    assert in_ns(p1, "ping", "-c1", "-W2", ip2).returncode == 0
    assert in_ns(p2, "ping", "-c1", "-W2", ip1).returncode == 0
    assert in_ns(p1, "ping", "-c1", "-W2", "10.99.0.1").returncode == 0  # the gateway on cni0
    server = TcpEcho(p2)
    try:
        assert tcp_request(p1, ip2, 8080, "ping") == "echo:ping"
    finally:
        server.close()
    # kernel objects the user can see
    assert "cni0" in node_links(node)
    hairpin = subprocess.run(["ip", "-n", node, "-d", "link", "show", bridge.host_veth_name(p1, "eth0")],
                             capture_output=True, text=True).stdout
    assert "hairpin on" in hairpin and "master cni0" in hairpin
    assert in_ns(node, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert any(iptables.chain_name(conf["name"], p1) in line for line in nat_chains(node))
    route = subprocess.run(["ip", "-n", p1, "route"], capture_output=True, text=True).stdout
    assert "default via 10.99.0.1 dev eth0" in route
    for p in (p1, p2):
        assert delete(conf, node, p)[0] == 0


def test_check_passes_then_detects_a_removed_address(node, namespaces, tmp_path):
    conf = make_conf(tmp_path)
    pod = namespaces.new("pod")
    rc, result = add(conf, node, pod)
    assert rc == 0
    check_conf = dict(conf, prevResult=result)
    assert exec_plugin(PLUGIN, "CHECK", check_conf, node, pod, f"/run/netns/{pod}")[0] == 0
    addr = result["ips"][0]["address"]
    subprocess.run(["ip", "-n", pod, "addr", "del", addr, "dev", "eth0"], check=True)
    rc, err = exec_plugin(PLUGIN, "CHECK", check_conf, node, pod, f"/run/netns/{pod}")
    assert rc != 0
    assert err["code"] == 100 and addr in err["msg"]
    assert delete(conf, node, pod)[0] == 0


def test_del_is_idempotent_and_leaves_no_trace(node, namespaces, tmp_path):
    conf = make_conf(tmp_path)
    pod = namespaces.new("pod")
    before_links = node_links(node)
    assert add(conf, node, pod)[0] == 0
    assert leases(conf)
    for _ in range(2):
        rc, out = delete(conf, node, pod)
        assert rc == 0 and out is None
    # a container that was never added
    assert exec_plugin(PLUGIN, "DEL", conf, node, "never-added", f"/run/netns/{pod}")[0] == 0
    assert exec_plugin(PLUGIN, "DEL", conf, node, "never-added", "")[0] == 0
    assert leases(conf) == []
    assert nat_chains(node) == []
    assert set(node_links(node)) - set(before_links) <= {"cni0"}  # the bridge stays, as the reference's
    assert subprocess.run(["ip", "-n", pod, "link", "show", "eth0"], capture_output=True).returncode != 0


def test_del_after_the_namespace_is_gone_removes_lease_and_chain(node, namespaces, tmp_path):
    conf = make_conf(tmp_path)
    pod = namespaces.new("pod")
    assert add(conf, node, pod)[0] == 0
    assert nat_chains(node)
    namespaces.remove(pod)
    rc, _ = exec_plugin(PLUGIN, "DEL", conf, node, pod, f"/run/netns/{pod}")
    assert rc == 0
    assert nat_chains(node) == []  # the reference plugin leaks this chain; we do not
    assert leases(conf) == []
    assert not [l for l in node_links(node) if l.startswith("veth")]


def _add_del_process(args):
    command, conf, node, pod = args
    return exec_plugin(PLUGIN, command, conf, node, pod, f"/run/netns/{pod}")


def test_fifty_parallel_adds_get_distinct_addresses_and_dels_free_them(node, namespaces, tmp_path):
    conf = make_conf(tmp_path)
    pods = [namespaces.new("pod") for _ in range(50)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:  # each call is its own process
        results = list(pool.map(_add_del_process, [("ADD", conf, node, p) for p in pods]))
    assert all(rc == 0 for rc, _ in results), [r for r in results if r[0] != 0][:3]
    ips = {pod_ip(r) for _, r in results}
    assert len(ips) == 50
    assert len(leases(conf)) == 50
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        dels = list(pool.map(_add_del_process, [("DEL", conf, node, p) for p in pods]))
    assert all(rc == 0 for rc, _ in dels)
    assert leases(conf) == []
    assert nat_chains(node) == []


def test_delegates_to_the_reference_host_local(node, namespaces, tmp_path):
    conf = make_conf(tmp_path, ipam_type="host-local")
    p1, p2 = namespaces.new("pod"), namespaces.new("pod")
    rc1, r1 = add(conf, node, p1)
    rc2, r2 = add(conf, node, p2)
    assert rc1 == 0 and rc2 == 0, (r1, r2)
    assert in_ns(p1, "ping", "-c1", "-W2", pod_ip(r2)).returncode == 0
    # the reference host-local's own lease file, holding "<id>\r\n<ifname>"
    with open(os.path.join(tmp_path, conf["name"], pod_ip(r1))) as f:
        assert f.read().split() == [p1, "eth0"]
    assert delete(conf, node, p1)[0] == 0 and delete(conf, node, p2)[0] == 0
    assert leases(conf) == []


def test_masquerade_chain_matches_the_reference_plugin(node, namespaces, tmp_path):
    """The reference bridge names the chain CNI-<sha512(name+id)[:24]>; so do we."""
    conf = make_conf(tmp_path, ipam_type="host-local", type="bridge")
    pod = namespaces.new("pod")
    rc, out = exec_plugin("bridge", "ADD", conf, node, pod, f"/run/netns/{pod}")
    assert rc == 0, out
    try:
        assert any(f":{iptables.chain_name(conf['name'], pod)} " in l for l in nat_chains(node))
        assert any(iptables.comment(conf["name"], pod).replace('"', '\\"') in l for l in nat_chains(node))
    finally:
        exec_plugin("bridge", "DEL", conf, node, pod, f"/run/netns/{pod}")


def test_portmap_accepts_our_result_and_a_host_port_works(node, namespaces, tmp_path):
    """First plugin of a conflist, chained with the reference portmap."""
    name = unique_name("net")
    conflist = {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": PLUGIN, "bridge": "cni0", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
         "hairpinMode": True, "ipam": {"type": "netlab-ipam", "dataDir": str(tmp_path),
                                       "ranges": [[{"subnet": "10.99.0.0/24"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}
    pod, client = namespaces.new("pod"), namespaces.new("ext")
    # the client reaches the node over a point-to-point link, as a machine on the node's LAN would
    subprocess.run(["ip", "-n", node, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0",
                    "netns", client], check=True)
    subprocess.run(["ip", "-n", node, "addr", "add", "172.31.99.1/24", "dev", "uplink"], check=True)
    subprocess.run(["ip", "-n", node, "link", "set", "uplink", "up"], check=True)
    subprocess.run(["ip", "-n", client, "addr", "add", "172.31.99.2/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", client, "link", "set", "eth0", "up"], check=True)
    mappings = {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]}
    rc, result = exec_conflist("ADD", conflist, node, pod, f"/run/netns/{pod}", runtime_config=mappings)
    assert rc == 0, result
    server = TcpEcho(pod)
    try:
        assert tcp_request(client, "172.31.99.1", 18080, "viaportmap") == "echo:viaportmap"
        assert any("CNI-HOSTPORT-DNAT" in l for l in nat_chains(node))
    finally:
        server.close()
        rc, out = exec_conflist("DEL", conflist, node, pod, f"/run/netns/{pod}", runtime_config=mappings,
                                prev_result=result)
    assert rc == 0, out
    assert leases({"ipam": {"dataDir": str(tmp_path)}, "name": name}) == []


def test_gc_removes_what_is_not_in_the_valid_list(node, namespaces, tmp_path):
    conf = make_conf(tmp_path, version="1.1.0")
    pods = [namespaces.new("pod") for _ in range(3)]
    results = [add(conf, node, p) for p in pods]
    assert all(rc == 0 for rc, _ in results)
    keep = pods[0]
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        gc_conf = dict(conf, **{key: [{"containerID": keep, "ifname": "eth0"}]})
        rc, out = exec_plugin(PLUGIN, "GC", gc_conf, node)
        assert rc == 0, out
    assert leases(conf) == [pod_ip(results[0][1])]
    chains = [l for l in nat_chains(node) if l.startswith(":")]
    assert chains == [f":{iptables.chain_name(conf['name'], keep)} - [0:0]"]
    veths = [l for l in node_links(node) if l.startswith("veth")]
    assert veths == [bridge.host_veth_name(keep, "eth0")]
    assert delete(conf, node, keep)[0] == 0


def test_status_reports_a_usable_plugin_and_an_exhausted_pool(node, namespaces, tmp_path):
    conf = make_conf(tmp_path, subnet="10.99.0.0/30", version="1.1.0")  # one usable address: .2
    assert exec_plugin(PLUGIN, "STATUS", conf, node)[0] == 0
    p1, p2 = namespaces.new("pod"), namespaces.new("pod")
    assert add(conf, node, p1)[0] == 0
    rc, err = exec_plugin(PLUGIN, "STATUS", conf, node)
    assert rc != 0 and err["code"] == 50
    rc, err = add(conf, node, p2)
    assert rc != 0 and err["code"] == 11, err
    assert "details" in err and err["cniVersion"] == "1.1.0"
    assert delete(conf, node, p1)[0] == 0


def test_status_reports_a_bridge_name_taken_by_another_device(node, tmp_path):
    conf = make_conf(tmp_path, version="1.1.0", bridge="notabridge")
    subprocess.run(["ip", "-n", node, "link", "add", "notabridge", "type", "veth", "peer", "name", "other"],
                   check=True)
    rc, err = exec_plugin(PLUGIN, "STATUS", conf, node)
    assert rc != 0 and err["code"] == 50 and "notabridge" in err["msg"]


def test_version_lists_supported_versions(node):
    rc, out = exec_plugin(PLUGIN, "VERSION", {"cniVersion": "1.0.0"}, node)
    assert rc == 0
    assert out["cniVersion"] == "1.0.0" and {"1.0.0", "1.1.0"} <= set(out["supportedVersions"])


def test_in_process_attach_returns_the_same_result_shape(node, namespaces, tmp_path):
    conf = make_conf(tmp_path)
    pod = namespaces.new("pod")
    with netns.entered(node):
        result = bridge.add(conf, pod, f"/run/netns/{pod}")
        try:
            assert [i["name"] for i in result["interfaces"]] == ["cni0", bridge.host_veth_name(pod, "eth0"), "eth0"]
            bridge.check(dict(conf, prevResult=result), pod, f"/run/netns/{pod}")
            with pytest.raises(CniError) as e:  # in-process errors carry the spec's codes too
                bridge.add(conf, pod, f"/run/netns/{pod}")
            assert e.value.code == 4 and "already exists" in e.value.msg  # 4: invalid environment (eth0 taken)
        finally:
            bridge.delete(conf, pod, f"/run/netns/{pod}")
    assert leases(conf) == []


def test_warm_daemon_serves_exec_calls_for_its_namespace(node, namespaces, tmp_path):
    sockdir = tmp_path / "sock"
    conf = make_conf(tmp_path)
    pod = namespaces.new("pod")
    daemon = subprocess.Popen(["ip", "netns", "exec", node, os.path.join(os.path.dirname(sys.executable),
                               PLUGIN), "serve", "--socket-dir", str(sockdir)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while not (sockdir.exists() and any(sockdir.iterdir())) and time.time() < deadline:
            time.sleep(0.05)
        env = {"NETLAB_CNI_SOCKET_DIR": str(sockdir)}
        rc, result = exec_plugin(PLUGIN, "ADD", conf, node, pod, f"/run/netns/{pod}", extra_env=env)
        assert rc == 0, result
        assert exec_plugin(PLUGIN, "DEL", conf, node, pod, f"/run/netns/{pod}", extra_env=env)[0] == 0
    finally:
        daemon.terminate()
        _, log = daemon.communicate(timeout=10)
    assert f"ADD {pod} eth0 -> 0" in log and f"DEL {pod} eth0 -> 0" in log
    assert not sockdir.exists() or not any(sockdir.iterdir())
    assert leases(conf) == []


# --- bad input: spec error JSON, non-zero exit, nothing created --------------------------

def assert_error(rc, err, code, *words):
    assert rc != 0
    assert set(err) >= {"cniVersion", "code", "msg"} and err["code"] == code, err
    for w in words:
        assert w in err["msg"], err
    assert err.get("details"), err


def assert_nothing_created(node, conf, pod=None):
    assert not [l for l in node_links(node) if l.startswith("veth")]
    assert leases(conf) == []
    assert nat_chains(node) == []
    if pod:
        assert subprocess.run(["ip", "-n", pod, "link", "show", "eth0"], capture_output=True).returncode != 0


@pytest.mark.parametrize("stdin,code,word", [
    ("{not json", 6, "decode"),
    ('["a list"]', 6, "object"),
    ('{"cniVersion":"9.9.9","name":"n","type":"netlab-bridge"}', 1, "9.9.9"),
    ('{"name":"n","type":"netlab-bridge"}', 7, "cniVersion"),
    ('{"cniVersion":"1.0.0","type":"netlab-bridge"}', 7, "name"),
    ('{"cniVersion":"1.0.0","name":"bad name","type":"netlab-bridge"}', 7, "bad name"),
    ('{"cniVersion":"1.0.0","name":"n"}', 7, "type"),
    ('{"cniVersion":"1.0.0","name":"n","type":"netlab-bridge"}', 7, "ipam"),
    ('{"cniVersion":"1.0.0","name":"n","type":"netlab-bridge","bridge":"averyveryverylongbridge",'
     '"ipam":{"type":"netlab-ipam","ranges":[[{"subnet":"10.99.0.0/24"}]]}}', 7, "averyveryverylongbridge"),
    ('{"cniVersion":"1.0.0","name":"n","type":"netlab-bridge","hairpinMode":true,"promiscMode":true,'
     '"ipam":{"type":"netlab-ipam","ranges":[[{"subnet":"10.99.0.0/24"}]]}}', 7, "hairpinMode"),
])
def test_bad_config(node, namespaces, tmp_path, stdin, code, word):
    pod = namespaces.new("pod")
    rc, err = exec_plugin(PLUGIN, "ADD", stdin, node, "c1", f"/run/netns/{pod}")
    assert_error(rc, err, code, word)
    assert_nothing_created(node, {"ipam": {"dataDir": str(tmp_path)}, "name": "n"}, pod)


@pytest.mark.parametrize("cid,ifname,word", [
    ("../x", "eth0", "CNI_CONTAINERID"),
    ("-starts-with-dash", "eth0", "CNI_CONTAINERID"),
    ("", "eth0", "CNI_CONTAINERID"),
    ("c1", "", "CNI_IFNAME"),
    ("c1", "a" * 16, "CNI_IFNAME"),
    ("c1", ".", "CNI_IFNAME"),
    ("c1", "..", "CNI_IFNAME"),
    ("c1", "a/b", "CNI_IFNAME"),
    ("c1", "a:b", "CNI_IFNAME"),
    ("c1", "a b", "CNI_IFNAME"),
])
def test_bad_environment(node, namespaces, tmp_path, cid, ifname, word):
    conf = make_conf(tmp_path)
    pod = namespaces.new("pod")
    rc, err = exec_plugin(PLUGIN, "ADD", conf, node, cid, f"/run/netns/{pod}", ifname)
    assert_error(rc, err, 4, word)
    assert_nothing_created(node, conf, pod)


def test_netns_that_does_not_exist_or_is_not_a_netns(node, tmp_path):
    conf = make_conf(tmp_path)
    rc, err = exec_plugin(PLUGIN, "ADD", conf, node, "c1", "/run/netns/does-not-exist")
    assert_error(rc, err, 4, "CNI_NETNS")
    plain = tmp_path / "plainfile"
    plain.write_text("")
    rc, err = exec_plugin(PLUGIN, "ADD", conf, node, "c1", str(plain))
    assert_error(rc, err, 4, "CNI_NETNS", "not a network namespace")
    assert_nothing_created(node, conf)


def test_interface_already_in_the_namespace(node, namespaces, tmp_path):
    conf = make_conf(tmp_path)
    pod = namespaces.new("pod")
    subprocess.run(["ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "x0"], check=True)
    rc, err = add(conf, node, pod)
    assert_error(rc, err, 4, "eth0", "already exists")
    assert not [l for l in node_links(node) if l.startswith("veth")]
    assert leases(conf) == []


@pytest.mark.parametrize("ranges,word", [
    ([[{"subnet": "10.99.0.0/24"}, {"subnet": "10.99.0.128/25"}]], "overlap"),
    ([[{"subnet": "10.99.0.0/33"}]], "subnet"),
    ([[{"subnet": "10.99.0.0/24", "rangeStart": "10.98.0.5"}]], "rangeStart"),
])
def test_bad_ranges(node, namespaces, tmp_path, ranges, word):
    conf = make_conf(tmp_path)
    conf["ipam"]["ranges"] = ranges
    pod = namespaces.new("pod")
    rc, err = add(conf, node, pod)
    assert_error(rc, err, 7, word)
    assert_nothing_created(node, conf, pod)


def test_failure_midway_rolls_back_veth_and_lease(node, namespaces, tmp_path):
    """The bridge already holds another address and forceAddress is off: ADD fails after
    the veth and lease exist, and must undo both."""
    conf = make_conf(tmp_path)
    subprocess.run(["ip", "-n", node, "link", "add", "cni0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", node, "addr", "add", "10.99.0.200/24", "dev", "cni0"], check=True)
    pod = namespaces.new("pod")
    rc, err = add(conf, node, pod)
    assert_error(rc, err, 7, "10.99.0.200")
    assert_nothing_created(node, conf, pod)


def test_stale_daemon_sockets_are_removed_and_live_ones_kept(tmp_path):
    import socket as _socket

    from cni.daemon import remove_stale_sockets
    d = tmp_path / "cni"
    d.mkdir()
    stale = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    stale.bind(str(d / "netns-1.sock"))
    stale.close()  # a daemon killed with SIGKILL leaves its socket file behind like this
    live = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    live.bind(str(d / "netns-2.sock"))
    live.listen(1)
    try:
        assert remove_stale_sockets(str(d)) == [str(d / "netns-1.sock")]
        assert sorted(p.name for p in d.iterdir()) == ["netns-2.sock"]
    finally:
        live.close()
    assert remove_stale_sockets(str(d)) == [str(d / "netns-2.sock")] and not d.exists()

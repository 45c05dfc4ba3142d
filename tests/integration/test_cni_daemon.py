"""The exec'd netlab-bridge and its warm daemon: the client runs the plugin
itself (cold) when no daemon answers for its namespace, the daemon keeps
serving after failed and concurrent requests, and the masquerade restore
that ADD starts early reports its failure."""
from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import threading

import pytest

from cni import client, daemon, iptables, netns
from cni.spec import CniError
from cnirun import exec_plugin
from test_bridge import PLUGIN, add, delete, leases, make_conf, pod_ip


def pod_addresses(pod: str) -> str:
    return subprocess.run(["ip", "-n", pod, "-o", "-4", "addr", "show", "dev", "eth0"],
                          capture_output=True, text=True).stdout


def node_socket(sockdir, node: str) -> str:
    """Where the client of a process in node looks for its daemon."""
    return client.socket_path(str(sockdir), os.stat(f"/run/netns/{node}").st_ino)


@pytest.fixture
def node(namespaces):
    return namespaces.new("node")


@pytest.fixture
def served(node, tmp_path):
    """`serve()` for the node in a thread of this process (its workers start in the node's namespace)."""
    sockdir, ready, stop = tmp_path / "sock", threading.Event(), threading.Event()

    def run():
        with netns.entered(node):
            daemon.serve(str(sockdir), ready=ready, stop=stop)

    thread = threading.Thread(target=run, name="test-cni-daemon")
    thread.start()
    try:
        assert ready.wait(20), "the daemon did not start"
        yield {"NETLAB_CNI_SOCKET_DIR": str(sockdir)}
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_client_runs_the_plugin_itself_when_the_daemon_is_dead(node, namespaces, tmp_path):
    """A daemon killed with SIGKILL leaves its socket: connecting is refused, the client goes cold."""
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(node_socket(sockdir, node))
    stale.close()
    conf, pod = make_conf(tmp_path), namespaces.new("pod")
    env = {"NETLAB_CNI_SOCKET_DIR": str(sockdir)}
    rc, result = add(conf, node, pod, extra_env=env)
    assert rc == 0, result
    assert f"inet {result['ips'][0]['address']}" in pod_addresses(pod)
    assert exec_plugin(PLUGIN, "DEL", conf, node, pod, f"/run/netns/{pod}", extra_env=env)[0] == 0
    assert leases(conf) == [] and pod_addresses(pod) == ""


def test_client_runs_the_plugin_itself_when_the_daemon_hangs_up_without_a_reply(node, namespaces, tmp_path):
    """A daemon that dies between accept and reply: no exit code came back, so the client runs it."""
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(node_socket(sockdir, node))
    listener.listen(4)
    hung_up = []

    def hang_up():
        conn, _ = listener.accept()
        conn.close()
        hung_up.append(True)

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        conf, pod = make_conf(tmp_path), namespaces.new("pod")
        rc, result = add(conf, node, pod, extra_env={"NETLAB_CNI_SOCKET_DIR": str(sockdir)})
        assert rc == 0, result
        assert hung_up and f"inet {result['ips'][0]['address']}" in pod_addresses(pod)
    finally:
        thread.join(10)
        listener.close()
    assert delete(conf, node, pod)[0] == 0 and leases(conf) == []


def test_daemon_answers_a_failed_request_with_its_error_and_serves_the_next(node, namespaces, tmp_path, served):
    conf, pod, other = make_conf(tmp_path), namespaces.new("pod"), namespaces.new("pod")
    rc, first = add(conf, node, pod, extra_env=served)
    assert rc == 0, first
    rc, err = add(conf, node, pod, cid="second", extra_env=served)  # eth0 is taken: code 4
    assert rc != 0 and err["code"] == 4 and "already exists" in err["msg"], err
    rc, result = add(conf, node, other, extra_env=served)  # served after the failure
    assert rc == 0, result
    assert pod_ip(result) != pod_ip(first)
    for p in (pod, other):
        assert exec_plugin(PLUGIN, "DEL", conf, node, p, f"/run/netns/{p}", extra_env=served)[0] == 0
    assert leases(conf) == []


def test_daemon_serves_more_concurrent_requests_than_it_has_workers(node, namespaces, tmp_path, served):
    conf = make_conf(tmp_path)
    pods = [namespaces.new("pod") for _ in range(daemon.WORKERS * 2 + 1)]
    with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
        results = list(pool.map(lambda p: add(conf, node, p, extra_env=served), pods))
    assert all(rc == 0 for rc, _ in results), results
    assert len({pod_ip(r) for _, r in results}) == len(pods)
    for p, (_, r) in zip(pods, results):
        assert f"inet {r['ips'][0]['address']}" in pod_addresses(p)
    with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
        codes = list(pool.map(lambda p: exec_plugin(PLUGIN, "DEL", conf, node, p, f"/run/netns/{p}",
                                                    extra_env=served)[0], pods))
    assert codes == [0] * len(pods) and leases(conf) == []


def test_a_failing_restore_reports_iptables_error_once_finished(node):
    with netns.entered(node):
        pending = iptables.Restore("*nat\n-A NO-SUCH-CHAIN -j ACCEPT\nCOMMIT\n")
        for _ in range(2):  # finishing again reports the same failure
            with pytest.raises(CniError) as e:
                pending.finish()
            assert e.value.msg == "iptables-restore failed" and e.value.details



def test_installed_launcher_runs_cold_and_warm(node, namespaces, tmp_path, served):
    """`netlab-bridge install-cni DIR` writes the -I -S launcher a runtime finds in its CNI bin directory:
    without a daemon it runs the plugin itself (site-packages added then), with one it hands over."""
    launcher = client.install_cni(str(tmp_path / "bin"))
    assert os.access(launcher, os.X_OK) and open(launcher).readline().rstrip().endswith(" -IS")
    conf = make_conf(tmp_path)
    cold_pod, warm_pod = namespaces.new("pod"), namespaces.new("pod")
    rc, cold = exec_plugin(launcher, "ADD", conf, node, cold_pod, f"/run/netns/{cold_pod}")
    assert rc == 0, cold
    rc, warm = exec_plugin(launcher, "ADD", conf, node, warm_pod, f"/run/netns/{warm_pod}", extra_env=served)
    assert rc == 0, warm
    for pod, result in ((cold_pod, cold), (warm_pod, warm)):
        assert f"inet {result['ips'][0]['address']}" in pod_addresses(pod)
    assert exec_plugin(launcher, "DEL", conf, node, cold_pod, f"/run/netns/{cold_pod}", extra_env=served)[0] == 0
    assert exec_plugin(launcher, "DEL", conf, node, warm_pod, f"/run/netns/{warm_pod}")[0] == 0
    assert leases(conf) == []


def test_daemon_drops_a_garbled_request_and_keeps_all_its_workers(node, namespaces, tmp_path, served):
    path = node_socket(served["NETLAB_CNI_SOCKET_DIR"], node)
    for _ in range(daemon.WORKERS + 1):  # more than one per worker: none of them may die of it
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(b"\xff\xfe=\0\0{}")  # not UTF-8: cannot be decoded into CNI_* variables
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""
    workers = [t for t in threading.enumerate() if t.name.startswith("cni-")]
    assert len(workers) == daemon.WORKERS and all(t.is_alive() for t in workers)
    with netns.entered(node):  # the client's own call: None would mean no daemon answered
        reply = client.request({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}',
                               served["NETLAB_CNI_SOCKET_DIR"])
    assert reply is not None and reply[0] == 0 and '"supportedVersions"' in reply[1]

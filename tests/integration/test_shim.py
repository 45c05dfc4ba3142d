"""The node's container shim (netlab/shim.py) with real namespaces and processes: a pod
sandbox like `ip netns exec` + `unshare --uts` makes it, containers entered into it, exit
codes as the kubelet reports them, the echo server forked without exec, a killed shim
replaced by the next request."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest

from labrun import wait_for
from netlab.realize.namespace import run_in
from netlab.shim import ShimClient, ShimError


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


@pytest.fixture
def pod(namespaces, tmp_path):
    """A pod namespace with /etc/netns/<pod>/resolv.conf, and a shim serving it."""
    ns = namespaces.new("shim")
    etc = f"/etc/netns/{ns}"
    os.makedirs(etc)
    with open(os.path.join(etc, "resolv.conf"), "w") as f:
        f.write("search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\n"
                "options ndots:5\n")
    client = ShimClient(str(tmp_path / "shim.sock"), str(tmp_path / "shim.log"))
    try:
        yield ns, client, tmp_path
    finally:
        client.close()
        if client.proc is not None:
            client.proc.kill()
            client.proc.wait()
        subprocess.run(["rm", "-rf", etc])


def sandbox(client, ns, tmp_path, hostname="web-0"):
    return client.sandbox(f"/run/netns/{ns}", hostname, f"/etc/netns/{ns}", str(tmp_path / "pause.log"),
                          str(tmp_path / "pause.exit"))


def test_a_container_sees_the_pods_hostname_resolv_conf_links_and_no_host_namespaces(pod):
    ns, client, tmp = pod
    pause = sandbox(client, ns, tmp)
    assert open(f"/proc/{pause}/cmdline").read().split("\0")[:2] == ["sleep", "infinity"]
    for kind in ("net", "uts", "mnt"):  # the pause process holds the pod's namespaces, none of ours
        assert os.readlink(f"/proc/{pause}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}")
    assert os.stat(f"/proc/{pause}/ns/net").st_ino == os.stat(f"/run/netns/{ns}").st_ino

    script = 'hostname; cat /etc/resolv.conf; ls /sys/class/net; grep -c " /run/netns" /proc/self/mountinfo; echo "$GREETING"; pwd; exit 3'
    pid = client.start(pause, ["sh", "-c", script], {"PATH": "/usr/bin:/bin", "GREETING": "hello"}, "/tmp",
                       str(tmp / "c.log"), str(tmp / "c.exit"))
    assert wait_for("its exit code", lambda: read(tmp / "c.exit")) == "3\n"
    lines = read(tmp / "c.log").splitlines()
    assert lines[0] == "web-0" and "nameserver 10.96.0.10" in lines and "options ndots:5" in lines
    assert lines[lines.index("options ndots:5") + 1:] == ["lo", "0", "hello", "/tmp"]
    assert wait_for("reaped", lambda: not os.path.exists(f"/proc/{pid}"))  # by the shim: no zombie left


def test_the_echo_server_runs_forked_named_and_answers_in_the_pod(pod):
    ns, client, tmp = pod
    pause = sandbox(client, ns, tmp)
    argv = ["python3", "-m", "netlab.workload.echo", "--pod", "web-0", "--tcp", "8080"]
    pid = client.start(pause, argv, {}, None, str(tmp / "echo.log"), str(tmp / "echo.exit"),
                       {"pod": "web-0", "tcp": [8080], "udp": []})
    wait_for("what ps shows", lambda: open(f"/proc/{pid}/cmdline").read().rstrip("\0") == " ".join(argv))
    wait_for("listening", lambda: "listening" in (read(tmp / "echo.log") or ""))
    answer = run_in(ns, ["python3", "-c", "import socket; s = socket.create_connection(('127.0.0.1', 8080)); "
                         "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(4096).decode())"]).stdout
    assert "HTTP/1.1 200 OK" in answer and "web-0 127.0.0.1:" in answer
    os.kill(pid, signal.SIGTERM)
    assert wait_for("exit code after SIGTERM", lambda: read(tmp / "echo.exit")) == "0\n"


def test_exit_codes_follow_the_kubelet_killed_and_not_found(pod):
    ns, client, tmp = pod
    pause = sandbox(client, ns, tmp)
    pid = client.start(pause, ["sleep", "60"], {"PATH": "/usr/bin:/bin"}, None, str(tmp / "s.log"), str(tmp / "s.exit"))
    os.kill(pid, signal.SIGKILL)
    assert wait_for("exit code", lambda: read(tmp / "s.exit")) == "137\n"  # 128 + SIGKILL
    client.start(pause, ["no-such-command"], {"PATH": "/usr/bin:/bin"}, None, str(tmp / "n.log"), str(tmp / "n.exit"))
    assert wait_for("exit code", lambda: read(tmp / "n.exit")) == "127\n"
    assert "no-such-command" in read(tmp / "n.log")
    # a restart under the same names: the old exit file goes before the new process starts
    pid = client.start(pause, ["sleep", "60"], {"PATH": "/usr/bin:/bin"}, None, str(tmp / "s.log"), str(tmp / "s.exit"))
    assert read(tmp / "s.exit") is None
    os.kill(pid, signal.SIGTERM)
    assert wait_for("exit code", lambda: read(tmp / "s.exit")) == "143\n"


def test_a_bad_sandbox_is_refused_with_the_reason_and_a_killed_shim_is_replaced(pod, tmp_path):
    ns, client, tmp = pod
    with pytest.raises(ShimError, match="No such file"):
        client.sandbox("/run/netns/no-such-pod-netns", "x", "/nonexistent", str(tmp / "p.log"), str(tmp / "p.exit"))
    first = client.proc
    first.kill()
    first.wait()
    pause = sandbox(client, ns, tmp)  # the next request starts another shim
    assert client.proc is not first and client.proc.poll() is None
    assert os.stat(f"/proc/{pause}/ns/net").st_ino == os.stat(f"/run/netns/{ns}").st_ino
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # a request it does not know
        s.connect(client.sock_path)
        s.sendall(b'{"op": "nope", "exit": "/nonexistent/x"}\n')
        assert b"unknown op" in s.recv(4096)
    for _ in range(3):  # an agent killed mid-request (it never reads the reply) does not take the shim down
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close with a reset
            s.connect(client.sock_path)
            s.sendall(json.dumps({"op": "start", "pause": pause, "argv": ["true"], "env": {}, "cwd": None,
                                  "log": str(tmp / "t.log"), "exit": str(tmp / "t.exit")}).encode() + b"\n")
    shim = client.proc
    assert sandbox(client, ns, tmp, "again") and client.proc is shim and shim.poll() is None

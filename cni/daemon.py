"""The warm per-node CNI daemon and the thin client that reaches it.

An exec'd Python plugin pays the interpreter start plus `import pyroute2`
(~140 ms here). Production CNIs (cilium-cni, multus thick) avoid that by
handing the request to a resident daemon; so do we. The daemon serves the
network namespace it runs in: its socket is named after that namespace's
inode, and the client looks for the socket of its own namespace, so a
request is only ever served where the runtime meant it to run. With no
daemon, the client runs the same code itself.

The protocol is one JSON object each way over a unix stream socket:
request {"env": {CNI_*...}, "stdin": "<config>"} -> reply {"code": 0, "stdout": "..."}.
"""
from __future__ import annotations

import json
import os
import socket
import sys

SOCKET_DIR = os.environ.get("NETLAB_CNI_SOCKET_DIR", "/run/netlab/cni")
_ENV_KEYS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


def socket_path(socket_dir: str = SOCKET_DIR, inode: int | None = None) -> str:
    if inode is None:
        inode = os.stat("/proc/thread-self/ns/net").st_ino
    return os.path.join(socket_dir, f"netns-{inode}.sock")


def _recv_all(conn: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def request(env, stdin: bytes, socket_dir: str = SOCKET_DIR) -> tuple[int, str] | None:
    """Send one invocation to this namespace's daemon; None when none answers."""
    path = socket_path(socket_dir)
    if not os.path.exists(path):
        return None
    msg = {"env": {k: env[k] for k in _ENV_KEYS if k in env}, "stdin": stdin.decode("utf-8", "replace")}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(json.dumps(msg).encode())
            s.shutdown(socket.SHUT_WR)
            reply = json.loads(_recv_all(s))
        return int(reply["code"]), reply["stdout"]
    except (OSError, ValueError, KeyError):
        return None  # a dead daemon's stale socket: fall back to in-process


def serve(socket_dir: str = SOCKET_DIR, ready=None, stop=None) -> None:
    """Serve requests until stop (a threading.Event) is set or the process is killed."""
    import threading

    from . import skel
    from .main import bridge
    import pyroute2  # noqa: F401  (warm: the point of the daemon)

    os.makedirs(socket_dir, exist_ok=True)
    path = socket_path(socket_dir)
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o600)
    srv.listen(64)
    srv.settimeout(0.2)
    if ready is not None:
        ready.set()

    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                msg = json.loads(_recv_all(conn))
                env = msg["env"]
                code, out = skel.execute(bridge.HANDLERS, env, msg["stdin"].encode())
            except (ValueError, KeyError) as e:
                env = {}
                code, out = 1, json.dumps({"cniVersion": "1.1.0", "code": 6, "msg": f"bad daemon request: {e}"})
            # one line per request, like a kubelet log, to see who served what
            print(f"{env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '')} {env.get('CNI_IFNAME', '')} -> {code}",
                  file=sys.stderr, flush=True)
            conn.sendall(json.dumps({"code": code, "stdout": out}).encode())

    try:
        while stop is None or not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            conn.settimeout(None)
            # A thread per request: each pins its own netns per call, and IPAM locks on disk.
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
    finally:
        srv.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        try:
            os.rmdir(socket_dir)
        except OSError:
            pass


def serve_main(argv: list[str]) -> int:
    """`netlab-bridge serve [--socket-dir DIR]`: run until SIGTERM/SIGINT."""
    import argparse
    import signal
    import threading

    p = argparse.ArgumentParser(prog="netlab-bridge serve",
                                description="serve CNI requests for this network namespace from a warm process")
    p.add_argument("--socket-dir", default=SOCKET_DIR)
    a = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    serve(a.socket_dir, stop=stop)
    return 0

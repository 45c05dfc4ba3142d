"""The warm per-node CNI daemon behind `netlab-bridge serve`.

An exec'd Python plugin pays the interpreter start plus `import pyroute2`
(~140 ms here). Production CNIs (cilium-cni, multus thick) avoid that by
handing the request to a resident daemon; so do we. A daemon serves the
network namespace it runs in: its socket is named after that namespace's
inode, and the client (cni.client) connects to the socket of its own
namespace, so a request is only ever served where the runtime ran it.
"""
from __future__ import annotations

import os
import queue
import socket
import sys
import threading

from .client import DEFAULT_SOCKET_DIR, SOCKET_DIR_ENV, decode_request, recv_all, socket_path

WORKERS = 4  # concurrent requests served; more queue


def serve(socket_dir: str | None = None, ready: threading.Event | None = None,
          stop: threading.Event | None = None) -> None:
    """Serve requests until stop is set (or the process is killed)."""
    import pyroute2  # noqa: F401  (warm it: the point of the daemon)

    from . import skel
    from .main import bridge

    socket_dir = socket_dir or os.environ.get(SOCKET_DIR_ENV, DEFAULT_SOCKET_DIR)
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
            env, stdin = decode_request(recv_all(conn))
            code, out = skel.execute(bridge.HANDLERS, env, stdin)
            conn.sendall(f"{code}\n{out}".encode())
            # one line per request, like a kubelet log, to see who served what
            print(f"{env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '')} "
                  f"{env.get('CNI_IFNAME', '')} -> {code}", file=sys.stderr, flush=True)

    def work() -> None:
        # Long-lived workers: pyroute2 sets up an event loop per thread, and each worker keeps its
        # host-side netlink socket; both too slow to pay per request. Concurrent requests are safe:
        # each call pins its own netns, and IPAM locks on disk.
        bridge.keep_host_socket()
        try:
            while (conn := jobs.get()) is not None:
                try:
                    handle(conn)
                except OSError as e:  # the client went away; the next request is unaffected
                    print(f"request dropped: {e}", file=sys.stderr, flush=True)
        finally:
            bridge.release_host_socket()

    jobs: queue.Queue[socket.socket | None] = queue.Queue()
    workers = [threading.Thread(target=work, name=f"cni-{i}", daemon=True) for i in range(WORKERS)]
    for w in workers:
        w.start()
    try:
        while stop is None or not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            conn.settimeout(None)
            jobs.put(conn)
    finally:
        for _ in workers:
            jobs.put(None)
        for w in workers:
            w.join()
        srv.close()
        try:
            os.unlink(path)
            os.rmdir(socket_dir)
        except OSError:
            pass  # the directory may hold other namespaces' sockets


def serve_main(argv: list[str]) -> int:
    """`netlab-bridge serve [--socket-dir DIR]`: run until SIGTERM/SIGINT."""
    import argparse
    import signal

    p = argparse.ArgumentParser(prog="netlab-bridge serve",
                                description="serve CNI requests for this network namespace from a warm process")
    p.add_argument("--socket-dir", default=None, help=f"default ${SOCKET_DIR_ENV} or {DEFAULT_SOCKET_DIR}")
    a = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    serve(a.socket_dir, stop=stop)
    return 0


def remove_stale_sockets(socket_dir: str | None = None) -> list[str]:
    """Remove the sockets no daemon listens on any more (a daemon killed with SIGKILL
    cannot remove its own), and the directory when it is left empty; returns them."""
    socket_dir = socket_dir or os.environ.get(SOCKET_DIR_ENV, DEFAULT_SOCKET_DIR)
    try:
        entries = sorted(os.listdir(socket_dir))
    except FileNotFoundError:
        return []
    removed = []
    for name in entries:
        path = os.path.join(socket_dir, name)
        if not name.endswith(".sock"):
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
        except OSError:
            pass  # someone else's trouble: leave it
        finally:
            probe.close()
    try:
        os.rmdir(socket_dir)
    except OSError:
        pass
    return removed

"""The warm per-node CNI daemon behind `netlab-bridge serve`.

An exec'd Python plugin pays the interpreter start plus importing the plugin
on every call (and once paid `import pyroute2`, ~140 ms here). Production
CNIs (cilium-cni, multus thick) avoid that by handing the request to a
resident daemon; so do we. A daemon serves the
network namespace it runs in: its socket is named after that namespace's
inode, and the client (cni.client) connects to the socket of its own
namespace, so a request is only ever served where the runtime ran it.
"""
from __future__ import annotations

import os
import socket
import sys
import threading

from .client import DEFAULT_SOCKET_DIR, SOCKET_DIR_ENV, decode_request, recv_all, socket_path

WORKERS = 4  # requests served at once; more wait in the listen backlog


def serve(socket_dir: str | None = None, ready: threading.Event | None = None,
          stop: threading.Event | None = None) -> None:
    """Serve requests until stop is set (or the process is killed)."""
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
    stop = stop or threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            data = recv_all(conn)
            if not data:  # a liveness probe (remove_stale_sockets): nothing to answer
                return
            env, stdin = decode_request(data)
            code, out = skel.execute(bridge.HANDLERS, env, stdin)
            conn.sendall(f"{code}\n{out}".encode())
            # one line per request, like a kubelet log, to see who served what
            print(f"{env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '')} "
                  f"{env.get('CNI_IFNAME', '')} -> {code}", file=sys.stderr, flush=True)

    def work() -> None:
        # Long-lived workers, each keeping its host-side netlink socket between requests (opening
        # one per request is a few hundred microseconds of a few-millisecond ADD). Each waits in accept()
        # itself: the kernel wakes one of them per connection, so a request wakes one thread (an
        # acceptor handing over to a pool wakes two, and on a busy machine every wake-up waits for
        # a CPU). Concurrent requests are safe: each call pins its own netns, IPAM locks on disk.
        bridge.keep_host_socket()
        try:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:  # the listening socket was shut down: serve() is stopping
                    return
                try:
                    handle(conn)
                except Exception as e:  # the client went away, or sent no request: the next is unaffected
                    print(f"request dropped: {e!r}", file=sys.stderr, flush=True)
        finally:
            bridge.release_host_socket()

    workers = [threading.Thread(target=work, name=f"cni-{i}", daemon=True) for i in range(WORKERS)]
    for w in workers:
        w.start()
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        stop.set()
        srv.shutdown(socket.SHUT_RDWR)  # wakes every worker waiting in accept() (EINVAL); queued clients run cold
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

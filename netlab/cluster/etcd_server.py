"""Running our own etcd: `kube-netlab control up --listen IP` starts one, and the tests
start theirs (never the system etcd Debian's etcd-server package starts on 127.0.0.1:2379).

One member, single-node cluster, data in data_dir; optionally inside a named network
namespace (the tests put it on their emulated underlay).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

import requests

from cni import netns as _netns

ETCD_BINARY = "etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380


class EtcdServerError(RuntimeError):
    """etcd did not start or did not answer."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (for tests on loopback)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class EtcdServer:
    data_dir: str
    host: str = "127.0.0.1"
    client_port: int = CLIENT_PORT
    peer_port: int = PEER_PORT
    name: str = "netlab"
    netns: str | None = None            # a named network namespace to run it in
    log_path: str | None = None         # default: <data_dir>.log
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def store_url(self) -> str:
        return f"etcd://{self.host}:{self.client_port}"

    def argv(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [ETCD_BINARY, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}", "--initial-cluster-state", "new"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self, timeout: float = 20.0) -> "EtcdServer":
        if shutil.which(ETCD_BINARY) is None:
            raise EtcdServerError("no etcd binary on PATH; install Debian's etcd-server (scripts/bootstrap.sh does)")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        log = open(self.log_path or f"{self.data_dir.rstrip('/')}.log", "ab")
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        self.wait_healthy(timeout)
        return self

    def healthy(self) -> bool:
        try:
            with _netns.entered(self.netns):  # its address may be routable only there
                return requests.get(f"{self.url}/health", timeout=1).json().get("health") == "true"
        except (requests.RequestException, ValueError):
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc is not None and self.proc.poll() is not None:
                raise EtcdServerError(f"etcd exited with {self.proc.returncode}; see {self.log_path or self.data_dir + '.log'}")
            if time.monotonic() > deadline:
                raise EtcdServerError(f"etcd at {self.url} not healthy after {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process (the data stays: start() again is an etcd restart)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        """Stop it and remove its data and log."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        try:
            os.unlink(self.log_path or f"{self.data_dir.rstrip('/')}.log")
        except FileNotFoundError:
            pass


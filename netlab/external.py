"""The lab's external host plays the outside world: an upstream DNS server the
cluster DNS forwards to (it answers a few names, e.g. www.example.org, with
its own address) and an echo server, so egress, masquerade and forwarding
can be shown from a pod (`curl http://www.example.org/` answers with the
address the outside saw).

Both run in the external host's namespace; `down` stops them with every
other process in the lab's namespaces.
"""
from __future__ import annotations

import os
import subprocess
import sys

from . import state
from .realize.namespace import process_alive

UPSTREAM_NAMES = ("www.example.org", "example.org")
ECHO_TCP_PORTS = (80, 8080)
ECHO_UDP_PORTS = (8080,)


def _tool(name: str) -> str:
    """A console script of this installation (the venv's bin), whatever PATH says."""
    return os.path.join(os.path.dirname(sys.executable), name)


def commands(lab) -> dict[str, list[str]]:
    """What the external host runs, by name."""
    ip = str(lab.external.ip)
    upstream = [_tool("netlab-dns"), "upstream", "--listen", "0.0.0.0:53"]
    for name in UPSTREAM_NAMES:
        upstream += ["--answer", f"{name}={ip}"]
    echo = [sys.executable, "-m", "netlab.workload.echo", "--pod", "external"]
    echo += [a for p in ECHO_TCP_PORTS for a in ("--tcp", str(p))]
    echo += [a for p in ECHO_UDP_PORTS for a in ("--udp", str(p))]
    return {"upstream-dns": upstream, "echo": echo}


def _pid_file(paths: state.LabPaths, name: str) -> str:
    return os.path.join(paths.dir, "external", f"{name}.pid")


def ensure_external_services(paths: state.LabPaths, lab) -> None:
    """Start what is not running (idempotent: `up` calls it every time)."""
    if not lab.external:
        return
    for name, argv in commands(lab).items():
        pid = state.read_pid(_pid_file(paths, name))
        if pid and process_alive(pid) and state.proc_cmdline(pid)[-len(argv):] == argv[-len(argv):]:
            continue
        log_path = os.path.join(paths.dir, "logs", f"external-{name}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{lab.external_netns}", "--", *argv],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                                    start_new_session=True, close_fds=True)
        state.write_file(_pid_file(paths, name), f"{proc.pid}\n")

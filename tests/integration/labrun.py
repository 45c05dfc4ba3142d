"""Driving labs through the CLI as a user would, for the end-to-end tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import unique_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KUBE_NETLAB = os.path.join(os.path.dirname(sys.executable), "kube-netlab")
TWO_NODE = os.path.join(ROOT, "topologies", "two-node.yaml")
THREE_NODE = os.path.join(ROOT, "topologies", "three-node.yaml")


def wait_for(what, fn, timeout=20.0):
    """fn() until it is truthy, returning its value; a deadline for a condition, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            assert value, f"never happened: {what}"
            return value
        time.sleep(0.02)


def kn(*args, check=True, timeout=180, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([KUBE_NETLAB, *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"kube-netlab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def items(lab: str, what: str, *scope: str) -> list[dict]:
    """`get WHAT -o json` items, Kubernetes-shaped; every namespace unless scope says (-n NS)."""
    return json.loads(kn("get", what, *(scope or ("-A",)), "-o", "json", "--lab", lab).stdout)["items"]


def in_pod(lab, pod, *cmd, check=True):
    return kn("exec", pod, "--lab", lab, "--", *cmd, check=check, timeout=60)


def on_node(lab, node, *cmd, check=True):
    return kn("exec", "--node", node, "--lab", lab, "--", *cmd, check=check, timeout=60)


def lab_leftovers(lab: str) -> list[str]:
    left = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(lab + "-")] if os.path.isdir("/run/netns") else []
    for d in ("/etc/netns", "/var/lib/cni/networks"):
        if os.path.isdir(d):
            left += [f"{d}/{n}" for n in os.listdir(d) if n.startswith(lab + "-")]
    if os.path.exists(f"/run/netlab/{lab}"):
        left.append(f"/run/netlab/{lab}")
    ps = subprocess.run(["pgrep", "-af", f"--lab {lab}( |$)"], capture_output=True, text=True).stdout
    left += [f"process {line}" for line in ps.splitlines()]
    return left


class Lab:
    def __init__(self, path=TWO_NODE):
        self.name = unique_name("l")
        self.path = path

    def up(self, check=True, **kw):
        return kn("up", "-q", self.path, "--name", self.name, check=check, **kw)

    def down(self):
        return kn("down", self.name, check=False)

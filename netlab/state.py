"""Where a lab keeps its state: files under /run/netlab/<lab>/ and the keys
it uses in the store beside flannel's /coreos.com/network/.

    /run/netlab/<lab>/
      state.db                  the store (SQLite): desired state, leases, status
      agents/<node>.pid         the node agent's pid
      logs/<node>.log           the node agent's log
      nodes/<node>/subnet.env   flannel's subnet file (FLANNEL_NETWORK, FLANNEL_SUBNET, ...)
      nodes/<node>/vtep-mac     the node's VTEP MAC, stable across agent restarts
      pods/<ns>.<pod>/          container logs

Everything the lab creates in the kernel is found from the lab's name alone
(model.names): `down` needs none of these files to clean up.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass


ROOT = os.environ.get("NETLAB_STATE_DIR", "/run/netlab")
NETNS_ETC = "/etc/netns"            # `ip netns exec` bind-mounts these files over /etc
CNI_DATA_DIR = "/var/lib/cni/networks"

# store keys (flannel's own live under /coreos.com/network/)
LAB_KEY = "/netlab/lab"
PODS = "/netlab/pods/"              # desired pods: <ns>/<name> -> Pod.to_dict() with nodeName
POD_STATUS = "/netlab/status/pods/"  # written by agents: <ns>/<name> -> status
NODE_STATUS = "/netlab/status/nodes/"  # written by agents: <node> -> status


def pod_key(namespace: str, name: str) -> str:
    return f"{PODS}{namespace}/{name}"


def pod_status_key(namespace: str, name: str) -> str:
    return f"{POD_STATUS}{namespace}/{name}"


def node_status_key(node: str) -> str:
    return f"{NODE_STATUS}{node}"


@dataclass(frozen=True)
class LabPaths:
    lab: str
    root: str = ROOT

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.lab)

    @property
    def store(self) -> str:
        return os.path.join(self.dir, "state.db")

    def agent_pid(self, node: str) -> str:
        return os.path.join(self.dir, "agents", f"{node}.pid")

    def agent_log(self, node: str) -> str:
        return os.path.join(self.dir, "logs", f"{node}.log")

    def node_dir(self, node: str) -> str:
        return os.path.join(self.dir, "nodes", node)

    def subnet_env(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "subnet.env")

    def vtep_mac(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "vtep-mac")

    def pod_dir(self, pod_netns: str) -> str:
        return os.path.join(self.dir, "pods", pod_netns.split("-", 1)[1])

    def exists(self) -> bool:
        return os.path.exists(self.store)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.rmdir(self.root)  # the last lab out turns off the light
        except OSError:
            pass


def list_labs(root: str = ROOT) -> list[str]:
    try:
        # the directory is made before anything else of a lab, and removed last by down
        return sorted(d for d in os.listdir(root) if d != "cni" and os.path.isdir(os.path.join(root, d)))
    except FileNotFoundError:
        return []


def write_file(path: str, text: str, mode: int = 0o644) -> None:
    """Atomically, as flannel writes subnet.env: a reader never sees half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def agent_pids(lab: str) -> list[int]:
    """Every live agent process of this lab, found by its command line (survives lost pid files)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = proc_cmdline(int(entry))
            if "netlab.agent" in argv and "--lab" in argv and argv[argv.index("--lab") + 1:][:1] == [lab]:
                out.append(int(entry))
    return out


def agent_alive(paths: LabPaths, node: str) -> int | None:
    """The node agent's pid while it runs. Its command line is read while it may be between
    two exec()s (nsenter, then python), when it is briefly empty: only a different one means
    the pid now belongs to someone else."""
    from .realize.namespace import process_alive
    pid = read_pid(paths.agent_pid(node))
    if pid is None or not process_alive(pid):
        return None
    argv = proc_cmdline(pid)
    if argv and not ("--lab" in argv and paths.lab in argv and node in argv):
        return None
    return pid


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))

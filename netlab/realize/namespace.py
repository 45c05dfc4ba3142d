"""Named network namespaces and the two ways we act inside one: a netlink
socket opened there, and a child process forked there.

Every realizer goes through `iproute()` / `run_in()`, and both refuse the
root namespace: emulated labs must never change the host's own networking.
The one exception is explicit: a node joined to a cluster (`kube-netlab node
join`, the VM mode) calls enable_host_mode(), after which realizers may act in
that process's own namespace; removing it or killing its processes stays refused.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import time

from cni import netns as _netns

NETNS_DIR = "/run/netns"
_NS_GET_NSTYPE = 0xB703


class RootNamespaceError(RuntimeError):
    """Raised instead of touching the host's root network namespace."""


def _ns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


# The host's namespace: init's (when readable) and the one the CLI started in.
# A node agent starts inside its node's namespace, so the CLI hands it the
# host's identity in HOST_NETNS_ENV ("dev:ino") instead of letting it guess.
HOST_NETNS_ENV = "NETLAB_HOST_NETNS"


def host_netns_id() -> str:
    """This process's view of the host namespace, to pass to processes started in a lab namespace."""
    if os.environ.get(HOST_NETNS_ENV):
        return os.environ[HOST_NETNS_ENV]
    dev, ino = _ns_id("/proc/self/ns/net")
    return f"{dev}:{ino}"


_FORBIDDEN = set()
try:
    _FORBIDDEN.add(_ns_id("/proc/1/ns/net"))
except OSError:
    pass
_dev, _, _ino = host_netns_id().partition(":")
_FORBIDDEN.add((int(_dev), int(_ino)))


# Host namespaces realizers may change all the same (enable_host_mode: a node joined in VM mode).
_HOST_MODE: set[tuple[int, int]] = set()


def enable_host_mode() -> str:
    """Let the realizers act in this process's own network namespace, the host's (a VM
    joining a cluster is the node). Returns the path that names it to the realizers: an
    fd kept open on it, so it stays right whichever thread or namespace asks later."""
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    path = f"/proc/{os.getpid()}/fd/{fd}"
    _HOST_MODE.add(_ns_id(path))
    return path


def is_host_mode(name: str) -> bool:
    try:
        return _ns_id(_netns.path_of(name)) in _HOST_MODE
    except OSError:
        return False


def _target(name: str, *, removing: bool = False) -> str:
    if not name:
        raise RootNamespaceError("no namespace given: realizers never act in the root namespace")
    path = _netns.path_of(name)
    ns = _ns_id(path)
    if ns in _FORBIDDEN and (removing or ns not in _HOST_MODE):
        raise RootNamespaceError(f"{name!r} is the root network namespace; refusing to "
                                 + ("remove it" if removing else "change it outside host mode (node join)"))
    return path


def netns_exists(name: str) -> bool:
    """True when name is a mounted network namespace (a stale empty file is not)."""
    try:
        fd = os.open(_netns.path_of(name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _netns.CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def ensure_netns(name: str, *, lo_up: bool = True) -> bool:
    """Create the named namespace (visible in `ip netns list`) unless it exists.

    Returns True when it was created. Made in-process the way `ip netns add`
    does it (same shared /run/netns mount), which saves an exec per pod.
    """
    if "/" in name or not name:
        raise ValueError(f"namespace name {name!r} must be a plain name")
    if netns_exists(name):
        if lo_up:
            with _netns.entered(_target(name)):
                _netns.link_up("lo")
        return False
    path = _netns.path_of(name)
    if os.path.lexists(path):
        # a crash between creating the mount point and binding it leaves a plain file
        os.unlink(path)
    _netns.create(name, lo_up=lo_up)
    return True


def pids_in_netns(name: str) -> list[int]:
    """Processes whose network namespace is the named one (like `ip netns pids`)."""
    try:
        want = _ns_id(_netns.path_of(name))
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if _ns_id(f"/proc/{entry}/ns/net") == want:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def pids_by_netns(names: list[str]) -> dict[str, list[int]]:
    """pids_in_netns for many namespaces in one pass over /proc (lab teardown)."""
    ids = {}
    for name in names:
        try:
            ids[_ns_id(_netns.path_of(name))] = name
        except OSError:
            continue
    out: dict[str, list[int]] = {name: [] for name in ids.values()}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                name = ids.get(_ns_id(f"/proc/{entry}/ns/net"))
            except OSError:
                continue
            if name is not None:
                out[name].append(int(entry))
    return out


def kill_netns_processes(name: str, grace: float = 1.0) -> list[int]:
    """SIGTERM everything in the namespace, SIGKILL what is left after grace."""
    me = os.getpid()
    pids = [p for p in pids_in_netns(name) if p != me]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            pids = [p for p in pids if process_alive(p)]
            if not pids:
                return []
            time.sleep(0.02)
    return pids


def process_alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def remove_netns(name: str, *, kill: bool = True, grace: float = 1.0) -> bool:
    """Delete the named namespace; absent is fine. Returns True if it existed.

    Processes left in it would keep the namespace (and its links) alive after
    the name is gone, so they are stopped first unless kill=False.
    """
    path = _netns.path_of(name)
    if not os.path.lexists(path):
        return False
    if netns_exists(name):
        _target(name, removing=True)  # never unmount the root namespace, whatever it is called
        if kill:
            kill_netns_processes(name, grace)
    _netns.remove(name)
    return True


def netlink_error() -> type:
    """pyroute2's NetlinkError, imported when an exception is matched against it
    (`except netlink_error() as e:`), so importing a realizer does not import pyroute2."""
    from pyroute2 import NetlinkError
    return NetlinkError


@contextlib.contextmanager
def iproute(name: str):
    """An IPRoute socket bound to the named namespace (opened there, used anywhere)."""
    from pyroute2 import IPRoute  # here, not at import: the CLI's `get`, `apply` never need it (~170 ms)
    path = _target(name)
    with _netns.entered(path):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def run_in(name: str, argv: list[str], *, input: str | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the namespace: the child is forked from a thread that
    entered it, which avoids `ip netns exec`'s /sys remount."""
    path = _target(name)
    with _netns.entered(path):
        res = subprocess.run(argv, input=input, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in netns {name}: exit {res.returncode}: "
                           f"{res.stderr.strip() or res.stdout.strip()}")
    return res


def _sysctl_path(key: str) -> str:
    # like sysctl(8): with a "/" in the key (an ifname containing dots,
    # e.g. net/ipv4/conf/flannel.1/rp_filter) the key is already a path
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


def set_sysctl(name: str, key: str, value: str | int) -> bool:
    """Write a net.* sysctl in the namespace; /proc/sys/net resolves against the
    calling thread's namespace at open time. Returns True if it changed."""
    if not key.startswith(("net.", "net/")):
        raise ValueError(f"{key}: only per-namespace net.* sysctls may be set")
    path = _target(name)
    with _netns.entered(path):
        with open(_sysctl_path(key)) as f:
            if f.read().strip() == str(value):
                return False
        with open(_sysctl_path(key), "w") as f:
            f.write(str(value))
    return True


def get_sysctl(name: str, key: str) -> str | None:
    with _netns.entered(_netns.path_of(name)):
        try:
            with open(_sysctl_path(key)) as f:
                return f.read().strip()
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

"""Network namespaces for the current thread, like CNI's pkg/ns: enter one,
and create or remove a named one the way `ip netns add/del` does.

Netlink sockets and child processes keep the namespace they were created
in, so code enters a namespace only long enough to open a socket or fork.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct

CLONE_NEWNET = 0x40000000
MS_REC, MS_BIND, MS_SHARED = 0x4000, 0x1000, 1 << 20
MNT_DETACH = 2
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
NETNS_RUN_DIR = "/run/netns"
NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file descriptor

libc = ctypes.CDLL(None, use_errno=True)  # setns, unshare, mount, umount2 (also the pod shim's)


def check(ret: int, what: str) -> None:
    """Raise OSError with errno for a failed libc call (ret != 0)."""
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _setns(fd: int) -> None:
    check(libc.setns(fd, CLONE_NEWNET), "setns")


def check_netns_path(path: str) -> None:
    """Fail with code 4 naming CNI_NETNS unless path is a network namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise _invalid_netns(f"CNI_NETNS {path!r} cannot be opened: {e.strerror}",
                             "set CNI_NETNS to an existing network namespace, e.g. /run/netns/<name>") from None
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        nstype = None
    finally:
        os.close(fd)
    if nstype != CLONE_NEWNET:
        raise _invalid_netns(f"CNI_NETNS {path!r} is not a network namespace",
                             "set CNI_NETNS to a network namespace file such as /run/netns/<name>")


def _invalid_netns(msg: str, fix: str) -> Exception:
    # cni.spec (dataclasses, inspect) only on failure: the pod shim imports this module, and every
    # echo server it forks carries what the shim has loaded
    from .spec import INVALID_ENV, CniError
    return CniError(INVALID_ENV, msg, fix)


def path_of(name_or_path: str) -> str:
    """`ip netns` names live in /run/netns; anything with a slash is already a path."""
    return name_or_path if "/" in name_or_path else f"/run/netns/{name_or_path}"


@contextlib.contextmanager
def entered(name_or_path: str | None):
    """Run the body with this thread in the given network namespace (None: stay)."""
    if not name_or_path:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path_of(name_or_path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def current_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    check(libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None),
           f"mount {target}")


def _ensure_run_dir() -> None:
    """/run/netns as iproute2 makes it: a shared mount, so namespace mounts made here propagate
    to every mount namespace (pods' and `ip netns exec`'s) and vice versa."""
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    try:
        _mount("none", NETNS_RUN_DIR, None, MS_SHARED | MS_REC)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: not a mount point yet, bind it onto itself first
            raise
        _mount(NETNS_RUN_DIR, NETNS_RUN_DIR, None, MS_BIND | MS_REC)
        _mount("none", NETNS_RUN_DIR, None, MS_SHARED | MS_REC)


def create(name: str, *, lo_up: bool = True) -> str:
    """`ip netns add NAME` in-process (no exec): a new network namespace bind-mounted on
    /run/netns/NAME, made by this thread, which then returns to its own namespace. Returns
    the path. lo_up: bring loopback up, as every pod and node needs."""
    path = path_of(name)
    if not os.path.ismount(NETNS_RUN_DIR):
        _ensure_run_dir()
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    os.close(fd)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            try:
                _mount("/proc/thread-self/ns/net", path, None, MS_BIND)
                if lo_up:
                    link_up("lo")
            finally:
                _setns(own)
        except BaseException:
            remove(path)
            raise
    finally:
        os.close(own)
    return path


def link_up(ifname: str) -> None:
    """Set IFF_UP with the SIOCSIFFLAGS ioctl on a socket of this thread's namespace
    (cheaper than a netlink round trip through a library)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", ifname.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", ifname.encode(), flags | IFF_UP))


def remove(name: str) -> None:
    """`ip netns del NAME` in-process: detach the mount and remove the file. The kernel frees
    the namespace (and the links in it) once no process or mount holds it any more."""
    path = path_of(name)
    if libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not mounted (a half-made one)
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

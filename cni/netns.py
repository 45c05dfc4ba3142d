"""Network-namespace switching for the current thread, like CNI's pkg/ns.

Netlink sockets and child processes keep the namespace they were created
in, so code enters a namespace only long enough to open a socket or fork.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os

from .spec import CniError, INVALID_ENV

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file descriptor

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def check_netns_path(path: str) -> None:
    """Fail with code 4 naming CNI_NETNS unless path is a network namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CniError(INVALID_ENV, f"CNI_NETNS {path!r} cannot be opened: {e.strerror}",
                       "set CNI_NETNS to an existing network namespace, e.g. /run/netns/<name>") from None
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        nstype = None
    finally:
        os.close(fd)
    if nstype != CLONE_NEWNET:
        raise CniError(INVALID_ENV, f"CNI_NETNS {path!r} is not a network namespace",
                       "set CNI_NETNS to a network namespace file such as /run/netns/<name>")


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

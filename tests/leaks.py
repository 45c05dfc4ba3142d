"""What of ours is on the machine: namespaces, root-namespace links, addresses,
routes, rules and iptables/nft rules, lease directories and processes.

The suite snapshots this before and after a run; any difference is a leak.
"""
from __future__ import annotations

import os
import re
import subprocess

# Every namespace, lab, network and process argument a test run creates
# starts with this, so runs side by side do not see each other as leaks.
# Short (5 characters) because lab names, which carry it, are at most 10.
RUN_PREFIX = "nl" + "".join("0123456789abcdefghijklmnopqrstuvwxyz"[os.getpid() // 36 ** i % 36] for i in (2, 1, 0))


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except FileNotFoundError:
        return ""


def _lines(text: str) -> list[str]:
    # drop comments and volatile counters/timestamps
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        out.append(re.sub(r"\[\d+:\d+\]", "", line))
    return sorted(out)


def _ours(names, prefix: str) -> list[str]:
    return sorted(n for n in names if prefix in n)


def snapshot(prefix: str = RUN_PREFIX) -> dict[str, list[str]]:
    """The machine's state; for shared places (netns, dirs, processes) only what carries prefix."""
    leases = "/var/lib/cni/networks"
    return {
        "netns": _ours((line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()), prefix),
        "root links": _lines(re.sub(r"\\\s+link/.*", "", _run("ip", "-o", "link", "show"))),
        "root addresses": _lines(_run("ip", "-o", "addr", "show")),
        "root routes": _lines(_run("ip", "route", "show", "table", "all")),
        "root rules": _lines(_run("ip", "rule", "show")),
        "root iptables": _lines(_run("iptables-save")),
        "root nftables": _lines(_run("nft", "list", "ruleset")),
        "lease dirs": _ours(os.listdir(leases) if os.path.isdir(leases) else [], prefix),
        "netlab state": _ours(os.listdir("/run/netlab") if os.path.isdir("/run/netlab") else [], prefix),
        "netns config": _ours(os.listdir("/etc/netns") if os.path.isdir("/etc/netns") else [], prefix),
        "processes": sorted(line for line in _run("pgrep", "-af", prefix).splitlines()
                            if "pytest" not in line and "pgrep" not in line),
        "processes in unnamed namespaces": orphaned_processes(),
        # named after a namespace inode or a temporary directory, not the prefix: any new one is ours
        "CNI daemon sockets": sorted(os.listdir("/run/netlab/cni") if os.path.isdir("/run/netlab/cni") else []),
        "container shims": sorted(line for line in _run("pgrep", "-af", "netlab.shim").splitlines()
                                  if "pgrep" not in line),
    }


def _netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def orphaned_processes() -> list[str]:
    """Processes in a network namespace that is neither the host's nor named in /run/netns:
    what is left running after its lab or test namespace was deleted."""
    named = {_netns_inode(f"/run/netns/{n}") for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])}
    named.add(_netns_inode("/proc/self/ns/net"))
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        ino = _netns_inode(f"/proc/{pid}/ns/net")
        if ino is None or ino in named:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmd:
            out.append(f"{pid} {cmd}")
    return sorted(out)


def diff(before: dict, after: dict) -> list[str]:
    """Human-readable differences; empty when nothing leaked."""
    problems = []
    for key in before:
        added = sorted(set(after[key]) - set(before[key]))
        removed = sorted(set(before[key]) - set(after[key]))
        for a in added:
            problems.append(f"{key}: left behind: {a}")
        for r in removed:
            problems.append(f"{key}: removed (tests must not touch it): {r}")
    return problems

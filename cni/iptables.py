"""The bridge plugin's per-container masquerade chain, written the way the
reference plugin writes it (pkg/ip/ipmasq_iptables_linux.go) so the rules
look familiar in `iptables-save -t nat`, but applied with one
iptables-restore call and removable without the container's netns.

Runs iptables-restore/iptables-save from PATH in the caller's network
namespace: the `iptables` a user runs on Debian 12 (nf_tables) sees them.
"""
from __future__ import annotations

import hashlib
import re
import subprocess

from .spec import CniError, INTERNAL

MULTICAST = "224.0.0.0/4"


def chain_name(network: str, container_id: str) -> str:
    """CNI- + first 24 hex characters of sha512(name + containerID), as the reference plugin."""
    return "CNI-" + hashlib.sha512((network + container_id).encode()).hexdigest()[:24]


def comment(network: str, container_id: str) -> str:
    return f'name: "{network}" id: "{container_id}"'


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Restore:
    """One `iptables-restore --noflush -w` started now and checked by finish(): ADD starts the
    masquerade chain as soon as IPAM gives the address and does its netlink work meanwhile (the
    exec is a third of an in-process ADD)."""

    def __init__(self, text: str):
        self.text = text
        self.error: str | None = None
        self.proc = subprocess.Popen(["iptables-restore", "--noflush", "-w"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            with self.proc.stdin:  # a few hundred bytes: fits the pipe, never blocks
                self.proc.stdin.write(text)
        except BrokenPipeError:
            pass  # it exited early; finish() reports its error

    def finish(self) -> None:
        """Wait for it; raise CniError with its stderr if it failed. Safe to call twice."""
        if self.error is None:
            with self.proc.stderr:
                self.error = self.proc.stderr.read().strip()
            self.proc.wait()
        if self.proc.returncode != 0:
            raise CniError(INTERNAL, "iptables-restore failed", self.error or self.text)


def _restore(text: str) -> None:
    Restore(text).finish()


def save_nat() -> str:
    proc = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CniError(INTERNAL, "iptables-save failed", proc.stderr.strip())
    return proc.stdout


def masquerade_text(network: str, container_id: str, ips: list[tuple[str, str]]) -> str:
    """The restore input for one container's chain; ips: (address/32, subnet) pairs of IPv4 addresses."""
    chain = chain_name(network, container_id)
    c = "-m comment --comment " + _quote(comment(network, container_id))
    lines = ["*nat", f":{chain} - [0:0]"]
    for ip, subnet in ips:
        lines.append(f"-A POSTROUTING -s {ip} {c} -j {chain}")
    for ip, subnet in ips:
        lines.append(f"-A {chain} -d {subnet} {c} -j ACCEPT")
    lines.append(f"-A {chain} ! -d {MULTICAST} {c} -j MASQUERADE")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def start_masquerade(network: str, container_id: str, ips: list[tuple[str, str]]) -> Restore | None:
    """Start writing the chain (None when there is no IPv4 address); the caller calls finish()."""
    return Restore(masquerade_text(network, container_id, ips)) if ips else None


def setup_masquerade(network: str, container_id: str, ips: list[tuple[str, str]]) -> None:
    """ips: (address/32, subnet) pairs of IPv4 addresses."""
    pending = start_masquerade(network, container_id, ips)
    if pending is not None:
        pending.finish()


_JUMP = re.compile(r"^-A POSTROUTING (.*)-j (CNI-[0-9a-f]{24})\s*$")
_ID_IN_COMMENT = re.compile(r'id: \\"([^"\\]+)\\"')
_NAME_IN_COMMENT = re.compile(r'name: \\"([^"\\]+)\\"')


def teardown_chains(chains: set[str], saved: str | None = None) -> None:
    """Delete the POSTROUTING jumps to these chains, then the chains; absent ones are fine."""
    if not chains:
        return
    saved = save_nat() if saved is None else saved
    present = {line[1:].split()[0] for line in saved.splitlines() if line.startswith(":")} & chains
    deletes = []
    for line in saved.splitlines():
        m = _JUMP.match(line)
        if m and m.group(2) in chains:
            deletes.append("-D" + line[2:])
    if not present and not deletes:
        return
    lines = ["*nat", *deletes]
    lines += [f":{ch} - [0:0]" for ch in sorted(present)]  # flushes it under --noflush
    lines += [f"-X {ch}" for ch in sorted(present)]
    lines.append("COMMIT")
    _restore("\n".join(lines) + "\n")


def teardown_masquerade(network: str, container_id: str) -> None:
    teardown_chains({chain_name(network, container_id)})


def masquerade_owners(network: str, saved: str | None = None) -> dict[str, str]:
    """chain -> container ID for every masquerade chain of this network (for GC)."""
    saved = save_nat() if saved is None else saved
    owners = {}
    for line in saved.splitlines():
        m = _JUMP.match(line)
        if not m:
            continue
        name, cid = _NAME_IN_COMMENT.search(line), _ID_IN_COMMENT.search(line)
        if name and cid and name.group(1) == network:
            owners[m.group(2)] = cid.group(1)
    return owners

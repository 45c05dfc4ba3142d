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


def _restore(text: str) -> None:
    proc = subprocess.run(["iptables-restore", "--noflush", "-w"], input=text,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise CniError(INTERNAL, "iptables-restore failed", proc.stderr.strip() or text)


def save_nat() -> str:
    proc = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CniError(INTERNAL, "iptables-save failed", proc.stderr.strip())
    return proc.stdout


def setup_masquerade(network: str, container_id: str, ips: list[tuple[str, str]]) -> None:
    """ips: (address/32, subnet) pairs of IPv4 addresses."""
    if not ips:
        return
    chain = chain_name(network, container_id)
    c = "-m comment --comment " + _quote(comment(network, container_id))
    lines = ["*nat", f":{chain} - [0:0]"]
    for ip, subnet in ips:
        lines.append(f"-A POSTROUTING -s {ip} {c} -j {chain}")
    for ip, subnet in ips:
        lines.append(f"-A {chain} -d {subnet} {c} -j ACCEPT")
    lines.append(f"-A {chain} ! -d {MULTICAST} {c} -j MASQUERADE")
    lines.append("COMMIT")
    _restore("\n".join(lines) + "\n")


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

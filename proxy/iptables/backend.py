"""Which iptables a node uses (nf_tables or legacy), and running its tools in
the node's network namespace.

Detection follows kube-proxy's iptables-wrapper (kubernetes-sigs/iptables-wrappers):
the backend whose tables already hold KUBE-* rules wins; else the one that holds
any rules; else whatever /usr/sbin/iptables resolves to (xtables-nft-multi on
Debian 12, so nft). Rules written with the other backend would be invisible to
the node's `iptables` and to everyone debugging it (kubernetes#71305).
"""
from __future__ import annotations

import os
import subprocess

BACKENDS = ("nft", "legacy")
IPTABLES_BINARY = "/usr/sbin/iptables"


def run(netns: str | None, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """Run a tool in the named namespace (None: this process's own, as inside a node agent)."""
    if netns is None:
        return subprocess.run(argv, input=input, capture_output=True, text=True)
    from netlab.realize.namespace import run_in   # imports pyroute2; only callers with a netns need it
    return run_in(netns, argv, input=input, check=False)


def tool(backend: str, name: str) -> str:
    """iptables-nft-restore, iptables-legacy-save, ... for name in (iptables, iptables-save, iptables-restore)."""
    check_backend(backend)
    return name.replace("iptables", f"iptables-{backend}", 1)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: must be one of {', '.join(BACKENDS)} "
                         "(or None to detect it like kube-proxy's iptables-wrapper)")
    return backend


def _rule_lines(saved: str) -> list[str]:
    return [line for line in saved.splitlines() if line.startswith("-A ")]


def detect(netns: str | None = None) -> str:
    """"nft" or "legacy" for the namespace, as the iptables-wrapper decides."""
    rules = {}
    for backend in BACKENDS:
        res = run(netns, [tool(backend, "iptables-save")])
        rules[backend] = _rule_lines(res.stdout) if res.returncode == 0 else []
    for wanted in (lambda r: "KUBE-" in r, lambda r: True):
        has = [b for b in BACKENDS if any(wanted(r) for r in rules[b])]
        if len(has) == 1:
            return has[0]
        if len(has) == 2:
            # both: the one with more rules, as the wrapper does
            return max(BACKENDS, key=lambda b: sum(1 for r in rules[b] if wanted(r)))
    return binary_backend()


def binary_backend(path: str = IPTABLES_BINARY) -> str:
    """The backend the system's `iptables` command uses (nft unless it resolves to a legacy binary)."""
    target = os.path.basename(os.path.realpath(path))
    return "legacy" if "legacy" in target else "nft"

"""kube-proxy's iptables mode for one node: build the rule text (render.py) and
apply it with one `iptables-restore --noflush -w`.

A full sync (the first, one after a failure, one after the canary chain
vanished, or changed=None) reads the tables once with iptables-save to find
leftover service chains and missing jumps from the built-in chains, and
rewrites every chain. A partial sync (KEP-3453) rewrites the dispatch chains
and the changed services' chains, and deletes the chains it remembers that
are no longer used.
"""
from __future__ import annotations

import logging
import re
import time

from proxy.types import ProxyNode, ProxyState, ServicePortName, SyncResult, check_node

from . import backend as be
from . import names as n
from .render import JUMP_RULES, RenderCache, render

log = logging.getLogger("netlab.proxy")

TCP_LIBERAL_SYSCTL = "net/netfilter/nf_conntrack_tcp_be_liberal"
_FAILED_LINE = re.compile(r"line:? (\d+) failed|Error occurred at line:? (\d+)")


def _context(text: str, stderr: str, around: int = 2) -> str:
    """The rule lines near the one iptables-restore names, for the log."""
    m = _FAILED_LINE.search(stderr)
    if not m:
        return ""
    at = int(m.group(1) or m.group(2))
    lines = text.splitlines()
    return "\n".join(f"{i + 1:6d} {lines[i]}" for i in range(max(0, at - 1 - around), min(len(lines), at + around)))


class IptablesProxier:
    """The Proxier protocol (proxy/types.py) in kube-proxy's iptables layout."""

    mode = "iptables"

    def __init__(self, node: ProxyNode, *, netns: str | None = None, backend: str | None = None):
        self.node = check_node(node)
        self.netns = netns
        self.backend = be.check_backend(backend) if backend is not None else be.detect(netns)
        self._chains: frozenset[str] = frozenset()   # per-service nat chains in the kernel after our last sync
        self._need_full = True
        self._cache = RenderCache()                 # chain names and rule lines per service port
        self._tcp_liberal = self._read_tcp_liberal()
        self.last_text = ""                          # the restore input of the last sync (debugging, tests)

    # --- running the tools -------------------------------------------------

    def _run(self, name: str, *args: str, input: str | None = None):
        return be.run(self.netns, [be.tool(self.backend, name), *args], input=input)

    def _read_tcp_liberal(self) -> bool:
        # kube-proxy skips the INVALID drop when conntrack is liberal (kubernetes#117924)
        res = be.run(self.netns, ["cat", f"/proc/sys/{TCP_LIBERAL_SYSCTL}"])
        return res.returncode == 0 and res.stdout.strip() not in ("", "0")

    def _canary_present(self) -> bool:
        # kube-proxy's Monitor looks in mangle only: cheap, and a flush of all tables takes it too
        return self._run("iptables", "-w", "-t", "mangle", "-S", n.KUBE_PROXY_CANARY).returncode == 0

    def save(self) -> str:
        """iptables-save of every table in the namespace, with this proxier's backend."""
        res = self._run("iptables-save")
        if res.returncode != 0:
            raise RuntimeError(f"{be.tool(self.backend, 'iptables-save')}: {res.stderr.strip()}")
        return res.stdout

    def _restore(self, text: str) -> str | None:
        """Apply text; None on success, else the error (the kernel kept the previous rules of that table)."""
        res = self._run("iptables-restore", "-w", "--noflush", input=text)
        if res.returncode == 0:
            return None
        error = res.stderr.strip() or f"exit {res.returncode}"
        context = _context(text, res.stderr)
        log.error("iptables-restore (%s) rejected the rule set, keeping the previous rules; next sync is full: %s%s",
                  self.backend, error, f"\n{context}" if context else "")
        return error

    # --- Proxier protocol ------------------------------------------------------

    def sync(self, state: ProxyState, changed: frozenset[ServicePortName] | None = None) -> SyncResult:
        start = time.monotonic()
        full = changed is None or self._need_full
        if not full and not self._canary_present():
            log.info("KUBE-PROXY-CANARY is gone from mangle (tables flushed?): doing a full sync")
            full = True
        missing_jumps: list = []
        existing = self._chains
        if full:
            try:
                saved = self.save()
            except RuntimeError as e:
                log.error("cannot read the tables before a full sync: %s", e)
                return SyncResult(full=True, seconds=time.monotonic() - start, error=str(e))
            tables = _split_tables(saved)
            existing = frozenset(c for c in _chains_of(tables.get("nat", "")) if n.is_service_chain(c))
            missing_jumps = [j for j in JUMP_RULES if not j.found_in(tables.get(j.table, "").splitlines())]
        rendered = render(state, self.node, changed=None if full else frozenset(changed or ()),
                          existing_chains=existing, missing_jumps=missing_jumps, canary=full,
                          tcp_liberal=self._tcp_liberal, cache=self._cache)
        self.last_text = rendered.text
        error = self._restore(rendered.text)
        if error is None:
            self._chains = rendered.active_chains
            self._need_full = False
        else:
            self._need_full = True
        seconds = time.monotonic() - start
        log.debug("iptables %s sync: %d services, %d rule lines, %d chains deleted, %.3f s",
                  "full" if full else "partial", len(state.services), rendered.lines,
                  len(rendered.deleted_chains), seconds)
        return SyncResult(full=full, seconds=seconds, size=rendered.lines, error=error)

    def cleanup(self) -> None:
        """Remove every KUBE-* chain and every jump into one, in every table, with
        both backends (a mode switch must leave nothing of kube-proxy's behind)."""
        for backend in be.BACKENDS:
            res = be.run(self.netns, [be.tool(backend, "iptables-save")])
            if res.returncode != 0:
                continue
            text = cleanup_text(res.stdout)
            if not text:
                continue
            out = be.run(self.netns, [be.tool(backend, "iptables-restore"), "-w", "--noflush"], input=text)
            if out.returncode != 0:
                raise RuntimeError(f"{be.tool(backend, 'iptables-restore')} could not remove KUBE-* chains: "
                                   f"{out.stderr.strip()}")
        self._chains = frozenset()
        self._need_full = True


def _split_tables(saved: str) -> dict[str, str]:
    """iptables-save output by table name."""
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in saved.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), [])
        elif current is not None and not line.startswith("#"):
            current.append(line)
    return {name: "\n".join(lines) for name, lines in tables.items()}


def _chains_of(table_text: str) -> list[str]:
    return [line[1:].split()[0] for line in table_text.splitlines() if line.startswith(":")]


def cleanup_text(saved: str) -> str:
    """Restore input deleting every jump into a KUBE-* chain from other chains,
    then flushing and deleting every KUBE-* chain; "" when there is none."""
    parts = []
    for table, text in _split_tables(saved).items():
        ours = [c for c in _chains_of(text) if c.startswith("KUBE-")]
        jumps = [line for line in text.splitlines()
                 if line.startswith("-A ") and not line.split()[1].startswith("KUBE-")
                 and re.search(r"-j KUBE-\S+", line)]
        if not ours and not jumps:
            continue
        parts += [f"*{table}", *(f":{c} - [0:0]" for c in ours),
                  *("-D" + line[2:] for line in jumps), *(f"-X {c}" for c in ours), "COMMIT"]
    return "\n".join(parts) + "\n" if parts else ""

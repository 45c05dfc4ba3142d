"""The nftables proxy mode: one `nft -f -` transaction per sync."""
from __future__ import annotations

import logging
import subprocess
import time

from ..types import ProxyNode, ProxyState, ServicePortName, SyncResult
from .render import DEFAULT_LAYOUT, T, check_layout
from .table import Written, full_sync, render_pieces

log = logging.getLogger("netlab.proxy")


class NftError(RuntimeError):
    pass


class NftablesProxier:
    """kube-proxy's nftables mode for one node (Proxier protocol of proxy.types).

    netns None: the current network namespace (the agent runs in its node's);
    a name: `nft` runs through `ip netns exec <netns>` (tests, benches).
    """

    mode = "nftables"

    def __init__(self, node: ProxyNode, *, netns: str | None = None, layout: str = DEFAULT_LAYOUT):
        self.node = node
        self.netns = netns
        self.layout = check_layout(layout)
        # what the kernel holds, as we wrote it; None: unknown (first sync, or
        # a batch failed), so the next sync recreates the table
        self._written: Written | None = None
        self.last_text = ""          # the batch of the last sync (debugging, tests, bench)

    def _nft(self, text: str) -> None:
        argv = ["nft", "-f", "-"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.last_text = text
        res = subprocess.run(argv, input=text, capture_output=True, text=True)
        if res.returncode != 0:
            raise NftError(res.stderr.strip() or f"nft exited with {res.returncode}")

    def sync(self, state: ProxyState, changed: frozenset[ServicePortName] | None = None) -> SyncResult:
        start = time.monotonic()
        self.last_text = ""
        full = changed is None or self._written is None
        try:
            if full:
                written, text, size = full_sync(self.node, state, self.layout, self._written)
                self._nft(text)
                self._written = written
            else:
                updates = render_pieces(self.node, state, self.layout, only=changed)
                text, size = self._written.partial_text(updates)
                if text:
                    self._nft(text)
                self._written.apply(updates)
        except NftError as e:
            log.error("nftables %s sync of %s (layout %s) rejected, previous rules kept; next sync is full: %s",
                      "full" if full else "partial", self.netns or "this namespace", self.layout, e)
            self._written = None
            return SyncResult(full=full, seconds=time.monotonic() - start, error=str(e))
        return SyncResult(full=full, seconds=time.monotonic() - start, size=size)

    def cleanup(self) -> None:
        """Delete the table (and with it every chain, map and set of this mode)."""
        self._nft(f"add table {T}\ndelete table {T}\n")   # add first: absence is fine
        self._written = None

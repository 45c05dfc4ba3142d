"""The nftables proxy mode: one `nft -f -` transaction per sync."""
from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from typing import Callable

from ..types import ProxyNode, ProxyState, ServicePortName, SyncResult
from .render import DEFAULT_LAYOUT, T, check_layout
from .table import Written, render_pieces

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

    def _argv(self) -> list[str]:
        argv = ["nft", "-f", "-"]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _nft(self, text: str) -> None:
        self.last_text = text
        res = subprocess.run(self._argv(), input=text, capture_output=True, text=True)
        if res.returncode != 0:
            raise NftError(res.stderr.strip() or f"nft exited with {res.returncode}")

    def _load(self, render: Callable[[], tuple[str, int]], meanwhile: Callable[[], object]) -> int:
        """A full sync's batch, overlapped with nft: nft starts up while the
        batch renders, and applies it while `meanwhile` (the bookkeeping a
        partial sync needs) runs here. nft reads its whole input before it
        parses, so a batch cut short (an exception here) is killed unapplied."""
        with tempfile.TemporaryFile() as err:       # a file: nft never blocks on what it says
            proc = subprocess.Popen(self._argv(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            try:
                text, size = render()
                self.last_text = text
                try:
                    proc.stdin.write(text.encode())
                    proc.stdin.close()
                except BrokenPipeError:
                    pass                            # nft ended early; why is in err
                meanwhile()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if proc.wait() != 0:
                err.seek(0)
                raise NftError(err.read().decode(errors="replace").strip() or f"nft exited with {proc.returncode}")
        return size

    def sync(self, state: ProxyState, changed: frozenset[ServicePortName] | None = None) -> SyncResult:
        start = time.monotonic()
        self.last_text = ""
        full = changed is None or self._written is None
        try:
            if full:
                written, previous = Written(self.node, self.layout), self._written
                size = self._load(lambda: written.full_text(written.render(state), previous), written.settle)
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
        except BaseException:
            self._written = None    # what the kernel holds is unsure now: the next sync rewrites the table
            raise
        return SyncResult(full=full, seconds=time.monotonic() - start, size=size)

    def cleanup(self) -> None:
        """Delete the table (and with it every chain, map and set of this mode)."""
        self._nft(f"add table {T}\ndelete table {T}\n")   # add first: absence is fine
        self._written = None

"""kube-proxy for one node, whatever the mode: picks the backend for the lab's
proxyMode, remembers what it last synced so a change rewrites only the
service ports that changed (KEP-3453), flushes the UDP conntrack entries
that would keep traffic on a gone endpoint, and removes every rule of the
other modes when the mode changes (as kube-proxy's --cleanup does).

The node agent hosts it (netlab/agent/proxy.py) and calls sync() on store
changes, rate limited, and periodically with full=True.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

from . import conntrack
from .source import build_state
from .types import (ProxyNode, ProxyState, SyncResult, changed_services, stale_udp_endpoints,
                    udp_services_gaining_endpoints)

log = logging.getLogger("netlab.proxy")
MODES = ("iptables", "nftables", "ipvs")


def new_proxier(mode: str, node: ProxyNode, *, netns: str | None = None, nftables_layout: str = "kube-proxy"):
    """The backend for mode; imported here so a node loads only the one it runs."""
    if mode == "iptables":
        from .iptables import IptablesProxier
        return IptablesProxier(node, netns=netns)
    if mode == "nftables":
        from .nftables import NftablesProxier
        return NftablesProxier(node, netns=netns, layout=nftables_layout)
    if mode == "ipvs":
        from .ipvs import IpvsProxier
        return IpvsProxier(node, netns=netns)
    raise ValueError(f"unknown proxy mode {mode!r}; use one of {', '.join(MODES)}")


def cleanup_mode(mode: str, node: ProxyNode, *, netns: str | None = None) -> None:
    """Remove every object of mode; a mode this kernel cannot run has nothing to remove."""
    try:
        new_proxier(mode, node, netns=netns).cleanup()
    except Exception as e:  # e.g. IPVS absent from this kernel: nothing of it can exist
        log.debug("cleanup of %s mode: %s", mode, e)


class NodeProxy:
    def __init__(self, node: ProxyNode, mode: str, *, netns: str | None = None,
                 nftables_layout: str = "kube-proxy"):
        self.node, self.mode, self.netns = node, mode, netns
        self.proxier = new_proxier(mode, node, netns=netns, nftables_layout=nftables_layout)
        self.synced = ProxyState()
        self.need_full = True
        self.last: SyncResult | None = None

    def start(self) -> None:
        """Remove the other modes' rules (a lab switched modes), then sync from scratch."""
        for other in MODES:
            if other != self.mode:
                cleanup_mode(other, self.node, netns=self.netns)
        self.need_full = True

    def sync(self, services: Iterable, slices: Iterable, *, full: bool = False,
             clear_conntrack: bool = True) -> SyncResult:
        """Converge to services (model.Service) and slices (EndpointSlice). Raises
        RuntimeError when the kernel refused the rules (the previous ones stay;
        the next sync is full). clear_conntrack=False leaves stale UDP conntrack
        entries in place (a course exercise breaks exactly that)."""
        new = build_state(services, slices)
        full = full or self.need_full
        changed = None if full else changed_services(self.synced, new)
        if changed is not None and not changed:
            return SyncResult(full=False)
        t0 = time.monotonic()
        result = self.proxier.sync(new, changed)
        result.seconds = result.seconds or time.monotonic() - t0
        self.last = result
        if result.error:
            self.need_full = True
            raise RuntimeError(f"{self.mode} rules refused by the kernel: {result.error}")
        if clear_conntrack:
            self._clear_conntrack(self.synced, new)
        self.synced, self.need_full = new, False
        log.info("%s sync: %s, %d service ports, %.3f s", self.mode, "full" if full else f"{len(changed)} changed",
                 len(new.services), result.seconds)
        return result

    def _clear_conntrack(self, old: ProxyState, new: ProxyState) -> None:
        stale, gaining = stale_udp_endpoints(old, new), udp_services_gaining_endpoints(old, new)
        if not stale and not gaining:
            return
        flows = conntrack.udp_flows(self.netns)  # listed once: a Deployment's worth of gone endpoints is one exec
        for svc, ep in stale:
            conntrack.flush_udp_endpoint(svc, ep, self.node, netns=self.netns, flows=flows)
        for svc in gaining:
            conntrack.flush_udp_service(svc, self.node, netns=self.netns, flows=flows)

    def cleanup(self) -> None:
        self.proxier.cleanup()
        self.synced, self.need_full = ProxyState(), True

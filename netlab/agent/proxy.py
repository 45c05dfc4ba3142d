"""The proxy controller: kube-proxy's part of a node agent.

Hosts a proxy.nodeproxy.NodeProxy for the lab's proxyMode (iptables, nftables with its
layout, or ipvs) and syncs it when a Service or an EndpointSlice changes, rate limited
with a burst like kube-proxy's minSyncPeriod, and fully every syncPeriod to repair
outside interference (a flushed chain, a deleted element). On start it removes every
rule of the other modes: `kube-netlab up` with a changed proxyMode restarts the agents.
While a course exercise pauses "proxy/<node>" no sync runs (the broken rule stays); with
"proxy.conntrack/<node>" rules sync but stale UDP conntrack entries are left. A resume syncs fully.
"""
from __future__ import annotations

from proxy.nodeproxy import NodeProxy
from proxy.types import DEFAULT_SYNC_PERIOD, ProxyNode

from ..state import ENDPOINT_SLICES, PAUSED_REPAIRS_KEY, SERVICES
from .controller import Controller

MIN_SYNC_SECONDS = 1.0   # kube-proxy's minSyncPeriod: a burst of changes (a Deployment's pods
                         # coming up) is one restore a second, not one per pod; a quiet change syncs at once


def proxy_node(lab, node) -> ProxyNode:
    """What the proxy needs of the node: NodePorts answer on its underlay address; the
    whole pod CIDR (not the node's /24) is 'inside the cluster' for masquerading."""
    return ProxyNode(name=node.name, node_ips=(str(node.underlay_ip),), cluster_cidr=str(lab.pod_cidr))


class ProxyController(Controller):
    name = "proxy"
    prefixes = (SERVICES, ENDPOINT_SLICES, PAUSED_REPAIRS_KEY)
    repairs = ("proxy", "proxy.conntrack")
    condition = "ProxyFailing"
    resync_seconds = DEFAULT_SYNC_PERIOD
    min_interval = MIN_SYNC_SECONDS
    component = "kube-proxy"

    def setup(self) -> None:
        self.proxy = NodeProxy(proxy_node(self.lab, self.node), self.lab.proxy_mode,
                               nftables_layout=self.lab.nftables_layout)
        self.proxy.start()
        self.agent.proxy_mode = self.lab.proxy_mode

    def sync(self, full: bool) -> None:
        paused = self.paused()
        full = self.resumed(paused) or full
        if "proxy" in paused:
            return
        result = self.proxy.sync(self.state.services().values(), self.state.endpoint_slices(), full=full,
                                 clear_conntrack="proxy.conntrack" not in paused)
        if result is self.proxy.last:   # rules were written (a sync with nothing changed writes none)
            self.node_event("RulesSynced", f"{self.proxy.mode} {'full' if result.full else 'partial'} sync: "
                                           f"{len(self.proxy.synced.services)} service ports, {result.size} "
                                           f"rules written in {result.seconds * 1000:.1f} ms")

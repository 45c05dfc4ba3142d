"""The overlay controller: what flanneld does on a node with the VXLAN backend.

  - leases the node's pod subnet by compare-and-swap and renews the lease before its TTL
    runs out (flannel renews when less than an hour of its 24 h is left: the same fraction
    here, 1/24 of the TTL);
  - writes subnet.env, creates flannel.1 and the masquerade rules (again on every full
    sync: whatever was deleted by hand comes back);
  - programs one neighbour, FDB entry and route per remote node's lease, and removes them
    when that lease goes. sync_peers reads the kernel's tables each time, so a hand-deleted
    FDB entry or route is repaired by the next sync.

Watches /coreos.com/network/ (every lease change), and the paused repairs: while a course
exercise pauses one of this node's (state.REPAIRS: overlay.device, overlay.masquerade,
node.sysctl, and overlay.fdb/neigh/route, which pause the peer sync as a whole since one call
converges the three tables), that repair is skipped and the rest still runs; the first sync
after it is resumed is full.
"""
from __future__ import annotations

import logging
import time
from ipaddress import IPv4Address

from .. import state
from ..realize import ensure_masquerade, ensure_node, ensure_vxlan, new_vtep_mac, sync_peers
from ..realize.node import NODE_SYSCTLS
from ..realize.namespace import set_sysctl
from ..realize.overlay import Peer
from ..store.subnets import (
    DEFAULT_PREFIX, DEFAULT_TTL, Lease, LeaseLost, NetworkConfig, SubnetError, acquire_lease, find_lease, lease_key,
    list_leases, renew_lease, render_subnet_env,
)
from .controller import Controller

log = logging.getLogger("netlab.agent")
RENEW_MARGIN = 1 / 24  # of the TTL: flannel's subnetLeaseRenewMargin (1 h) over its subnetTTL (24 h)


class LeaseKeeper:
    """One node's subnet lease: acquired once, renewed when less than RENEW_MARGIN of its
    TTL is left, re-acquired (the same subnet when still free) when it was lost."""

    def __init__(self, store, public_ip: IPv4Address | str, backend_data: dict, *, config: NetworkConfig,
                 prefer: str | None = None, ttl: float | None = DEFAULT_TTL, clock=None):
        self.store, self.public_ip, self.backend_data = store, public_ip, backend_data
        self.config, self.prefer, self.ttl = config, prefer, ttl
        self.clock = clock or time.time  # wall clock: the store's TTLs are wall-clock times
        self.lease: Lease | None = None

    def acquire(self) -> Lease:
        prefer = str(self.lease.subnet) if self.lease else self.prefer
        self.lease = acquire_lease(self.store, self.public_ip, self.backend_data, config=self.config,
                                   prefer=prefer, ttl=self.ttl)
        return self.lease

    def renew_at(self) -> float | None:
        """Wall-clock time from which the lease is renewed (None: it never expires)."""
        if self.lease is None or self.lease.expiration is None or self.ttl is None:
            return None
        return self.lease.expiration - self.ttl * RENEW_MARGIN

    def keep(self) -> Lease:
        """The lease, renewed if due, re-acquired if lost (check .lease.subnet afterwards)."""
        if self.lease is None:
            return self.acquire()
        if not self._still_ours():  # expired while the agent was stopped, or taken
            log.warning("lease %s for %s is gone: acquiring again", self.lease.subnet, self.public_ip)
            return self.acquire()
        due = self.renew_at()
        if due is None or self.clock() < due:
            return self.lease
        try:
            self.lease = renew_lease(self.store, self.lease, ttl=self.ttl)
            log.info("lease %s renewed until %s", self.lease.subnet, self.lease.expiration)
        except LeaseLost as e:
            log.warning("%s: acquiring again", e)
            self.acquire()
        return self.lease

    def _still_ours(self) -> bool:
        """The key is there and names us (it may have expired while the agent was stopped)."""
        kv = self.store.get(lease_key(self.lease.subnet))
        try:
            return kv is not None and Lease.from_kv(kv).public_ip == IPv4Address(self.public_ip)
        except SubnetError:
            return False


class OverlayController(Controller):
    name = "overlay"
    prefixes = (DEFAULT_PREFIX + "/", state.PAUSED_REPAIRS_KEY)
    condition = "NetworkUnavailable"
    component = "flanneld"
    repairs = ("overlay.device", "overlay.masquerade", "node.sysctl", *sorted(state.OVERLAY_PEER_REPAIRS))

    def __init__(self, agent, *, lease_ttl: float | None = DEFAULT_TTL):
        super().__init__(agent)
        self.lease_ttl = lease_ttl
        self.keeper: LeaseKeeper | None = None
        self.vtep_mac: str | None = None

    def setup(self) -> None:
        lab, node = self.lab, self.node
        ensure_node(self.netns)
        self.vtep_mac = self._vtep_mac()
        cfg = NetworkConfig.make(lab.pod_cidr, subnet_len=lab.subnet_len,
                                 backend={"Type": "vxlan", "VNI": lab.vxlan.vni, "Port": lab.vxlan.port})
        # prefer the i-th subnet for the i-th node, so node-a gets 10.244.1.0/24 whoever starts first
        prefer = lab.node_subnets()[lab.node_names.index(node.name)]
        self.keeper = LeaseKeeper(self.store, node.underlay_ip, {"VNI": lab.vxlan.vni, "VtepMAC": self.vtep_mac},
                                  config=cfg, prefer=str(prefer), ttl=self.lease_ttl, clock=self.clock)
        self.agent.lease = self.keeper.acquire()
        self.node_event("LeaseAcquired", self._lease_text(self.agent.lease))
        self._ensure_local(self.paused())
        log.info("node %s: subnet %s, VTEP %s on %s", node.name, self.agent.lease.subnet, self.vtep_mac,
                 node.underlay_ip)

    def _lease_text(self, lease: Lease) -> str:
        until = "" if lease.expiration is None else \
            time.strftime(" until %Y-%m-%dT%H:%M:%SZ", time.gmtime(lease.expiration))
        return f"subnet {lease.subnet} for {lease.public_ip} (VTEP {self.vtep_mac}){until}"

    def _vtep_mac(self) -> str:
        """Stable across restarts: the file, else the MAC in our previous lease, else a new one."""
        path = self.paths.vtep_mac(self.node.name)
        try:
            with open(path) as f:
                mac = f.read().strip()
                if mac:
                    return mac
        except FileNotFoundError:
            pass
        prev = find_lease(self.store, self.node.underlay_ip)
        mac = (prev.backend_data or {}).get("VtepMAC") if prev else None
        mac = mac or new_vtep_mac()
        state.write_file(path, mac + "\n")
        return mac

    def _ensure_local(self, paused: frozenset[str] = frozenset()) -> None:
        """subnet.env, flannel.1, the masquerade rules and the node's sysctls: converge (no-ops
        when all is in place), except the repairs an exercise paused."""
        lab, node, subnet = self.lab, self.node, str(self.agent.lease.subnet)
        state.write_file(self.paths.subnet_env(node.name),
                         render_subnet_env(lab.pod_cidr, subnet, lab.overlay_mtu, ipmasq=True))
        if "overlay.device" not in paused:
            ensure_vxlan(self.netns, subnet, vtep_mac=self.vtep_mac, local_ip=str(node.underlay_ip),
                         vni=lab.vxlan.vni, port=lab.vxlan.port, mtu=lab.overlay_mtu,
                         underlay_dev=getattr(self.agent, "underlay_dev", "eth0"))
        if "overlay.masquerade" not in paused:
            ensure_masquerade(self.netns, str(lab.pod_cidr), subnet)
        if "node.sysctl" not in paused:
            for key, value in NODE_SYSCTLS.items():  # ip_forward switched off by hand comes back
                if set_sysctl(self.netns, key, value):
                    self.node_event("SysctlRepaired", f"{key} set to {value} again")

    def sync(self, full: bool) -> None:
        before = self.agent.lease
        lease = self.keeper.keep()
        if lease.subnet != before.subnet:
            # cni0, the pods' addresses and the IPAM leases all hang on the old subnet
            raise RuntimeError(f"the node's subnet lease {before.subnet} was lost and {lease.subnet} leased "
                               f"instead; restart the node (kube-netlab delete node, then up)")
        if lease.expiration != before.expiration:
            self.node_event("LeaseRenewed", self._lease_text(lease))
        self.agent.lease = lease
        paused = self.paused()
        if self.resumed(paused) or full:
            self._ensure_local(paused)
        if not paused & state.OVERLAY_PEER_REPAIRS:  # else an exercise broke a peer entry: they stay as they are
            self._sync_peers()
        renew_at = self.keeper.renew_at()
        if renew_at is not None and self.runner is not None:
            self.runner.retry_after(renew_at - self.clock())
        self.agent.report_node()  # peers and lease expiration (a no-op write is skipped)

    def _sync_peers(self) -> None:
        peers = [Peer(subnet=str(l.subnet), mac=l.backend_data["VtepMAC"], underlay_ip=str(l.public_ip))
                 for l in list_leases(self.store)
                 if l.public_ip != self.node.underlay_ip and l.backend_type == "vxlan"
                 and (l.backend_data or {}).get("VtepMAC")]
        result = sync_peers(self.netns, peers, vni=self.lab.vxlan.vni)
        if result.changed:
            log.info("overlay peers: +%s -%s", result.added, result.removed)
            by_subnet = {p.subnet: p for p in peers}
            for subnet in result.added:
                p = by_subnet[subnet]
                self.node_event("PeerAdded", f"{subnet} via {p.underlay_ip} (VTEP {p.mac}): route, neighbour "
                                             f"and FDB entry on {self.lab.vxlan.device}")
            for subnet in result.removed:
                self.node_event("PeerRemoved", f"{subnet}: its lease is gone; route, neighbour and FDB entry "
                                               f"removed from {self.lab.vxlan.device}")
        self.agent.peers = sorted(p.subnet for p in peers)

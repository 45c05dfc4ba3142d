"""kube-proxy's IPVS mode for one node: virtual servers through IPVS's generic
netlink API, service addresses on the kube-ipvs0 dummy device, and the few
KUBE-* iptables rules IPVS still needs for masquerading.

A full sync reads the kernel's virtual servers and addresses (pyroute2 dumps)
and converges them to plan.plan(); a partial sync diffs the changed service
ports against what the last sync programmed, kept in memory (the proxier is
long-lived), and reads nothing back. Writes go in netlink batches
(netlink.py); real servers are added and removed one by one (open connections
to the others stay). The kernel must have IPVS and the dummy driver (this
project tests it under Debian's kernel in qemu: tests/kernel/).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from typing import AbstractSet, Mapping

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni import netns as _netns
from proxy.types import ProxyNode, ProxyState, ServicePortName, SyncResult

from .netlink import (NETLINK_GENERIC, NETLINK_ROUTE, RTM_DELADDR, RTM_NEWADDR, NetlinkBatch, NetlinkDumps,
                      address_request, dest_request, genl_family_id, service_request)
from .plan import (DUMMY_DEVICE, FILTER_CHAINS, FLAG_PERSISTENT, JUMPS, NAT_CHAINS, SYSCTLS, IpvsPlan, RealServer,
                   RuleChanges, VirtualServer, VirtualServerKey, check_node, jump_rule, missing_jumps, plan, replan,
                   restore_text)

log = logging.getLogger("netlab.proxy.ipvs")


class IpvsProxier:
    mode = "ipvs"

    def __init__(self, node: ProxyNode, *, netns: str | None = None):
        self.node = check_node(node)
        self.netns = netns             # None: this process's namespace (inside a node agent)
        self._synced: IpvsPlan | None = None   # what the last successful sync programmed
        self._device = 0               # kube-ipvs0's index, found by the last full sync
        self._family: int | None = None   # the IPVS generic netlink family's number
        self.ipvs_changes = 0          # virtual/real servers and addresses the last sync changed

    # --- namespace plumbing ---------------------------------------------------

    @contextlib.contextmanager
    def _socket(self, cls):
        with _netns.entered(self.netns):      # a netlink socket keeps the namespace it was opened in
            sock = cls()
        try:
            yield sock
        finally:
            sock.close()

    def _run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
        with _netns.entered(self.netns):      # the child is forked in the namespace
            return subprocess.run(argv, input=input, capture_output=True, text=True)

    def _sysctls(self) -> None:
        with _netns.entered(self.netns):
            if not os.path.isdir("/proc/sys/net/ipv4/vs"):
                raise RuntimeError("this kernel has no IPVS (/proc/sys/net/ipv4/vs is missing): load the ip_vs "
                                   "module (CONFIG_IP_VS), or use proxyMode iptables or nftables; "
                                   "tests/kernel/ runs IPVS mode under Debian's kernel in qemu")
            for key, value in SYSCTLS.items():
                with open(f"/proc/sys/{key}", "w") as f:
                    f.write(str(value))

    # --- sync -------------------------------------------------------------------

    def sync(self, state: ProxyState, changed: frozenset[ServicePortName] | None = None) -> SyncResult:
        """Full: read the kernel's virtual servers and addresses and converge them.
        Partial: diff the changed service ports against what the last sync
        programmed (kept in memory; nothing is read back), touch only those
        virtual/real servers and addresses, and add or delete only the nat rules
        whose text came or went."""
        t0 = time.monotonic()
        full = changed is None or self._synced is None
        try:
            if full:
                want = plan(state, self.node)
                ops, rule_lines = self._sync_full(want)
            else:
                want, rule_changes = replan(self._synced, state, self.node, changed)
                ops, rule_lines = self._sync_partial(want, changed, rule_changes)
        except (NetlinkError, OSError, RuntimeError) as e:
            self._synced, self._family = None, None   # the next sync is full and looks everything up again
            log.error("ipvs sync failed (the next one is full): %s", e)
            return SyncResult(full=full, seconds=time.monotonic() - t0, error=str(e))
        self._synced, self.ipvs_changes = want, ops
        return SyncResult(full=full, seconds=time.monotonic() - t0, size=ops + rule_lines)

    def _sync_full(self, want: IpvsPlan) -> tuple[int, int]:
        self._sysctls()
        with self._socket(IPRoute) as ipr:
            self._device = self._ensure_device(ipr)   # first: it marks this namespace as running IPVS mode
            have_addresses = {a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")
                              for a in ipr.get_addr(index=self._device, family=socket.AF_INET)}
        # one iptables-save finds the jumps from the built-in chains that are missing;
        # the one restore inserts them with the rules (not an iptables -C/-I per jump)
        saved = self._run(["iptables-save"])
        if saved.returncode != 0:
            raise RuntimeError(f"iptables-save: {saved.stderr.strip()}")
        text = restore_text(want, self.node, missing_jumps(saved.stdout))
        self._restore(text)
        if self._family is None:
            self._family = genl_family_id(netns=self.netns)
        with NetlinkDumps(NETLINK_GENERIC, self.netns) as dumps:
            kernel = dumps.virtual_servers(self._family)
            # real servers only of the ones kept (the others are deleted whole)
            have = {key: VirtualServer(key, None, tuple(dumps.real_servers(self._family, key))
                                       if key in want.virtual_servers else (),
                                       scheduler, timeout if flags & FLAG_PERSISTENT else 0)
                    for key, (scheduler, flags, timeout) in kernel.items()}
        ops = self._write(have, want.virtual_servers, have.keys() | want.virtual_servers.keys(),
                          have_addresses, want.addresses)
        return ops, text.count("\n-A ")

    def _sync_partial(self, want: IpvsPlan, changed: frozenset[ServicePortName],
                      rule_changes: RuleChanges) -> tuple[int, int]:
        before = self._synced
        text = rule_changes.restore_text()
        if text:
            self._restore(text)
        keys = {vs.key for name in changed for plans in (before.services, want.services)
                for vs in getattr(plans.get(name), "virtual_servers", ())}
        ops = self._write(before.virtual_servers, want.virtual_servers, keys, before.addresses, want.addresses)
        return ops, len(rule_changes.added) + len(rule_changes.deleted)

    def _write(self, have: Mapping[VirtualServerKey, VirtualServer], want: Mapping[VirtualServerKey, VirtualServer],
               keys, have_addresses: AbstractSet[str], want_addresses: AbstractSet[str]) -> int:
        """Converge the virtual servers named in keys, and the addresses, from have to
        want in two netlink batches; returns how many servers and addresses changed.
        Real servers are added and removed one by one: open connections to the others stay."""
        ipvs = NetlinkBatch(NETLINK_GENERIC, self.netns)
        for key in sorted(keys):
            before, after = have.get(key), want.get(key)
            if after is None:
                if before is not None:
                    ipvs.add(self._family, "del", service_request("del", key), f"delete virtual server {key}")
                continue
            current: tuple[RealServer, ...] = ()
            if before is None:
                ipvs.add(self._family, "add", service_request("add", key, after), f"add virtual server {key}")
            else:
                if not after.same_settings(before.scheduler, before.flags, before.affinity_timeout):
                    ipvs.add(self._family, "set", service_request("set", key, after), f"update virtual server {key}")
                current = before.real_servers
            for real in sorted(set(current) - set(after.real_servers)):
                ipvs.add(self._family, "del", dest_request("del", key, real), f"delete real server {real} of {key}")
            for real in sorted(set(after.real_servers) - set(current)):
                ipvs.add(self._family, "add", dest_request("add", key, real), f"add real server {real} to {key}")
        servers = len(ipvs)
        ipvs.send()
        addresses = NetlinkBatch(NETLINK_ROUTE, self.netns)
        for ip in sorted(want_addresses - have_addresses):
            addresses.add(RTM_NEWADDR, "add", address_request(self._device, ip), f"add {ip}/32 to {DUMMY_DEVICE}")
        for ip in sorted(have_addresses - want_addresses):
            addresses.add(RTM_DELADDR, "del", address_request(self._device, ip),
                          f"delete {ip}/32 from {DUMMY_DEVICE}")
        ops = servers + len(addresses)
        addresses.send()
        return ops

    def _ensure_device(self, ipr: IPRoute) -> int:
        """kube-ipvs0, a dummy left down (and NOARP, as dummies are): its /32s still
        get local routes, so the node accepts service traffic, and it never answers ARP."""
        found = ipr.link_lookup(ifname=DUMMY_DEVICE)
        if not found:
            ipr.link("add", ifname=DUMMY_DEVICE, kind="dummy")
            found = ipr.link_lookup(ifname=DUMMY_DEVICE)
        return found[0]

    # --- iptables -----------------------------------------------------------------

    def _restore(self, text: str) -> None:
        res = self._run(["iptables-restore", "--noflush"], input=text)
        if res.returncode != 0:
            raise RuntimeError(f"iptables-restore: {res.stderr.strip()}")

    # --- cleanup --------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove every virtual server, kube-ipvs0 and the KUBE-* rules. The
        iptables part runs only where kube-ipvs0 exists: the chain names are
        shared with iptables mode, whose rules must survive an IPVS cleanup."""
        with self._socket(IPRoute) as ipr:
            found = ipr.link_lookup(ifname=DUMMY_DEVICE)
            if found:
                self._remove_rules()
                ipr.link("del", index=found[0])
        try:
            self._family = self._family or genl_family_id(netns=self.netns)
        except OSError as e:        # no IPVS in this kernel: nothing of it can exist
            log.debug("ipvs cleanup: %s", e)
            keys = []
        else:
            with NetlinkDumps(NETLINK_GENERIC, self.netns) as dumps:
                keys = sorted(dumps.virtual_servers(self._family))
        if keys:
            batch = NetlinkBatch(NETLINK_GENERIC, self.netns)
            for key in keys:
                batch.add(self._family, "del", service_request("del", key), f"delete virtual server {key}")
            batch.send()
        self._synced = None

    def _remove_rules(self) -> None:
        for table, builtin, chain, comment in JUMPS:
            spec = jump_rule(table, builtin, chain, comment)
            while self._run(["iptables", "-w", "-t", table, "-D", *spec]).returncode == 0:
                pass
        lines = []
        for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
            lines += [f"*{table}", *(f":{c} - [0:0]" for c in chains), *(f"-X {c}" for c in chains), "COMMIT"]
        res = self._run(["iptables-restore", "--noflush"], input="\n".join(lines) + "\n")
        if res.returncode != 0:
            log.warning("ipvs cleanup: KUBE-* chains stay (still referenced?): %s", res.stderr.strip())

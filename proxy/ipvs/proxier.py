"""kube-proxy's IPVS mode for one node: virtual servers through pyroute2's
IPVS (generic netlink) API, service addresses on the kube-ipvs0 dummy device,
and the few KUBE-* iptables rules IPVS still needs for masquerading.

Each sync diffs plan.plan() against the kernel: real servers are added and
removed one by one (open connections to the others stay), stale virtual
servers and addresses go. The kernel must have IPVS and the dummy driver
(this project tests it under Debian's kernel in qemu: tests/kernel/).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time

from pyroute2 import IPVS, IPRoute, IPVSDest, IPVSService
from pyroute2.netlink.exceptions import NetlinkError

from cni import netns as _netns
from proxy.types import ProxyNode, ProxyState, ServicePortName, SyncResult

from .plan import (DUMMY_DEVICE, FILTER_CHAINS, JUMPS, NAT_CHAINS, SYSCTLS, IpvsPlan, RealServer, VirtualServer,
                   VirtualServerKey, check_node, iptables_rules, jump_rule, plan)

log = logging.getLogger("netlab.proxy.ipvs")

PROTOCOL_NUMBERS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOL_NUMBERS.items()}
FWD_MASQ = 0          # IP_VS_CONN_F_MASQ: NAT to the real server (pyroute2's default is 3, direct routing)


def _service_record(key: VirtualServerKey, vs: VirtualServer | None = None) -> IPVSService:
    fields = {"addr": key.address, "port": key.port, "protocol": PROTOCOL_NUMBERS[key.protocol]}
    if vs is not None:
        fields.update(sched_name=vs.scheduler, timeout=vs.affinity_timeout,
                      flags={"flags": vs.flags, "mask": 0xFFFF})
    return IPVSService(**fields)


def _dest_record(real: RealServer) -> IPVSDest:
    return IPVSDest(addr=real.address, port=real.port, weight=real.weight, fwd_method=FWD_MASQ)


class IpvsProxier:
    mode = "ipvs"

    def __init__(self, node: ProxyNode, *, netns: str | None = None):
        self.node = check_node(node)
        self.netns = netns             # None: this process's namespace (inside a node agent)
        self._synced: IpvsPlan | None = None   # the last plan the kernel took whole
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
        t0 = time.monotonic()
        full = changed is None or self._synced is None
        want = plan(state, self.node)
        rules = iptables_rules(state, self.node)
        try:
            self._sysctls()
            with self._socket(IPRoute) as ipr:
                index = self._ensure_device(ipr)   # first: it marks this namespace as running IPVS mode
                self._restore(rules)
                if full:
                    self._ensure_jumps()
                with self._socket(IPVS) as ipvs:
                    ops = self._sync_virtual_servers(ipvs, want, None if full else changed)
                ops += self._sync_addresses(ipr, index, want.addresses)
        except (NetlinkError, OSError, RuntimeError) as e:
            self._synced = None
            log.error("ipvs sync failed: %s", e)
            return SyncResult(full=full, seconds=time.monotonic() - t0, error=str(e))
        self._synced, self.ipvs_changes = want, ops
        return SyncResult(full=full, seconds=time.monotonic() - t0, size=ops + rules.count("\n-A "))

    def _ensure_device(self, ipr: IPRoute) -> int:
        """kube-ipvs0, a dummy left down (and NOARP, as dummies are): its /32s still
        get local routes, so the node accepts service traffic, and it never answers ARP."""
        found = ipr.link_lookup(ifname=DUMMY_DEVICE)
        if not found:
            ipr.link("add", ifname=DUMMY_DEVICE, kind="dummy")
            found = ipr.link_lookup(ifname=DUMMY_DEVICE)
        return found[0]

    def _sync_addresses(self, ipr: IPRoute, index: int, want: frozenset[str]) -> int:
        have = {a.get("IFA_LOCAL") or a.get("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=socket.AF_INET)}
        for ip in sorted(want - have):
            ipr.addr("add", index=index, address=ip, prefixlen=32)
        for ip in sorted(have - want):
            ipr.addr("del", index=index, address=ip, prefixlen=32)
        return len(want ^ have)

    def _sync_virtual_servers(self, ipvs: IPVS, want: IpvsPlan,
                              changed: frozenset[ServicePortName] | None) -> int:
        have = read_virtual_servers(ipvs)
        if changed is None:
            todo = list(want.virtual_servers.values())
            stale = [key for key in have if key not in want.virtual_servers]
        else:
            todo = want.of_services(changed)
            old = self._synced.of_services(changed) if self._synced else []
            stale = [vs.key for vs in old if vs.key not in want.virtual_servers and vs.key in have]
        ops = 0
        for key in stale:
            ipvs.service("del", service=_service_record(key))
            ops += 1
        for vs in todo:
            record = _service_record(vs.key, vs)
            if vs.key not in have:
                ipvs.service("add", service=record)
                ops += 1
                current: set[RealServer] = set()
            else:
                if not vs.same_settings(*have[vs.key]):
                    ipvs.service("set", service=record)
                    ops += 1
                current = read_real_servers(ipvs, vs.key)
            wanted = set(vs.real_servers)
            for real in sorted(current - wanted):
                ipvs.dest("del", service=record, dest=_dest_record(real))
            for real in sorted(wanted - current):
                ipvs.dest("add", service=record, dest=_dest_record(real))
            ops += len(current ^ wanted)
        return ops

    # --- iptables -----------------------------------------------------------------

    def _restore(self, text: str) -> None:
        res = self._run(["iptables-restore", "--noflush"], input=text)
        if res.returncode != 0:
            raise RuntimeError(f"iptables-restore: {res.stderr.strip()}")

    def _ensure_jumps(self) -> None:
        for table, builtin, chain, comment in JUMPS:
            spec = jump_rule(table, builtin, chain, comment)
            if self._run(["iptables", "-w", "-t", table, "-C", *spec]).returncode != 0:
                res = self._run(["iptables", "-w", "-t", table, "-I", *spec])
                if res.returncode != 0:
                    raise RuntimeError(f"iptables -t {table} -I {builtin}: {res.stderr.strip()}")

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
            with self._socket(IPVS) as ipvs:
                for key in read_virtual_servers(ipvs):
                    ipvs.service("del", service=_service_record(key))
        except NetlinkError as e:   # no IPVS in this kernel: nothing of it can exist
            log.debug("ipvs cleanup: %s", e)
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


def read_virtual_servers(ipvs: IPVS) -> dict[VirtualServerKey, tuple[str, int, int]]:
    """The kernel's virtual servers: key -> (scheduler, flags, timeout). fwmark
    services (no address) are not ours and are skipped."""
    out = {}
    for msg in ipvs.service("dump"):
        svc = msg.get("IPVS_CMD_ATTR_SERVICE")
        protocol = PROTOCOL_NAMES.get(svc.get("IPVS_SVC_ATTR_PROTOCOL"))
        address = svc.get("IPVS_SVC_ATTR_ADDR")
        if protocol is None or not address:
            continue
        key = VirtualServerKey(protocol, address, svc.get("IPVS_SVC_ATTR_PORT"))
        flags = svc.get("IPVS_SVC_ATTR_FLAGS")
        out[key] = (svc.get("IPVS_SVC_ATTR_SCHED_NAME"), flags["flags"] if flags else 0,
                    svc.get("IPVS_SVC_ATTR_TIMEOUT") or 0)
    return out


def read_real_servers(ipvs: IPVS, key: VirtualServerKey) -> set[RealServer]:
    out = set()
    for msg in ipvs.dest("dump", service=_service_record(key)):
        dest = msg.get("IPVS_CMD_ATTR_DEST")
        out.add(RealServer(dest.get("IPVS_DEST_ATTR_ADDR"), dest.get("IPVS_DEST_ATTR_PORT"),
                           dest.get("IPVS_DEST_ATTR_WEIGHT")))
    return out

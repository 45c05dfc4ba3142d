"""The node agent: one process per node, inside the node's network namespace, running
the controllers a real node runs as separate daemons (flanneld, the kubelet, and
kube-proxy with its endpoint publishing here), each on its own thread:

    overlay     lease + renewal, subnet.env, flannel.1, masquerade, peers   (flanneld)
    pods        the node's pods, their status, container restarts           (kubelet)
    endpoints   this node's EndpointSlices                                  (endpointslice controller, per node)
    proxy       Service rules: iptables, nftables or IPVS                   (kube-proxy)

One watcher loop reads the store's events and wakes the controllers concerned; each
also resyncs fully on a period. The agent reports the node's status: Ready while every
controller's last sync succeeded, a condition per failing controller otherwise. It also
serves exec'd netlab-bridge calls for this node from a warm daemon.

It survives the CLI exiting; `kube-netlab down` stops it. A killed agent, restarted,
converges: same lease (PublicIP), same VTEP MAC (kept on disk), pods adopted when their
processes still run.

    nsenter --net=/run/netns/<lab>-<node> python -m netlab.agent --lab LAB --node NODE

In a cluster across machines (`kube-netlab node join`) it runs in the host's own namespace
with --host-mode, against etcd with --store etcd://IP:2379. While the store is unreachable
the data path stays as it is: syncs fail (and are retried), nothing is removed.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Callable

from .. import state
from ..model import names
from ..realize import enable_host_mode
from ..state import LabState, NodeCondition, NodeStatus
from ..events import WARNING, EventRecorder
from ..store import StoreError, StoreUnavailable, open_store
from ..store.subnets import DEFAULT_TTL
from .controller import Controller, Watcher
from .endpoints import EndpointsController
from .heartbeat import HeartbeatController
from .overlay import OverlayController
from .pods import PodsController
from .proxy import ProxyController
from .runner import BoundedFrequencyRunner

log = logging.getLogger("netlab.agent")
WATCH_SECONDS = 0.1   # how often the watcher reads the store's events
STORE_RETRY_MAX = 8.0  # seconds: the longest backoff between syncs while the store is unreachable


def build_controllers(agent: "Agent") -> list[Controller]:
    """The node's controllers, in setup order (pods need the overlay's subnet). One line a controller."""
    return [
        HeartbeatController(agent),
        OverlayController(agent, lease_ttl=agent.lease_ttl),
        PodsController(agent),
        EndpointsController(agent),
        ProxyController(agent),
    ]


class Agent:
    def __init__(self, lab_name: str, node: str, paths: state.LabPaths | None = None, *, store=None,
                 clock: Callable[[], float] = time.time, lease_ttl: float | None = DEFAULT_TTL,
                 controllers: Callable[["Agent"], list[Controller]] = build_controllers,
                 host_mode: bool = False):
        self.paths = paths or state.LabPaths(lab_name)
        self.store = store or open_store(self.paths.store)
        self.state = LabState(self.store)
        self.recorder = EventRecorder(self.state, node, clock=clock)
        self.lab = self.state.lab()
        if self.lab is None:
            raise RuntimeError(f"lab {lab_name!r} has no lab document in {self.paths.store}; run kube-netlab up")
        self.node = self.lab.node(node)
        self.host_mode = host_mode              # the node is this host (node join): act in our own namespace
        self.netns = enable_host_mode() if host_mode else names.node_netns(self.lab.name, node)
        # the underlay device flannel.1 runs over: eth0 in a lab node; on a host, the one with its address
        self.underlay_dev = _iface_with(self.node.underlay_ip) if host_mode else names.NODE_UPLINK
        self.clock = clock                      # wall clock: statuses, leases and backoffs
        self.lease_ttl = lease_ttl
        self.lease = None                       # set by the overlay controller
        self.peers: list[str] = []              # remote pod subnets programmed on flannel.1
        self.proxy_mode: str | None = None      # the mode whose rules the node runs (the proxy controller's)
        self.started = False                    # every controller set up and synced once
        self.failures: dict[str, str] = {}      # controller name -> why its last sync failed
        self._unreachable: dict[str, int] = {}  # controller name -> syncs failed in a row on an unreachable store
        self._conditions: dict[str, NodeCondition] = {}
        self._report_lock = threading.Lock()
        self.controllers = controllers(self)
        for c in self.controllers:
            resync = c.resync_seconds
            c.runner = BoundedFrequencyRunner(c.name, lambda full, c=c: self.sync_controller(c, full),
                                              min_interval=min(c.min_interval, resync), max_interval=resync)

    def controller(self, name: str) -> Controller:
        return next(c for c in self.controllers if c.name == name)

    # --- syncing and its failures --------------------------------------------------------
    def sync_controller(self, c: Controller, full: bool) -> bool:
        """One sync of c; a failure is reported as c's node condition and retried (fully) soon."""
        try:
            c.sync(full)
        except Exception as e:
            delay = c.retry_seconds
            if isinstance(e, StoreUnavailable):  # etcd down or cut off: back off, keep the data path as it is
                n = self._unreachable[c.name] = self._unreachable.get(c.name, 0) + 1
                delay = min(c.retry_seconds * 2 ** (n - 1), STORE_RETRY_MAX)
                log.warning("%s: store unreachable (attempt %d, next in %.0fs): %s", c.name, n, delay, e)
            else:
                log.error("%s: sync failed:\n%s", c.name, traceback.format_exc())
            self.failures[c.name] = f"{type(e).__name__}: {e}"
            c.node_event("SyncFailed", f"{c.name}: {self.failures[c.name]}", WARNING)
            if c.runner is not None:
                c.runner.retry_after(delay, full=True)
            self.report_node()
            return False
        self._unreachable.pop(c.name, None)
        if self.failures.pop(c.name, None) is not None:
            log.info("%s: sync succeeded again", c.name)
            self.report_node()
        return True

    def _condition(self, type_: str, status: bool, reason: str, message: str) -> NodeCondition:
        prev = self._conditions.get(type_)
        since = prev.since if prev is not None and prev.status == status else self.clock()
        c = self._conditions[type_] = NodeCondition(type_, status, reason, message, since)
        return c

    def node_status(self, fatal: str = "") -> NodeStatus:
        failing = [f"{name}: {msg}" for name, msg in self.failures.items()]
        problems = ([fatal] if fatal else []) + failing
        ready = self.started and not problems
        conditions = [self._condition("Ready", ready, "AgentReady" if ready else "AgentNotReady",
                                      "agent is posting ready status" if ready else
                                      "; ".join(problems) or "starting")]
        for c in self.controllers:
            if c.condition:
                msg = self.failures.get(c.name)
                conditions.append(self._condition(c.condition, msg is not None, "SyncFailed" if msg else "SyncSucceeded",
                                                  msg or ""))
        lease = self.lease
        return NodeStatus(ready=ready, message="; ".join(problems), agent_pid=os.getpid(),
                          pod_cidr=str(lease.subnet) if lease else None,
                          vtep_mac=(lease.backend_data or {}).get("VtepMAC") if lease else None,
                          underlay_ip=str(self.node.underlay_ip), netns=self.netns, peers=tuple(self.peers),
                          lease_expiration=lease.expiration if lease else None, conditions=tuple(conditions),
                          proxy_mode=self.proxy_mode)

    def report_node(self, fatal: str = "") -> None:
        with self._report_lock:  # controllers report from their own threads
            try:
                self.state.put_node_status(self.node.name, self.node_status(fatal))
            except StoreError as e:  # the store is away: the next report after it returns says it all
                log.warning("cannot report the node's status: %s", e)

    # --- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        from cni import daemon
        self.recorder.record("netlab-agent", "Node", None, self.node.name, "Starting",
                             f"Starting node agent (pid {os.getpid()})")
        for c in self.controllers:
            c.setup()
        cni_stop = threading.Event()
        cni_thread = threading.Thread(target=daemon.serve, kwargs={"stop": cni_stop}, daemon=True, name="cni")
        cni_thread.start()
        watcher = Watcher(self.store, self.controllers)  # from before the first syncs: nothing is missed
        for c in self.controllers:
            self.sync_controller(c, True)
        self.started = True
        self.report_node()
        threads = [threading.Thread(target=c.runner.loop, args=(stop,), daemon=True, name=c.name)
                   for c in self.controllers]
        for t in threads:
            t.start()
        unreachable = None
        try:
            while not stop.wait(WATCH_SECONDS):
                try:
                    watcher.step()
                    unreachable = None
                except StoreUnavailable as e:  # said once per outage; the controllers retry on their own
                    if unreachable is None:
                        log.warning("store unreachable, keeping the data path as it is: %s", e)
                    unreachable = e
                except Exception:
                    log.error("watch failed:\n%s", traceback.format_exc())
        finally:
            for c in self.controllers:
                c.runner.stop()
            for t in threads:
                t.join(timeout=10)
            cni_stop.set()
            cni_thread.join(timeout=2)


def _iface_with(ip) -> str:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=2, address=str(ip)):
            return ipr.get_links(addr["index"])[0].get_attr("IFLA_IFNAME")
    raise RuntimeError(f"no interface of this host has the node's underlay address {ip}; join again with --iface")


GIL_SWITCH_SECONDS = 0.0005


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m netlab.agent", description="kube-netlab node agent")
    p.add_argument("--lab", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--store", help="the store's location (default: the lab's SQLite file), e.g. etcd://IP:2379")
    p.add_argument("--host-mode", action="store_true",
                   help="the node is this host: act in this process's own network namespace (node join)")
    p.add_argument("--lease-ttl", type=float, default=DEFAULT_TTL,
                   help="seconds a subnet lease lasts unless renewed (flannel's 24 h by default)")
    a = p.parse_args(argv)
    # the pods thread makes many short syscalls (netlink, fork); each time it gives up the GIL it
    # waits out the switch interval of a busy thread (endpoints, proxy): 5 ms by default, ~40 ms a pod
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {a.node} %(threadName)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    store = open_store(a.store) if a.store else None
    delay = 1.0
    while True:  # a store away at start (etcd not up yet): wait for it, as the kubelet waits for its API server
        agent = None
        try:
            agent = Agent(a.lab, a.node, lease_ttl=a.lease_ttl, store=store, host_mode=a.host_mode)
            agent.run(stop)
            return 0
        except StoreUnavailable as e:
            if agent is not None and agent.started:
                return _failed(agent)
            log.warning("store unreachable before the node was set up (next try in %.0fs): %s", delay, e)
            if stop.wait(delay):
                return 0
            delay = min(delay * 2, STORE_RETRY_MAX)
        except Exception:
            return _failed(agent)


def _failed(agent: Agent | None) -> int:
    """Called from an except block: log the failure and report it as the node's status."""
    log.error("agent failed:\n%s", traceback.format_exc())
    if agent is not None:
        try:
            agent.report_node(fatal=traceback.format_exc(limit=1).strip().splitlines()[-1])
        except Exception:
            pass
    return 1

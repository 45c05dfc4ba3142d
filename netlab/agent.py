"""The node agent: one process per node, inside the node's network namespace,
doing what flanneld, the kubelet and (later) kube-proxy do on a real node.

  - leases the node's pod subnet from the store by compare-and-swap (flannel),
    writes subnet.env, creates flannel.1 and the masquerade rules;
  - programs one neighbour, FDB entry and route per remote node, and removes
    them when that node's lease goes (flannel's VXLAN backend);
  - runs the pods the store assigns to this node, and reports their status;
  - serves exec'd netlab-bridge calls for this node from a warm daemon.

It survives the CLI exiting; `kube-netlab down` stops it. A killed agent,
restarted, converges: same lease (PublicIP), same VTEP MAC (kept on disk),
pods adopted when their processes still run.

    ip netns exec <lab>-<node> python -m netlab.agent --lab LAB --node NODE
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback

from cni import daemon

from . import state
from .model import Lab, Pod, names, object_from_dict
from .realize import ensure_masquerade, ensure_node, ensure_vxlan, new_vtep_mac, sync_peers
from .realize.overlay import Peer
from .store import open_store
from .store.subnets import NetworkConfig, acquire_lease, find_lease, list_leases, render_subnet_env
from .pods import PodRuntime, cni_conf

log = logging.getLogger("netlab.agent")
RESYNC_SECONDS = 5.0   # a full pass even without store changes (process liveness, outside interference)
POLL_SECONDS = 0.1


class Agent:
    def __init__(self, lab_name: str, node: str, paths: state.LabPaths | None = None):
        self.paths = paths or state.LabPaths(lab_name)
        self.store = open_store(self.paths.store)
        self.lab = Lab.from_dict(self.store.get_json(state.LAB_KEY), source=state.LAB_KEY)
        self.node = self.lab.node(node)
        self.netns = names.node_netns(self.lab.name, node)
        self.lease = None
        self.peers: list[str] = []             # remote pod subnets programmed on flannel.1
        self.runtime: PodRuntime | None = None
        self.running: dict[str, Pod] = {}      # pods this agent has set up, by key
        self.reported: dict[str, str] = {}     # last status written, by key (avoid no-op writes)
        self._parsed: dict[str, tuple[int, Pod]] = {}  # store key -> (mod_revision, Pod)

    # --- node setup (flannel) ------------------------------------------------------------
    def setup(self) -> None:
        lab, node = self.lab, self.node
        ensure_node(self.netns)
        mac = self._vtep_mac()
        cfg = NetworkConfig.make(lab.pod_cidr, subnet_len=lab.subnet_len,
                                 backend={"Type": "vxlan", "VNI": lab.vxlan.vni, "Port": lab.vxlan.port})
        # prefer the i-th subnet for the i-th node, so node-a gets 10.244.1.0/24 whoever starts first
        prefer = lab.node_subnets()[lab.node_names.index(node.name)]
        self.lease = acquire_lease(self.store, node.underlay_ip, {"VNI": lab.vxlan.vni, "VtepMAC": mac},
                                   config=cfg, prefer=prefer)
        subnet = str(self.lease.subnet)
        state.write_file(self.paths.subnet_env(node.name),
                         render_subnet_env(lab.pod_cidr, subnet, lab.overlay_mtu, ipmasq=True))
        ensure_vxlan(self.netns, subnet, vtep_mac=mac, local_ip=str(node.underlay_ip), vni=lab.vxlan.vni,
                     port=lab.vxlan.port, mtu=lab.overlay_mtu)
        ensure_masquerade(self.netns, str(lab.pod_cidr), subnet)
        self.runtime = PodRuntime(lab, node.name, self.paths, cni_conf(lab, node.name, subnet, lab.overlay_mtu))
        log.info("node %s: subnet %s, VTEP %s on %s", node.name, subnet, mac, node.underlay_ip)

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

    # --- overlay peers -------------------------------------------------------------------
    def sync_overlay(self) -> bool:
        """Converge flannel.1's peers to the leases; True when the set of peers changed."""
        peers = [Peer(subnet=str(l.subnet), mac=l.backend_data["VtepMAC"], underlay_ip=str(l.public_ip))
                 for l in list_leases(self.store)
                 if l.public_ip != self.node.underlay_ip and l.backend_type == "vxlan"
                 and (l.backend_data or {}).get("VtepMAC")]
        result = sync_peers(self.netns, peers, vni=self.lab.vxlan.vni)
        if result.changed:
            log.info("overlay peers: +%s -%s", result.added, result.removed)
        subnets = sorted(p.subnet for p in peers)
        changed, self.peers = subnets != self.peers, subnets
        return changed

    # --- pods ----------------------------------------------------------------------------
    def desired_pods(self) -> dict[str, Pod]:
        out, parsed = {}, {}
        for kv in self.store.list(state.PODS):
            cached = self._parsed.get(kv.key)
            pod = cached[1] if cached and cached[0] == kv.mod_revision else object_from_dict(json.loads(kv.value), kv.key)
            parsed[kv.key] = (kv.mod_revision, pod)
            if pod.node_name == self.node.name:
                out[pod.key] = pod
        self._parsed = parsed
        return out

    def sync_pods(self) -> None:
        desired = self.desired_pods()
        statuses = {kv.key[len(state.POD_STATUS):]: json.loads(kv.value) for kv in self.store.list(state.POD_STATUS)}
        # gone from the desired state: pods this agent runs, and pods a previous run of it left
        mine = {k for k, st in statuses.items() if st.get("node") == self.node.name}
        for key in sorted((set(self.running) | mine) - set(desired)):
            ns, name = key.split("/", 1)
            log.info("pod %s: deleting", key)
            self.runtime.delete(ns, name)
            self.running.pop(key, None)
            self.reported.pop(key, None)
            self.store.delete(state.pod_status_key(ns, name))
        for key, pod in desired.items():
            if key in self.running and self.running[key] != pod:  # spec changed: recreate, as a new pod
                self.runtime.delete(pod.namespace, pod.name)
                self.running.pop(key)
            if key not in self.running:
                adopt = statuses.get(key) if statuses.get(key, {}).get("node") == self.node.name else None
                if not adopt:
                    self._report(pod, {"phase": "Pending", "node": self.node.name, "netns": pod.netns(self.lab.name)})
                try:
                    st = self.runtime.create(pod, adopt=adopt)
                    log.info("pod %s: %s %s", key, st["phase"], st.get("podIP"))
                except Exception as e:  # one broken pod must not stop the node
                    log.error("pod %s: %s", key, e)
                    self._report(pod, {"phase": "Failed", "node": self.node.name, "message": str(e),
                                       "netns": pod.netns(self.lab.name)})
                    self.running[key] = pod
                    continue
                self.running[key] = pod
            else:
                self.runtime.supervise(pod)
            self._report(pod, self.runtime.status(pod))
        self.runtime.reap()

    def _report(self, pod: Pod, st: dict) -> None:
        text = state.dumps(st)
        if self.reported.get(pod.key) != text:
            self.store.put(state.pod_status_key(pod.namespace, pod.name), text)
            self.reported[pod.key] = text

    def report_node(self, ready: bool, message: str = "") -> None:
        self.store.put(state.node_status_key(self.node.name), state.dumps({
            "ready": ready, "message": message, "agentPid": os.getpid(),
            "podCIDR": str(self.lease.subnet) if self.lease else None,
            "vtepMAC": (self.lease.backend_data or {}).get("VtepMAC") if self.lease else None,
            "underlayIP": str(self.node.underlay_ip), "netns": self.netns, "peers": self.peers}))

    # --- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.setup()
        cni_stop = threading.Event()
        cni_thread = threading.Thread(target=daemon.serve, kwargs={"stop": cni_stop}, daemon=True, name="cni")
        cni_thread.start()
        self.sync_overlay()
        self.sync_pods()
        self.report_node(True)
        seen, last_full = self.store.revision(), time.monotonic()
        try:
            while not stop.wait(POLL_SECONDS):
                rev = self.store.revision()
                if rev == seen and time.monotonic() - last_full < RESYNC_SECONDS:
                    continue
                try:
                    if self.sync_overlay():
                        self.report_node(True)  # the CLI waits for every node to know every other
                    self.sync_pods()
                except Exception:
                    log.error("sync failed:\n%s", traceback.format_exc())
                seen, last_full = self.store.revision(), time.monotonic()
        finally:
            cni_stop.set()
            cni_thread.join(timeout=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m netlab.agent", description="kube-netlab node agent")
    p.add_argument("--lab", required=True)
    p.add_argument("--node", required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {a.node} %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent = Agent(a.lab, a.node)
    try:
        agent.run(stop)
    except Exception:
        log.error("agent failed:\n%s", traceback.format_exc())
        try:
            agent.report_node(False, traceback.format_exc(limit=1).strip().splitlines()[-1])
        except Exception:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

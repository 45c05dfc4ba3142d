"""`kube-netlab node join` and `node leave`: this machine as a node of a cluster.

join  picks the underlay interface (flannel's --iface/--public-ip, never Vagrant's
      management NIC when a private network exists), records on this host what the
      node will make (cni0, flannel.<vni>, the sysctls it changes) BEFORE anything is
      made, adds the node to the cluster's lab document (pods are scheduled onto it),
      starts the node agent in host mode (the host's own namespace: lease, cni0,
      flannel.1, peers, pods, proxy, exactly as in the emulated lab) and waits for Ready.
      Run again, it converges: a running agent is kept, a dead one started again.
leave stops the agent and removes what the record names and nothing else: its pods
      (processes, namespaces, IPAM files), the links, the masquerade and KUBE-* rules,
      the sysctls it changed (set back), its lease, heartbeat and status; its pods are
      scheduled onto the other nodes.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from .. import engine, state
from ..model import ModelError, names
from ..realize.namespace import get_sysctl, process_alive, set_sysctl
from ..realize.node import NODE_SYSCTLS
from ..store.subnets import find_lease, release_lease
from .control import ClusterError, _open, desired_lock, lab_of
from .host import HostError, HostRecord, _addresses, choose_underlay, link_exists, records_here

JOIN_TIMEOUT = 180.0


def _local_ips() -> set[str]:
    return {str(a.ip) for _, a, _, _ in _addresses()}


def _kube_proxy_here() -> str | None:
    """Rules of a kube-proxy not ours: KUBE-* chains carry no prefix, so they cannot be told apart."""
    for argv in (["iptables-save", "-t", "nat"], ["nft", "list", "table", "ip", "kube-proxy"]):
        try:
            res = subprocess.run(argv, capture_output=True, text=True)
        except FileNotFoundError:
            continue
        if res.returncode == 0 and ("KUBE-SERVICES" in res.stdout or argv[0] == "nft"):
            return " ".join(argv[:2])
    return None


def join(store_url: str, node: str, *, iface: str | None = None, public_ip: str | None = None,
         timeout: float = JOIN_TIMEOUT, lease_ttl: float | None = None,
         say=print) -> tuple[state.NodeStatus, HostRecord]:
    if iface and public_ip:
        raise ClusterError("give --iface or --public-ip, not both (flanneld takes one)")
    store = _open(store_url)
    lab_state = state.LabState(store)
    doc = lab_state.cluster_doc()
    if doc is None:
        raise ClusterError(f"no cluster in {store_url}: run kube-netlab control up --store {store_url} "
                           f"[--listen IP] on the first machine")
    lab_name = doc["metadata"]["name"]
    try:
        underlay = choose_underlay(iface, public_ip, store_host=store_url.split("//", 1)[-1].split(":")[0].split("/")[0])
    except HostError as e:
        raise ClusterError(str(e)) from None
    say(f"node {node}: underlay {underlay.iface} {underlay.ip} ({underlay.why})")
    paths = state.LabPaths(lab_name)
    record = HostRecord.load(lab_name, node)
    if record is not None and record.public_ip != str(underlay.ip):
        raise ClusterError(f"node {node} joined from {record.public_ip} before; run kube-netlab node leave first")
    lab = _add_node(store, lab_state, doc, node, str(underlay.ip))

    # what will be made, recorded before it is
    if record is None:
        record = HostRecord(lab_name, node, store_url, underlay.iface, str(underlay.ip))
        vxlan = lab.vxlan.device
        foreign = [n for n in (names.NODE_BRIDGE, vxlan) if link_exists(n)]
        if foreign:
            raise ClusterError(f"{', '.join(foreign)} already exist on this machine and were not made by kube-netlab "
                               f"(another CNI or flanneld?); remove them, or join from a clean machine")
        other = _kube_proxy_here()
        if other:
            raise ClusterError(f"kube-proxy rules exist here already ({other} shows them); a node of this cluster "
                               f"would mix its KUBE-* rules with them: join from a clean machine")
        record.links = [names.NODE_BRIDGE, vxlan]
        here = _host_ns()
        record.sysctls = {k: get_sysctl(here, k) for k in NODE_SYSCTLS}
        record.save()

    pid = state.agent_alive(paths, node)
    if pid is None:
        pid = start_agent(paths, lab, node, store_url, lease_ttl=lease_ttl)
        say(f"node {node}: agent started (pid {pid}, log {paths.agent_log(node)})")
    else:
        say(f"node {node}: agent already running (pid {pid})")
    status = wait_node_ready(lab_state, paths, lab, node, timeout)
    store.close()
    return status, record


def _host_ns() -> str:
    from ..realize import enable_host_mode
    return enable_host_mode()


def _add_node(store, lab_state: state.LabState, doc: dict, node: str, ip: str):
    """The cluster's lab with this node in it (its IP updated); pods scheduled onto it."""
    with desired_lock(store, f"node join {node}"):
        current = lab_state.lab()
        nodes = [n.to_dict() for n in current.nodes] if current else []
        manifests = [o.to_dict() for o in current.objects] if current else None
        if any(n["name"] != node and n.get("underlayIP") == ip for n in nodes):
            other = next(n["name"] for n in nodes if n.get("underlayIP") == ip)
            raise ClusterError(f"{ip} is node {other}'s address already; leave that node first "
                               f"(kube-netlab node leave on it) or join with another --public-ip")
        old = next((n for n in nodes if n["name"] == node), None)
        if old is not None and old.get("underlayIP") != ip:
            if lab_state.heartbeat(node) is not None:
                raise ClusterError(f"node {node} is in the cluster from {old.get('underlayIP')} and its agent is "
                                   f"alive; choose another --name, or leave that node first")
        nodes = [n for n in nodes if n["name"] != node] + [{"name": node, "underlayIP": ip}]
        try:
            lab = lab_of(doc, nodes, manifests)
        except ModelError as e:
            raise ClusterError(f"node {node} ({ip}) does not fit the cluster: {e}") from None
        engine._write_desired(store, lab)
    return lab


def start_agent(paths: state.LabPaths, lab, node: str, store_url: str, *, lease_ttl: float | None = None) -> int:
    """The node agent in this host's own namespace (--host-mode), outliving this command."""
    os.makedirs(os.path.dirname(paths.agent_pid(node)), exist_ok=True)
    os.makedirs(os.path.dirname(paths.agent_log(node)), exist_ok=True)
    argv = [sys.executable, "-m", "netlab.agent", "--lab", lab.name, "--node", node, "--store", store_url,
            "--host-mode"]
    if lease_ttl is not None:
        argv += ["--lease-ttl", str(lease_ttl)]
    with open(paths.agent_log(node), "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                                start_new_session=True, close_fds=True)
    state.write_file(paths.agent_pid(node), f"{proc.pid}\n")
    return proc.pid


def wait_node_ready(lab_state: state.LabState, paths: state.LabPaths, lab, node: str,
                    timeout: float) -> state.NodeStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = lab_state.node_status(node)
        if st is not None and st.ready and lab_state.heartbeat(node) is not None:
            return st
        if state.agent_alive(paths, node) is None:
            raise ClusterError(f"node {node}: the agent exited ({engine._last_line(paths.agent_log(node))}); "
                               f"see {paths.agent_log(node)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"node {node} not Ready after {timeout:.0f}s"
                               + (f": {st.message}" if st and st.message else "") + f"; see {paths.agent_log(node)}")
        time.sleep(0.1)


# --- leave -----------------------------------------------------------------------------------

def find_record(node: str | None) -> HostRecord:
    """The node joined from this machine (its public IP is one of ours), or the one named."""
    local = _local_ips()
    records = [r for r in records_here() if (r.node == node if node else r.public_ip in local)]
    if not records:
        raise ClusterError(f"no node {node + ' ' if node else ''}joined from this machine "
                           f"(nothing recorded under {state.ROOT}); nothing to leave")
    if len(records) > 1:
        raise ClusterError(f"several nodes joined from here ({', '.join(r.node for r in records)}); name one with --name")
    return records[0]


def leave(node: str | None = None, *, store_url: str | None = None, say=print) -> HostRecord:
    record = find_record(node)
    paths = state.LabPaths(record.lab)
    _stop_agent(paths, record.node)
    _stop_shim(paths, record.node)  # on a machine it runs in the host's namespace: no namespace sweep ends it
    store_url = store_url or record.store
    here = _host_ns()
    removed_pods = 0
    try:
        store = _open(store_url)
    except ClusterError as e:
        raise ClusterError(f"{e}; node leave needs the store to find the node's pods and release its lease "
                           f"(the agent is stopped; the data path is left as it was). Try again when it is back") from None
    lab_state = state.LabState(store)
    lab = lab_state.lab()
    if lab is not None and record.node in lab.node_names:
        pod_netns = [st.netns for st in lab_state.pod_statuses().values() if st.node == record.node and st.netns]
        removed_pods = len(pod_netns)
        with desired_lock(store, f"node leave {record.node}"):
            engine._remove_node(paths, store, lab, record.node, host_mode=True)  # pods, slices, lease, status, files
            lab_state.delete_heartbeat(record.node)
            rest = [n.to_dict() for n in lab.nodes if n.name != record.node]
            if rest:
                engine._write_desired(store, lab_of(lab_state.cluster_doc(), rest,
                                                    [o.to_dict() for o in lab.objects]))
            else:
                _forget_last_node(store, lab_state, lab)
    else:
        lease = find_lease(store, record.public_ip)
        if lease:
            release_lease(store, lease)
        lab_state.delete_heartbeat(record.node)
        lab_state.delete_node_status(record.node)
        for netns in pod_netns:  # the files its pods had on this machine
            shutil.rmtree(paths.pod_dir(netns), ignore_errors=True)
            shutil.rmtree(os.path.join(state.NETNS_ETC, netns), ignore_errors=True)
    store.close()
    _remove_host_objects(record, here)
    record.remove()
    shutil.rmtree(paths.node_dir(record.node), ignore_errors=True)
    for path in (paths.agent_log(record.node), paths.agent_pid(record.node), paths.shim_log(record.node)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    _remove_empty(paths)
    say(f"node {record.node} left: {removed_pods} pods stopped, {', '.join(record.links) or 'no links'} removed")
    return record


def _forget_last_node(store, lab_state: state.LabState, lab) -> None:
    """The last node out: no lab document without nodes; its pods wait for the next join."""
    for key in lab_state.pods():
        lab_state.delete_pod(key)
    store.delete(state.LAB_KEY)


def _stop_agent(paths: state.LabPaths, node: str) -> None:
    pid = state.agent_alive(paths, node)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _stop_shim(paths: state.LabPaths, node: str) -> None:
    pids = state.shim_pids(paths, node)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _remove_host_objects(record: HostRecord, here: str) -> None:
    """What the record names, in this host's namespace; the proxy's KUBE-* rules and
    flannel's masquerade chains (join refused to run where they existed before)."""
    from pyroute2 import IPRoute

    from proxy.nodeproxy import MODES, cleanup_mode
    from proxy.types import ProxyNode

    from ..realize.masquerade import remove_masquerade
    with IPRoute() as ipr:
        for name in record.links:
            idx = ipr.link_lookup(ifname=name)
            if idx:
                ipr.link("del", index=idx[0])
    remove_masquerade(here)
    node = ProxyNode(name=record.node, node_ips=(record.public_ip,), cluster_cidr="0.0.0.0/0")
    for mode in MODES:
        cleanup_mode(mode, node)
    for key, value in record.sysctls.items():
        if value is not None:
            set_sysctl(here, key, value)


def _remove_empty(paths: state.LabPaths) -> None:
    """The lab's directory on this machine, once nothing of it is left here."""
    for d in (*(os.path.join(paths.dir, sub) for sub in ("nodes", "agents", "logs", "pods")), paths.dir, paths.root,
              state.NETNS_ETC, state.CNI_DATA_DIR, os.path.dirname(state.CNI_DATA_DIR)):
        try:
            os.rmdir(d)
        except OSError:
            pass

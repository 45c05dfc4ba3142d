"""The lab engine behind the CLI: writes desired state, builds what lives
outside any node (underlay, node namespaces, the external host), starts one
agent per node, and waits for them to converge — like kubectl with the
kubelets and flanneld doing the work.

`down` finds everything from the lab's name alone (every namespace is
"<lab>-..."; lab names have no '-'), so it works after `up` was killed at any
point and after agents died.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

from cni.daemon import remove_stale_sockets

from . import state
from .model import Lab, ModelError, load_lab, load_manifests, merge_objects, names, remove_objects
from .external import ensure_external_services
from .progress import Progress
from .realize import ensure_default_route, ensure_netns, ensure_node, ensure_underlay, ensure_underlay_port, remove_netns
from .realize.namespace import HOST_NETNS_ENV, host_netns_id, netns_exists, pids_by_netns, process_alive
from .store import StoreError, open_store
from .store.subnets import find_lease, release_lease

AGENT_START_TIMEOUT = 30.0
FAILING_POD_ATTEMPTS = 3  # a pod whose creation failed this often fails `up`/`apply` (its agent keeps retrying)


class LabError(Exception):
    """A user-facing failure: the message says what and how to fix it."""


# --- which lab -----------------------------------------------------------------------------

def resolve_lab(name: str | None, store: str | None = None) -> str:
    """The lab a command is about: the one named, or the only one running. With store (a
    cluster's etcd://... or a state file), the lab whose document that store holds."""
    if store:
        lab = _stored_lab(store)
        if name and name != lab.name:
            raise LabError(f"the store {store} holds lab {lab.name!r}, not {name!r}; drop --lab or use its name")
        return lab.name
    labs = state.list_labs()
    if name:
        if name not in labs and not state.LabPaths(name).exists():
            raise LabError(f"lab {name!r} is not running" + (f" (running: {', '.join(labs)})" if labs else
                                                              "; start it with: kube-netlab up LAB.yaml"))
        return name
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError("no lab is running; start one with: kube-netlab up topologies/two-node.yaml")
    raise LabError(f"several labs are running ({', '.join(labs)}); choose one with --lab NAME")


def open_lab(name: str, store: str | None = None):
    """The lab's local paths, its store and its document. store: where the state is when
    it is not the lab's own SQLite file (a cluster's etcd://IP:2379, --store/NETLAB_STORE)."""
    paths = state.LabPaths(name)
    if store:
        return paths, *_open_stored(store)
    opened = open_store(paths.store)
    lab = state.LabState(opened).lab()
    if lab is None:
        raise LabError(f"lab {name!r} has no recorded state; run kube-netlab down {name} and up again")
    return paths, opened, lab


def _open_stored(location: str):
    try:
        opened = open_store(location)
        lab = state.LabState(opened).lab()
    except StoreError as e:
        raise LabError(f"{e}. Check --store (or NETLAB_STORE)") from None
    if lab is None:
        raise LabError(f"no cluster in the store {location}: start one with kube-netlab control up --store {location}")
    return opened, lab


def _stored_lab(location: str) -> Lab:
    return _open_stored(location)[1]


def agent_alive(paths: state.LabPaths, lab_state: state.LabState, node: str) -> bool:
    """Whether the node's agent runs: its pid when it was started from this machine (known at
    once), else its heartbeat in the store (a node on another machine, any backend)."""
    if os.path.exists(paths.agent_pid(node)):
        return state.agent_alive(paths, node) is not None
    return lab_state.heartbeat(node) is not None


# --- up ------------------------------------------------------------------------------------

def up(path: str, *, name: str | None = None, timeout: float = 120.0, progress: Progress | None = None) -> Lab:
    lab = load_lab(path, name=name)   # ModelError before anything is created
    _check_kernel(lab)
    progress = progress or Progress(enabled=False)
    paths = state.LabPaths(lab.name)
    os.makedirs(paths.dir, exist_ok=True)
    store = open_store(paths.store)
    old = state.LabState(store).lab()
    if old is not None:
        _check_compatible(old, lab)
        lab = lab.with_objects(merge_objects(old.objects, lab.objects))
        for gone in sorted(set(old.node_names) - set(lab.node_names)):
            progress.note(f"removing node {gone}")
            _remove_node(paths, store, old, gone)

    steps = 1 + len(lab.nodes) + (1 if lab.external else 0)
    progress.start("underlay and nodes", steps)
    ensure_underlay(lab.underlay_netns, bridge=names.UNDERLAY_BRIDGE, mtu=lab.underlay.mtu)
    progress.advance()
    prefix = lab.underlay.cidr.prefixlen
    if lab.external:
        ensure_netns(lab.external_netns)
        ensure_underlay_port(lab.underlay_netns, lab.external_netns, f"{lab.external.ip}/{prefix}",
                             ifname=names.EXTERNAL_UPLINK, bridge=names.UNDERLAY_BRIDGE,
                             mtu=lab.underlay.mtu, port_name=names.EXTERNAL_PORT)
        progress.advance()
    for node in lab.nodes:
        ns = lab.node_netns(node.name)
        ensure_netns(ns)
        ensure_node(ns)
        ensure_underlay_port(lab.underlay_netns, ns, f"{node.underlay_ip}/{prefix}", ifname=names.NODE_UPLINK,
                             bridge=names.UNDERLAY_BRIDGE, mtu=lab.underlay.mtu,
                             port_name=names.underlay_port(node.name))
        if lab.external:  # the external host is the node's router to "the outside", as on a real network
            ensure_default_route(ns, str(lab.external.ip))
        progress.advance()

    _write_desired(store, lab)
    if old is not None and (old.proxy_mode, old.nftables_layout) != (lab.proxy_mode, lab.nftables_layout):
        # an agent's proxy starts by removing every other mode's rules: restart them (pods are adopted)
        progress.note(f"switching the proxy from {old.proxy_mode} to {lab.proxy_mode}")
        _kill([pid for n in old.node_names if n in lab.node_names and (pid := state.agent_alive(paths, n))])
    ensure_external_services(paths, lab)
    for node in lab.nodes:
        if not state.agent_alive(paths, node.name):
            state.LabState(store).delete_node_status(node.name)  # a dead agent's "ready" no longer holds
            start_agent(paths, lab, node.name)
    wait_ready(store, paths, lab, timeout, progress)
    return lab


def _check_kernel(lab: Lab) -> None:
    """What the lab needs of the host's kernel, said before anything is created."""
    if lab.proxy_mode == "ipvs":
        try:
            subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True)  # as kube-proxy loads it
        except FileNotFoundError:
            pass  # no kmod: only a module already loaded (or built in) counts
        if not os.path.exists("/proc/net/ip_vs"):
            raise LabError(f"{lab.source}: spec.proxyMode: ipvs needs IPVS in the kernel, and this one has none "
                           "(no /proc/net/ip_vs after modprobe ip_vs); use proxyMode: iptables or nftables here. "
                           "tests/kernel/ runs the IPVS mode under Debian's kernel in qemu")


def _check_compatible(old: Lab, new: Lab) -> None:
    for field, a, b in (("podCIDR", old.pod_cidr, new.pod_cidr), ("serviceCIDR", old.service_cidr, new.service_cidr),
                        ("underlay.cidr", old.underlay.cidr, new.underlay.cidr), ("vxlan", old.vxlan, new.vxlan)):
        if a != b:
            raise LabError(f"lab {new.name!r} is running with {field} {a}; the file says {b}. "
                           f"Run kube-netlab down {new.name} first to rebuild it with the new value")
    for n in new.nodes:
        if n.name in old.node_names and old.node(n.name).underlay_ip != n.underlay_ip:
            raise LabError(f"node {n.name} is running with underlay IP {old.node(n.name).underlay_ip}, the file says "
                           f"{n.underlay_ip}; remove the node first (or run kube-netlab down {new.name})")


def _write_desired(store, lab: Lab) -> None:
    """The lab document, every Service (addresses allocated) and one key per pod,
    scheduled; what is no longer wanted is deleted. Everything is computed (and any
    ModelError raised) before the first write, so bad input changes nothing.
    Unchanged records are not rewritten (a write wakes every agent watching its prefix)."""
    lab_state = state.LabState(store)
    stored_services = lab_state.services()
    services = {f"{s.namespace}/{s.name}": s for s in lab.allocated_services(stored_services)}
    existing = lab_state.pods()
    current = {key: pod.node_name for key, pod in existing.items() if pod.node_name in lab.node_names}
    wanted = {pod.key: pod for pod in lab.scheduled_pods(current, system=True)}
    lab_state.put_lab(lab)
    for key in stored_services.keys() - services.keys():
        lab_state.delete_service(key)
    for svc in services.values():
        lab_state.put_service(svc)
    for key in existing.keys() - wanted.keys():
        lab_state.delete_pod(key)
    for pod in wanted.values():
        lab_state.put_pod(pod)


def start_agent(paths: state.LabPaths, lab: Lab, node: str) -> int:
    os.makedirs(os.path.dirname(paths.agent_pid(node)), exist_ok=True)
    os.makedirs(os.path.dirname(paths.agent_log(node)), exist_ok=True)
    # nsenter --net, not `ip netns exec`: the latter also gives a private mount namespace, and the
    # pod namespaces the agent mounts under /run/netns would then be invisible to everyone else
    argv = ["nsenter", f"--net=/run/netns/{lab.node_netns(node)}", "--", sys.executable, "-m", "netlab.agent",
            "--lab", lab.name, "--node", node]
    env = dict(os.environ, **{HOST_NETNS_ENV: host_netns_id()})  # so the agent knows what never to touch
    with open(paths.agent_log(node), "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", env=env,
                                start_new_session=True, close_fds=True)  # outlives the CLI
    state.write_file(paths.agent_pid(node), f"{proc.pid}\n")
    return proc.pid


def wait_ready(store, paths: state.LabPaths, lab: Lab, timeout: float, progress: Progress) -> None:
    """Until every node reports ready and every pod runs (or has completed)."""
    lab_state = state.LabState(store)
    want_pods = set(lab_state.pods())
    total = len(lab.nodes) + len(want_pods)
    progress.start("nodes and pods", total)
    deadline = time.monotonic() + timeout
    while True:
        nodes, pods = lab_state.node_statuses(), lab_state.pod_statuses()
        subnets = {n: nodes[n].pod_cidr if n in nodes else None for n in lab.node_names}
        # ready: the agent says so, and flannel.1 has a peer for every other node (and no more)
        ready_nodes = [n for n in lab.node_names if n in nodes and nodes[n].ready
                       and sorted(nodes[n].peers) == sorted(s for m, s in subnets.items() if m != n and s)]
        done = [k for k in want_pods if k in pods and pods[k].phase in ("Running", "Succeeded")]
        # failed for good, or failing to be created again and again (the agent keeps retrying)
        failed = {k: pods[k] for k in want_pods if k in pods and
                  (pods[k].phase == "Failed" or pods[k].attempts >= FAILING_POD_ATTEMPTS)}
        progress.update(len(ready_nodes) + len(done),
                        f"nodes {len(ready_nodes)}/{len(lab.nodes)} ready, pods {len(done)}/{len(want_pods)} running")
        if len(ready_nodes) == len(lab.nodes) and len(done) == len(want_pods):
            progress.finish()
            return
        dead = [n for n in lab.node_names if n not in ready_nodes and not agent_alive(paths, lab_state, n)]
        if dead or failed or time.monotonic() > deadline:
            progress.finish()
            problems = [f"node {n}: agent exited ({_last_line(paths.agent_log(n))}); see {paths.agent_log(n)}"
                        for n in dead]
            problems += [f"pod {k}: {st.message or 'a container exited'}"
                         + (f" ({st.attempts} attempts)" if st.attempts else "") for k, st in failed.items()]
            if not problems:
                problems = [f"node {n}: {nodes[n].message}" for n in lab.node_names
                            if n in nodes and not nodes[n].ready and nodes[n].message]
                problems.append(f"not ready after {timeout:.0f}s: nodes {len(ready_nodes)}/{len(lab.nodes)}, "
                                f"pods {len(done)}/{len(want_pods)}; see {paths.dir}/logs")
            raise LabError("; ".join(problems) + f". Inspect with kube-netlab status --lab {lab.name}, "
                                                 f"or tear down with kube-netlab down {lab.name}")
        time.sleep(0.1)


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else "no log"
    except OSError:
        return "no log"


def node_statuses(store) -> dict[str, dict]:
    """Node statuses as dicts (NodeStatus.to_dict()) for the CLI until it reads LabState itself."""
    return {n: st.to_dict() for n, st in state.LabState(store).node_statuses().items()}


def pod_statuses(store) -> dict[str, dict]:
    """Pod statuses as dicts (PodStatus.to_dict()) for the CLI until it reads LabState itself."""
    return {k: st.to_dict() for k, st in state.LabState(store).pod_statuses().items()}


# --- apply / delete ------------------------------------------------------------------------

def apply(lab_name: str, path: str, *, timeout: float = 60.0, progress: Progress | None = None,
          store: str | None = None) -> list:
    paths, store, lab = open_lab(lab_name, store)
    objects = load_manifests(path)
    new = lab.with_objects(merge_objects(lab.objects, objects))
    _write_desired(store, new)
    wait_ready(store, paths, new, timeout, progress or Progress(enabled=False))
    return objects


def delete(lab_name: str, path: str, *, timeout: float = 60.0, store: str | None = None) -> list:
    paths, store, lab = open_lab(lab_name, store)
    objects = load_manifests(path)
    new = lab.with_objects(remove_objects(lab.objects, objects))
    _write_desired(store, new)
    lab_state = state.LabState(store)
    wanted = set(lab_state.pods())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # until the agents have removed them
        # a dead agent removes its pods when it runs again (the next `up`): no point waiting for it
        left = [k for k, st in lab_state.pod_statuses().items()
                if k not in wanted and agent_alive(paths, lab_state, st.node)]
        if not left:
            break
        time.sleep(0.1)
    return objects


# --- nodes ---------------------------------------------------------------------------------

def remove_node(lab_name: str, node: str, *, timeout: float = 60.0) -> None:
    """Take a node out: its agent, pods and namespace go; its lease goes, so every other
    node drops the neighbour, FDB entry and route to it; its pods are rescheduled."""
    paths, store, lab = open_lab(lab_name)
    if node not in lab.node_names:
        raise LabError(f"lab {lab_name!r} has no node {node!r} (nodes: {', '.join(lab.node_names)})")
    if len(lab.nodes) == 1:
        raise LabError(f"{node} is the lab's only node; use kube-netlab down {lab_name}")
    _remove_node(paths, store, lab, node)
    new = replace(lab, nodes=tuple(n for n in lab.nodes if n.name != node))
    _write_desired(store, new)
    wait_ready(store, paths, new, timeout, Progress(enabled=False))


def _remove_node(paths: state.LabPaths, store, lab: Lab, node: str, *, host_mode: bool = False) -> None:
    """host_mode: the node is a machine (node join), not a namespace of ours: only its pods'
    namespaces go (a namespace that happens to be called <lab>-<node> is not its)."""
    pid = state.agent_alive(paths, node)
    if pid:
        _kill([pid])
    node_ns = None if host_mode else lab.node_netns(node)
    lab_state = state.LabState(store)
    pod_netns = []
    for key, st in lab_state.pod_statuses().items():
        if st.node == node:
            pod_netns.append(st.netns)
            lab_state.delete_pod_status(key)
    for key, pod in lab_state.pods().items():
        if pod.node_name == node:
            lab_state.delete_pod(key)
    for s in lab_state.endpoint_slices():  # its agent is gone: nobody else would remove its endpoints
        if s.node == node:
            lab_state.delete_endpoint_slice(s)
    _teardown_namespaces([n for n in [*pod_netns, node_ns] if n])
    lease = find_lease(store, lab.node(node).underlay_ip)
    if lease:
        release_lease(store, lease)
    lab_state.delete_node_status(node)
    shutil.rmtree(os.path.join(state.CNI_DATA_DIR, names.cni_network(lab.name, node)), ignore_errors=True)
    shutil.rmtree(paths.node_dir(node), ignore_errors=True)
    try:
        os.unlink(paths.agent_pid(node))
    except FileNotFoundError:
        pass


# --- down ----------------------------------------------------------------------------------

def down(lab_name: str, *, joined_too: bool = False) -> list[str]:
    """Remove everything of the lab; returns the namespaces removed. Idempotent.
    A cluster this machine joined (node join) is refused unless joined_too: down would
    leave the host's cni0, flannel.1 and rules, which only node leave knows to remove."""
    joined = os.path.join(state.LabPaths(lab_name).dir, "nodes")
    if not joined_too and any(os.path.exists(os.path.join(joined, n, "host.json")) for n in _listdir(joined)):
        raise LabError(f"{lab_name} is a cluster this machine joined as a node; use kube-netlab node leave "
                       f"(it removes what the node made on this host, and nothing else)")
    _kill(state.agent_pids(lab_name))
    removed: list[str] = []
    for _ in range(3):  # a killed agent's `ip netns add` child may still finish: look again
        ours = [n for n in list_netns() if names.belongs_to(lab_name, n)]
        if not ours:
            break
        _teardown_namespaces(ours)
        removed += ours
    for d in _listdir(state.NETNS_ETC):
        if names.belongs_to(lab_name, d):
            shutil.rmtree(os.path.join(state.NETNS_ETC, d), ignore_errors=True)
    for d in _listdir(state.CNI_DATA_DIR):
        if names.belongs_to(lab_name, d):
            shutil.rmtree(os.path.join(state.CNI_DATA_DIR, d), ignore_errors=True)
    remove_stale_sockets()  # CNI daemons of agents killed before their namespace went (any lab's)
    state.LabPaths(lab_name).remove()
    for d in (state.NETNS_ETC, state.CNI_DATA_DIR, os.path.dirname(state.CNI_DATA_DIR)):
        try:
            os.rmdir(d)  # only when empty: other tools may keep files there
        except OSError:
            pass
    return removed


def _teardown_namespaces(netns_names: list[str]) -> None:
    from cni.client import socket_path
    by_ns = pids_by_netns(netns_names)
    _kill([p for pids in by_ns.values() for p in pids if p != os.getpid()])
    for ns in netns_names:
        if netns_exists(ns):
            # a killed agent leaves its CNI daemon socket, named after the namespace's inode
            try:
                sock = socket_path(inode=os.stat(f"/run/netns/{ns}").st_ino)
                os.unlink(sock)
                os.rmdir(os.path.dirname(sock))
            except OSError:
                pass
        remove_netns(ns, kill=False)


def _kill(pids: list[int]) -> None:
    """SIGKILL at once: nothing of ours needs to clean up after itself, down does."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.01)


def list_netns() -> list[str]:
    return _listdir("/run/netns")


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


__all__ = ["LabError", "ModelError", "apply", "delete", "down", "remove_node", "resolve_lab", "up"]

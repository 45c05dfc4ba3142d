"""Where a lab keeps its state: files under /run/netlab/<lab>/ and the keys
it uses in the store beside flannel's /coreos.com/network/.

    /run/netlab/<lab>/
      state.db                  the store (SQLite): desired state, leases, status
      agents/<node>.pid         the node agent's pid
      logs/<node>.log           the node agent's log
      nodes/<node>/subnet.env   flannel's subnet file (FLANNEL_NETWORK, FLANNEL_SUBNET, ...)
      nodes/<node>/vtep-mac     the node's VTEP MAC, stable across agent restarts
      pods/<ns>.<pod>/          container logs: <container>.log, <container>.previous.log (the run before a restart)

Everything the lab creates in the kernel is found from the lab's name alone
(model.names): `down` needs none of these files to clean up.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone


ROOT = os.environ.get("NETLAB_STATE_DIR", "/run/netlab")
NETNS_ETC = "/etc/netns"            # `ip netns exec` bind-mounts these files over /etc
CNI_DATA_DIR = "/var/lib/cni/networks"

# store keys (flannel's own live under /coreos.com/network/); who writes each:
LAB_KEY = "/netlab/lab"                      # the CLI: the lab document (model.Lab.to_dict())
PODS = "/netlab/pods/"                       # the CLI: <ns>/<name> -> Pod.to_dict(), scheduled (nodeName)
SERVICES = "/netlab/services/"               # the CLI: <ns>/<name> -> Service.to_dict(), clusterIP/nodePorts allocated
ENDPOINT_SLICES = "/netlab/endpointslices/"  # each agent, its own pods: <ns>/<svc>/<slice> -> EndpointSlice
POD_STATUS = "/netlab/status/pods/"          # the pod's agent: <ns>/<name> -> PodStatus
NODE_STATUS = "/netlab/status/nodes/"        # the node's agent: <node> -> NodeStatus
EVENTS = "/netlab/events/"                   # every agent: <ns>/<name> -> a v1 Event, expiring after EVENT_TTL
EVENT_TTL = 3600.0                           # kube-apiserver's --event-ttl (1 h)
CLUSTER_KEY = "/netlab/cluster"              # control up: the cluster's lab document without nodes (they join)
LOCKS = "/netlab/locks/"                     # short TTL'd keys taken with create(): one writer of desired state
HEARTBEATS = "/netlab/heartbeats/"           # each agent, its node: <node> -> NodeHeartbeat, TTL'd (the kubelet's Lease)
HEARTBEAT_SECONDS = 10.0                     # the kubelet renews its Lease every 10 s ...
HEARTBEAT_TTL = 40.0                         # ... and it lasts 40 s (node-monitor-grace-period)
EXERCISE_KEY = "/netlab/exercise"            # exercise start: the course exercise running on the lab (ExerciseRecord)
PAUSED_REPAIRS_KEY = "/netlab/paused-repairs"  # exercise start/reset: repairs the agents skip ({"tokens": [...]})

# What an exercise may pause: a token is "<repair>/<target>", the target a node name, or
# "<ns>/<pod>" for pods.restart; "*" as the target pauses that repair everywhere.
REPAIRS = {
    "overlay.device": "flannel.1 re-created or re-addressed when its settings differ (agent/overlay.py)",
    "overlay.fdb": "the peers' FDB entries on flannel.1",
    "overlay.neigh": "the peers' neighbour (VTEP MAC) entries on flannel.1",
    "overlay.route": "the routes to the peers' pod subnets",
    "overlay.masquerade": "flannel's FLANNEL-POSTRTG / FLANNEL-FWD rules",
    "node.sysctl": "the node's sysctls (net.ipv4.ip_forward)",
    "proxy": "kube-proxy's rule syncs (periodic and on changes), conntrack cleanup included",
    "proxy.conntrack": "kube-proxy's flush of stale UDP conntrack entries only",
    "pods.restart": "a pod's container restarts (restartPolicy)",
}
# the overlay's peer pieces are converged together (realize.overlay.sync_peers): pausing one pauses the peer sync
OVERLAY_PEER_REPAIRS = frozenset({"overlay.fdb", "overlay.neigh", "overlay.route"})


def pod_key(namespace: str, name: str) -> str:
    return f"{PODS}{namespace}/{name}"


def service_key(namespace: str, name: str) -> str:
    return f"{SERVICES}{namespace}/{name}"


def endpoint_slice_key(namespace: str, service: str, slice_name: str) -> str:
    return f"{ENDPOINT_SLICES}{namespace}/{service}/{slice_name}"


def pod_status_key(namespace: str, name: str) -> str:
    return f"{POD_STATUS}{namespace}/{name}"


def node_status_key(node: str) -> str:
    return f"{NODE_STATUS}{node}"


def event_key(namespace: str, name: str) -> str:
    return f"{EVENTS}{namespace}/{name}"


def pause_token(repair: str, target: str) -> str:
    """The token that pauses one repair of one target, e.g. ("overlay.fdb", "node-a")."""
    if repair not in REPAIRS:
        raise ValueError(f"paused repair {repair!r} is not one of {', '.join(sorted(REPAIRS))}")
    if not target:
        raise ValueError(f"paused repair {repair!r}: the target (a node, ns/pod, or *) is empty")
    return f"{repair}/{target}"


def split_pause_token(token: str) -> tuple[str, str]:
    """(repair, target) of a token; ValueError naming the token when it is malformed."""
    repair, sep, target = token.partition("/")
    if not sep:
        raise ValueError(f"paused repair {token!r}: write it as REPAIR/TARGET, e.g. overlay.fdb/node-a")
    pause_token(repair, target)
    return repair, target


def repair_paused(tokens, repair: str, target: str) -> bool:
    """Whether tokens pause `repair` of `target` (exactly that target, or "*")."""
    return f"{repair}/{target}" in tokens or f"{repair}/*" in tokens


def paused_for(tokens, target: str) -> frozenset[str]:
    """The repairs tokens pause for one target (a node name, or ns/pod)."""
    return frozenset(r for r in REPAIRS if repair_paused(tokens, r, target))


@dataclass(frozen=True)
class LabPaths:
    lab: str
    root: str = ROOT

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.lab)

    @property
    def store(self) -> str:
        return os.path.join(self.dir, "state.db")

    def agent_pid(self, node: str) -> str:
        return os.path.join(self.dir, "agents", f"{node}.pid")

    def agent_log(self, node: str) -> str:
        return os.path.join(self.dir, "logs", f"{node}.log")

    def node_dir(self, node: str) -> str:
        return os.path.join(self.dir, "nodes", node)

    def subnet_env(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "subnet.env")

    def vtep_mac(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "vtep-mac")

    def shim_socket(self, node: str) -> str:
        """The node's container shim (netlab/shim.py) listens here."""
        return os.path.join(self.node_dir(node), "shim.sock")

    def shim_log(self, node: str) -> str:
        return os.path.join(self.dir, "logs", f"{node}.shim.log")

    def exit_file(self, pod_netns: str, process: str) -> str:
        """Where the shim writes how a pod's process (a container, or "pause") ended."""
        return os.path.join(self.pod_dir(pod_netns), f"{process}.exit")

    def pod_dir(self, pod_netns: str) -> str:
        return os.path.join(self.dir, "pods", pod_netns.split("-", 1)[1])

    def container_log(self, pod_netns: str, container: str, previous: bool = False) -> str:
        """A container's output; previous: its run before the last restart (the kubelet keeps one)."""
        return os.path.join(self.pod_dir(pod_netns), f"{container}{'.previous' if previous else ''}.log")

    def exists(self) -> bool:
        return os.path.exists(self.store)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.rmdir(self.root)  # the last lab out turns off the light
        except OSError:
            pass


def list_labs(root: str = ROOT) -> list[str]:
    try:
        # the directory is made before anything else of a lab, and removed last by down
        return sorted(d for d in os.listdir(root) if d != "cni" and os.path.isdir(os.path.join(root, d)))
    except FileNotFoundError:
        return []


def write_file(path: str, text: str, mode: int = 0o644) -> None:
    """Atomically, as flannel writes subnet.env: a reader never sees half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _pids_running(module: str, flag: str, value: str) -> list[int]:
    """Live `python -m MODULE ... FLAG VALUE` processes, found by their command lines."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = proc_cmdline(int(entry))
            if module in argv and flag in argv and argv[argv.index(flag) + 1:][:1] == [value]:
                out.append(int(entry))
    return out


def agent_pids(lab: str) -> list[int]:
    """Every live agent process of this lab, found by its command line (survives lost pid files)."""
    return _pids_running("netlab.agent", "--lab", lab)


def shim_pids(paths: LabPaths, node: str) -> list[int]:
    """The node's container shim (netlab/shim.py), found by the socket on its command line."""
    return _pids_running("netlab.shim", "--socket", paths.shim_socket(node))


def agent_alive(paths: LabPaths, node: str) -> int | None:
    """The node agent's pid while it runs. Its command line is read while it may be between
    two exec()s (nsenter, then python), when it is briefly empty: only a different one means
    the pid now belongs to someone else."""
    from .realize.namespace import process_alive
    pid = read_pid(paths.agent_pid(node))
    if pid is None or not process_alive(pid):
        return None
    argv = proc_cmdline(pid)
    if argv and not ("--lab" in argv and paths.lab in argv and node in argv):
        return None
    return pid


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# --- typed records: what crosses layers (nobody else parses the store's JSON) -------------

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    pid: int | None = None
    state: str = "waiting"                 # running | waiting | terminated
    exit_code: int | None = None
    restart_count: int = 0
    reason: str | None = None              # e.g. CrashLoopBackOff, Error, Completed
    started_at: float | None = None        # wall clock

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict:
        return {"name": self.name, "pid": self.pid, "state": self.state, "exitCode": self.exit_code,
                "restartCount": self.restart_count, "reason": self.reason, "startedAt": self.started_at}

    @classmethod
    def from_dict(cls, d: dict) -> "ContainerStatus":
        return cls(d["name"], d.get("pid"), d.get("state", "waiting"), d.get("exitCode"),
                   d.get("restartCount", 0), d.get("reason"), d.get("startedAt"))


@dataclass(frozen=True)
class PodStatus:
    """A pod as its node's agent reports it."""

    node: str
    netns: str
    phase: str = "Pending"                 # Pending | Running | Succeeded | Failed
    pod_ip: str | None = None
    hostname: str | None = None
    pause_pid: int | None = None
    containers: tuple[ContainerStatus, ...] = ()
    message: str | None = None
    reason: str | None = None
    start_time: float | None = None        # wall clock, when the agent first created it
    attempts: int = 0                      # failed creation attempts (retried with backoff)

    @property
    def ready(self) -> bool:
        """Serving: running with every container up (no readiness probes here)."""
        return self.phase == "Running" and bool(self.containers) and all(c.running for c in self.containers)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def restarts(self) -> int:
        return sum(c.restart_count for c in self.containers)

    def to_dict(self) -> dict:
        return {"node": self.node, "netns": self.netns, "phase": self.phase, "podIP": self.pod_ip,
                "hostname": self.hostname, "pausePid": self.pause_pid,
                "containers": [c.to_dict() for c in self.containers], "message": self.message,
                "reason": self.reason, "startTime": self.start_time, "attempts": self.attempts}

    @classmethod
    def from_dict(cls, d: dict) -> "PodStatus":
        return cls(d.get("node", ""), d.get("netns", ""), d.get("phase", "Pending"), d.get("podIP"),
                   d.get("hostname"), d.get("pausePid"),
                   tuple(ContainerStatus.from_dict(c) for c in d.get("containers") or ()),
                   d.get("message"), d.get("reason"), d.get("startTime"), d.get("attempts", 0))


@dataclass(frozen=True)
class NodeCondition:
    type: str                              # Ready, NetworkUnavailable, ProxyFailing, PodsFailing...
    status: bool
    reason: str = ""
    message: str = ""
    since: float | None = None             # lastTransitionTime, wall clock

    def to_dict(self) -> dict:
        return {"type": self.type, "status": "True" if self.status else "False", "reason": self.reason,
                "message": self.message, "lastTransitionTime": self.since}

    @classmethod
    def from_dict(cls, d: dict) -> "NodeCondition":
        return cls(d["type"], d.get("status") == "True", d.get("reason", ""), d.get("message", ""),
                   d.get("lastTransitionTime"))


@dataclass(frozen=True)
class NodeStatus:
    """A node as its agent reports it (flannel's lease facts included)."""

    ready: bool = False
    message: str = ""
    agent_pid: int | None = None
    pod_cidr: str | None = None
    vtep_mac: str | None = None
    underlay_ip: str | None = None
    netns: str | None = None
    peers: tuple[str, ...] = ()            # remote pod subnets programmed on flannel.1
    lease_expiration: float | None = None  # wall clock, when the subnet lease runs out unless renewed
    conditions: tuple[NodeCondition, ...] = ()
    proxy_mode: str | None = None          # the mode whose rules the node runs now

    def condition(self, type_: str) -> NodeCondition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def to_dict(self) -> dict:
        return {"ready": self.ready, "message": self.message, "agentPid": self.agent_pid, "podCIDR": self.pod_cidr,
                "vtepMAC": self.vtep_mac, "underlayIP": self.underlay_ip, "netns": self.netns,
                "peers": list(self.peers), "leaseExpiration": self.lease_expiration,
                "conditions": [c.to_dict() for c in self.conditions], "proxyMode": self.proxy_mode}

    @classmethod
    def from_dict(cls, d: dict) -> "NodeStatus":
        return cls(bool(d.get("ready")), d.get("message", ""), d.get("agentPid"), d.get("podCIDR"),
                   d.get("vtepMAC"), d.get("underlayIP"), d.get("netns"), tuple(d.get("peers") or ()),
                   d.get("leaseExpiration"), tuple(NodeCondition.from_dict(c) for c in d.get("conditions") or ()),
                   d.get("proxyMode"))


def _event_time(t: float, micro: bool = False) -> str:
    """metav1.Time (whole seconds) or metav1.MicroTime, as the API server writes them."""
    stamp = datetime.fromtimestamp(t, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _parse_event_time(text: str | None) -> float | None:
    if not text:
        return None
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in text else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()


@dataclass(frozen=True)
class EventRecord:
    """What an agent did to an object, stored as a core v1 Event (what `kubectl get events
    -o json` prints). Repeats of the same event raise count (series) instead of adding one."""

    namespace: str                         # the object's; "default" for nodes, as the kubelet writes them
    name: str                              # <object>.<hex nanoseconds>, the kubelet's event names
    kind: str                              # involvedObject.kind: Pod, Node, Service, EndpointSlice
    object_name: str
    reason: str                            # CamelCase, e.g. Started, BackOff, RulesSynced, PeerAdded
    message: str
    type: str = "Normal"                   # Normal | Warning
    component: str = ""                    # source.component: kubelet, kube-proxy, flanneld...
    host: str = ""                         # source.host: the node
    first: float = 0.0                     # wall clock
    last: float = 0.0
    count: int = 1

    @property
    def namespaced_object(self) -> bool:
        return self.kind not in ("Node",)

    def to_dict(self) -> dict:
        involved = {"kind": self.kind, "name": self.object_name, "apiVersion": "v1"}
        if self.namespaced_object:
            involved["namespace"] = self.namespace
        d = {"apiVersion": "v1", "kind": "Event",
             "metadata": {"name": self.name, "namespace": self.namespace,
                          "creationTimestamp": _event_time(self.first)},
             "involvedObject": involved, "reason": self.reason, "message": self.message, "type": self.type,
             "source": {"component": self.component, "host": self.host},
             "firstTimestamp": _event_time(self.first), "lastTimestamp": _event_time(self.last),
             "count": self.count, "eventTime": _event_time(self.first, micro=True),
             "reportingComponent": self.component, "reportingInstance": self.host}
        if self.count > 1:   # sub-second precision of the last one, to line up with packet captures
            d["series"] = {"count": self.count, "lastObservedTime": _event_time(self.last, micro=True)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EventRecord":
        meta, involved, source = d.get("metadata", {}), d.get("involvedObject", {}), d.get("source", {})
        first = _parse_event_time(d.get("eventTime")) or _parse_event_time(d.get("firstTimestamp")) or 0.0
        last = (_parse_event_time((d.get("series") or {}).get("lastObservedTime"))
                or _parse_event_time(d.get("lastTimestamp")) or first)
        return cls(meta.get("namespace", ""), meta.get("name", ""), involved.get("kind", ""),
                   involved.get("name", ""), d.get("reason", ""), d.get("message", ""), d.get("type", "Normal"),
                   source.get("component", ""), source.get("host", ""), first, last, int(d.get("count") or 1))


@dataclass(frozen=True)
class ExerciseRecord:
    """The course exercise running on a lab: what `exercise start` chose and what the
    student has seen so far (check and hint read it back; reset deletes it)."""

    name: str
    seed: int
    params: dict                           # what choose() picked: which node, pod, peer...
    pauses: tuple[str, ...] = ()           # the repair tokens paused while it runs
    hints_shown: int = 0
    started_at: float = 0.0                # wall clock
    baseline: dict | None = None           # the healthy lab's counts before the fault (collateral checks)

    def to_dict(self) -> dict:
        return {"name": self.name, "seed": self.seed, "params": self.params, "pauses": list(self.pauses),
                "hintsShown": self.hints_shown, "startedAt": self.started_at, "baseline": self.baseline}

    @classmethod
    def from_dict(cls, d: dict) -> "ExerciseRecord":
        return cls(d["name"], int(d.get("seed", 0)), dict(d.get("params") or {}), tuple(d.get("pauses") or ()),
                   int(d.get("hintsShown", 0)), float(d.get("startedAt", 0.0)), d.get("baseline"))


def _parse_slice(d, _key):
    from .model.endpoints import EndpointSlice
    return EndpointSlice.from_dict(d)


def _parse_object(d, key):
    from .model import object_from_dict
    return object_from_dict(d, key)


# the typed record behind each key prefix (longest prefixes first: POD_STATUS is not under PODS, but be safe)
_PARSERS = ((POD_STATUS, lambda d, _k: PodStatus.from_dict(d)), (NODE_STATUS, lambda d, _k: NodeStatus.from_dict(d)),
            (ENDPOINT_SLICES, _parse_slice), (PODS, _parse_object), (SERVICES, _parse_object),
            (PAUSED_REPAIRS_KEY, lambda d, _k: frozenset(d.get("tokens") or ())))


def event_records(event) -> tuple[object | None, object | None]:
    """The typed records a store event on one of the lab's keys carries: (new, previous).
    None where there is none (a DELETE has no new record, a create no previous one) and for
    keys outside the lab's layout. Watchers filter on these (e.g. "a pod of this node")."""
    parse = next((fn for prefix, fn in _PARSERS if event.key.startswith(prefix)), None)
    if parse is None:
        return None, None
    new = parse(json.loads(event.kv.value), event.key) if event.kv.value else None
    old = parse(json.loads(event.prev_kv.value), event.key) if event.prev_kv is not None else None
    return new, old


# --- readers and writers: the CLI, the engine and the agents go through these ---------------

def _tail(key: str, prefix: str) -> str:
    return key[len(prefix):]


class LabState:
    """The lab's records in a store. Parsed objects are cached by mod_revision,
    so a reader that lists often pays only for what changed."""

    def __init__(self, store):
        self.store = store
        self._cache: dict[str, tuple[int, object]] = {}

    def _parse(self, kv, parse):
        hit = self._cache.get(kv.key)
        if hit and hit[0] == kv.mod_revision:
            return hit[1]
        obj = parse(json.loads(kv.value), kv.key)
        self._cache[kv.key] = (kv.mod_revision, obj)
        return obj

    def _put(self, key: str, obj: dict) -> bool:
        """Write when different; True when written (no-op writes would wake every watcher)."""
        text = dumps(obj)
        kv = self.store.get(key)
        if kv is not None and kv.value == text:
            return False
        self.store.put(key, text)
        return True

    # the lab document
    def lab(self):
        from .model import Lab
        doc = self.store.get_json(LAB_KEY)
        return None if doc is None else Lab.from_dict(doc, source=LAB_KEY)

    def put_lab(self, lab) -> bool:
        return self._put(LAB_KEY, lab.to_dict())

    # desired pods
    def pods(self) -> dict[str, "object"]:
        """Desired pods by "ns/name" (model.Pod, scheduled)."""
        from .model import object_from_dict
        return {_tail(kv.key, PODS): self._parse(kv, object_from_dict) for kv in self.store.list(PODS)}

    def put_pod(self, pod) -> bool:
        return self._put(pod_key(pod.namespace, pod.name), pod.to_dict())

    def delete_pod(self, key: str) -> None:
        self.store.delete(PODS + key)

    # services
    def services(self) -> dict[str, "object"]:
        """Services by "ns/name" (model.Service, addresses allocated)."""
        from .model import object_from_dict
        return {_tail(kv.key, SERVICES): self._parse(kv, object_from_dict) for kv in self.store.list(SERVICES)}

    def put_service(self, svc) -> bool:
        return self._put(service_key(svc.namespace, svc.name), svc.to_dict())

    def delete_service(self, key: str) -> None:
        self.store.delete(SERVICES + key)
        self.store.delete_prefix(f"{ENDPOINT_SLICES}{key}/")

    # endpoint slices
    def endpoint_slices(self, service_key_: str | None = None) -> list:
        """Every slice (model.endpoints.EndpointSlice), or those of one Service ("ns/name")."""
        from .model.endpoints import EndpointSlice
        prefix = ENDPOINT_SLICES + (f"{service_key_}/" if service_key_ else "")
        return [self._parse(kv, lambda d, _k: EndpointSlice.from_dict(d)) for kv in self.store.list(prefix)]

    def put_endpoint_slice(self, s) -> bool:
        return self._put(endpoint_slice_key(s.namespace, s.service, s.name), s.to_dict())

    def delete_endpoint_slice(self, s) -> None:
        self.store.delete(endpoint_slice_key(s.namespace, s.service, s.name))

    # pod status
    def pod_statuses(self) -> dict[str, PodStatus]:
        return {_tail(kv.key, POD_STATUS): self._parse(kv, lambda d, _k: PodStatus.from_dict(d))
                for kv in self.store.list(POD_STATUS)}

    def pod_status(self, key: str) -> PodStatus | None:
        kv = self.store.get(POD_STATUS + key)
        return None if kv is None else self._parse(kv, lambda d, _k: PodStatus.from_dict(d))

    def put_pod_status(self, key: str, st: PodStatus) -> bool:
        return self._put(POD_STATUS + key, st.to_dict())

    def delete_pod_status(self, key: str) -> None:
        self.store.delete(POD_STATUS + key)

    # node status
    def node_statuses(self) -> dict[str, NodeStatus]:
        return {_tail(kv.key, NODE_STATUS): self._parse(kv, lambda d, _k: NodeStatus.from_dict(d))
                for kv in self.store.list(NODE_STATUS)}

    def node_status(self, node: str) -> NodeStatus | None:
        kv = self.store.get(node_status_key(node))
        return None if kv is None else self._parse(kv, lambda d, _k: NodeStatus.from_dict(d))

    def put_node_status(self, node: str, st: NodeStatus) -> bool:
        return self._put(node_status_key(node), st.to_dict())

    def delete_node_status(self, node: str) -> None:
        self.store.delete(node_status_key(node))

    # events (what the agents did; expire after EVENT_TTL like the API server's)
    def put_event(self, ev: EventRecord) -> None:
        self.store.put(event_key(ev.namespace, ev.name), dumps(ev.to_dict()), ttl=EVENT_TTL)

    def events_with_revision(self, namespace: str | None = None) -> tuple[list[EventRecord], int]:
        """Events (of one namespace, or all) oldest first, and the revision to watch from."""
        kvs, revision = self.store.list_with_revision(EVENTS + (f"{namespace}/" if namespace else ""))
        evs = [self._parse(kv, lambda d, _k: EventRecord.from_dict(d)) for kv in kvs]
        return sorted(evs, key=lambda e: (e.last, e.first, e.name)), revision

    def events(self, namespace: str | None = None) -> list[EventRecord]:
        return self.events_with_revision(namespace)[0]

    def watch_events(self, namespace: str | None = None, after_revision: int | None = None, *,
                     stop=None, timeout: float | None = None):
        """New and updated events as they are written (a store watch); expiries are not reported."""
        prefix = EVENTS + (f"{namespace}/" if namespace else "")
        start = None if after_revision is None else after_revision + 1
        for e in self.store.watch(prefix, start, stop=stop, timeout=timeout):
            if e.kv.value:
                yield EventRecord.from_dict(json.loads(e.kv.value))

    # course exercises: the one running, and the repairs the agents skip meanwhile
    def exercise(self) -> ExerciseRecord | None:
        doc = self.store.get_json(EXERCISE_KEY)
        return None if doc is None else ExerciseRecord.from_dict(doc)

    def put_exercise(self, rec: ExerciseRecord) -> bool:
        return self._put(EXERCISE_KEY, rec.to_dict())

    def delete_exercise(self) -> None:
        self.store.delete(EXERCISE_KEY)

    def paused_repairs(self) -> frozenset[str]:
        """Tokens "<repair>/<target>" (REPAIRS); empty when nothing is paused (the usual case: one get)."""
        kv = self.store.get(PAUSED_REPAIRS_KEY)
        return frozenset() if kv is None else self._parse(kv, lambda d, _k: frozenset(d.get("tokens") or ()))

    def put_paused_repairs(self, tokens) -> None:
        """Pause exactly these repairs (each token checked); none: the key goes, everything repairs again."""
        tokens = sorted(set(tokens))
        for t in tokens:
            split_pause_token(t)
        if tokens:
            self._put(PAUSED_REPAIRS_KEY, {"tokens": tokens})
        else:
            self.store.delete(PAUSED_REPAIRS_KEY)

    # a cluster across machines: its settings, written once by control up
    def cluster_doc(self) -> dict | None:
        """The lab document control up wrote, with "nodes": [] (nodes join later)."""
        return self.store.get_json(CLUSTER_KEY)

    def put_cluster_doc(self, doc: dict) -> bool:
        return self._put(CLUSTER_KEY, doc)

    # agent heartbeats: the node's agent is alive while its key exists (it expires with the TTL)
    def heartbeats(self) -> dict[str, "NodeHeartbeat"]:
        return {_tail(kv.key, HEARTBEATS): NodeHeartbeat.from_dict(kv.json()) for kv in self.store.list(HEARTBEATS)}

    def heartbeat(self, node: str) -> "NodeHeartbeat | None":
        kv = self.store.get(HEARTBEATS + node)
        return None if kv is None else NodeHeartbeat.from_dict(kv.json())

    def put_heartbeat(self, hb: "NodeHeartbeat") -> None:
        """Always written: the write renews the key's TTL."""
        self.store.put(HEARTBEATS + hb.node, dumps(hb.to_dict()), ttl=hb.duration)

    def delete_heartbeat(self, node: str) -> None:
        self.store.delete(HEARTBEATS + node)


@dataclass(frozen=True)
class NodeHeartbeat:
    """A node agent's liveness, shaped like the kubelet's coordination.k8s.io Lease
    (holderIdentity, leaseDurationSeconds, renewTime) plus where the agent runs, so a
    CLI on another machine can say where a node's processes are."""

    node: str
    host: str                  # the machine's hostname
    pid: int
    renew_time: float          # wall clock
    duration: float = HEARTBEAT_TTL
    host_mode: bool = False    # the agent acts in its host's own namespace (node join)

    def to_dict(self) -> dict:
        return {"holderIdentity": self.node, "host": self.host, "pid": self.pid, "renewTime": self.renew_time,
                "leaseDurationSeconds": self.duration, "hostMode": self.host_mode}

    @classmethod
    def from_dict(cls, d: dict) -> "NodeHeartbeat":
        return cls(d["holderIdentity"], d.get("host", ""), d.get("pid", 0), d.get("renewTime", 0.0),
                   d.get("leaseDurationSeconds", HEARTBEAT_TTL), d.get("hostMode", False))

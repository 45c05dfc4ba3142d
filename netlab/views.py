"""What `kube-netlab get` prints, as pure functions: typed records (model.Pod,
model.Service, EndpointSlice, state.PodStatus, state.NodeStatus) become
Kubernetes-shaped objects (what `kubectl get -o json` prints), and those
objects become kubectl's table rows. Tables are derived from the objects, as
kubectl derives them from API objects, so the two never disagree.

The formatting rules are kubectl's (k8s.io/kubernetes pkg/printers/internalversion
and apimachinery's HumanDuration); our own facts (netns, VTEP, agent pid...)
live under `status.netlab` so a Kubernetes field never means something else.
No kernel, no store: unit-tested without root.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from .model.endpoints import EndpointSlice
from .model.scheduling import node_labels
from .state import EventRecord, NodeStatus, PodStatus

NONE = "<none>"
MAX_LISTED = 3            # kubectl lists 3 endpoints/ports, then "+ N more..."
FLANNEL = "flannel.alpha.coreos.com/"
ROLE_LABEL = "node-role.kubernetes.io/"


# --- small formatting rules ----------------------------------------------------------------

def rfc3339(t: float | None) -> str | None:
    """A wall-clock time as Kubernetes writes metav1.Time: RFC 3339, UTC, whole seconds."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration: 90s, 5m3s, 2h10m, 3d4h, 2y30d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{days // 365}y"


def age(obj: dict, now: float) -> str:
    """The AGE column: since metadata.creationTimestamp, "<unknown>" without one (as kubectl)."""
    created = parse_rfc3339(obj.get("metadata", {}).get("creationTimestamp"))
    return "<unknown>" if created is None else human_duration(now - created)


def format_labels(labels: dict | None) -> str:
    """labels.FormatLabels: k=v pairs sorted by key, "<none>" when empty."""
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or NONE


def more_text(listed: list[str], total: int, *, empty: str) -> str:
    """kubectl's "a,b,c + N more..." once more than MAX_LISTED exist."""
    text = ",".join(listed[:MAX_LISTED])
    if total > MAX_LISTED:
        return f"{text} + {total - MAX_LISTED} more..."
    return text or empty


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns as kubectl's tabwriter sets them (minimum width 10, padding 3)."""
    widths = [max(10, max(len(str(r[i])) for r in [header, *rows]) + 3) for i in range(len(header))]
    return "\n".join("".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows])


def as_list(items: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _stamp(obj: dict, created: float | None) -> dict:
    if created is not None and not obj["metadata"].get("creationTimestamp"):
        obj["metadata"]["creationTimestamp"] = rfc3339(created)
    return obj


# --- pods ----------------------------------------------------------------------------------

def _container_state(c) -> dict:
    if c.state == "running":
        return {"running": _drop_none({"startedAt": rfc3339(c.started_at)})}
    if c.state == "terminated":
        # the kubelet's reasons when the runtime gives none
        reason = c.reason or ("Completed" if c.exit_code == 0 else "Error")
        return {"terminated": _drop_none({"exitCode": c.exit_code if c.exit_code is not None else 0,
                                          "reason": reason, "startedAt": rfc3339(c.started_at)})}
    return {"waiting": {"reason": c.reason or "ContainerCreating"}}


def _container_status(name: str, c) -> dict:
    if c is None:
        return {"name": name, "ready": False, "restartCount": 0, "started": False, "lastState": {},
                "state": {"waiting": {"reason": "ContainerCreating"}}}
    return {"name": name, "ready": c.running, "restartCount": c.restart_count, "started": c.running,
            "lastState": {}, "state": _container_state(c)}


def _pod_conditions(scheduled: bool, st: PodStatus | None, containers: list[dict]) -> list[dict]:
    conds = [{"type": "PodScheduled", "status": "True" if scheduled else "False"}]
    if st is not None:   # the agent has the pod: the kubelet's three conditions
        unready = [c["name"] for c in containers if not c["ready"]]
        why: dict = {}
        if st.phase == "Succeeded":
            why = {"reason": "PodCompleted"}
        elif not st.ready:
            why = {"reason": "ContainersNotReady", "message": f"containers with unready status: [{' '.join(unready)}]"}
        conds.append({"type": "Initialized", "status": "True", **({"reason": "PodCompleted"} if st.terminal else {})})
        ready = "True" if st.ready else "False"
        conds += [{"type": kind, "status": ready, **why} for kind in ("ContainersReady", "Ready")]
    return [{**c, "lastProbeTime": None} for c in conds]


def pod_object(pod, st: PodStatus | None, *, lab: str, host_ip: str | None = None) -> dict:
    """A v1 Pod as `kubectl get pod -o json` prints it, from the desired pod (model.Pod)
    and its agent's report. status.netlab holds what only a lab has."""
    obj = pod.to_dict()
    obj["metadata"].setdefault("labels", {})
    _stamp(obj, st.start_time if st else None)
    by_name = {c.name: c for c in (st.containers if st else ())}
    containers = [_container_status(c.name, by_name.get(c.name)) for c in pod.containers]
    status: dict = {"phase": st.phase if st else "Pending",
                    "conditions": _pod_conditions(bool(pod.node_name), st, containers)}
    if st is not None:
        if host_ip:
            status.update(hostIP=host_ip, hostIPs=[{"ip": host_ip}])
        if st.pod_ip:
            status.update(podIP=st.pod_ip, podIPs=[{"ip": st.pod_ip}])
        if st.start_time is not None:
            status["startTime"] = rfc3339(st.start_time)
        status["containerStatuses"] = containers
        for key in ("message", "reason"):
            if getattr(st, key):
                status[key] = getattr(st, key)
    status["qosClass"] = "BestEffort"   # no resource requests here
    status["netlab"] = {"netns": (st.netns if st and st.netns else pod.netns(lab)),
                        "pausePid": st.pause_pid if st else None,
                        "hostname": st.hostname if st else None,
                        "containerPids": {c.name: c.pid for c in (st.containers if st else ())}}
    obj["status"] = status
    return obj


def pod_ready_text(obj: dict) -> str:
    cs = obj["status"].get("containerStatuses") or []
    total = len(obj["spec"].get("containers", []))
    return f"{sum(1 for c in cs if c['ready'])}/{total}"


def pod_status_text(obj: dict) -> str:
    """The STATUS column, by kubectl's printPod: the pod's reason or phase, overridden
    by a container's waiting or terminated reason (CrashLoopBackOff, Completed, Error)."""
    status = obj["status"]
    reason = status.get("reason") or status.get("phase") or "Pending"
    running = False
    for c in reversed(status.get("containerStatuses") or []):
        state = c["state"]
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            t = state["terminated"]
            reason = t.get("reason") or f"ExitCode:{t.get('exitCode', 0)}"
        elif c["ready"] and "running" in state:
            running = True
    if reason == "Completed" and running:
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        reason = "Running" if ready else "NotReady"
    return reason


def pod_restarts(obj: dict) -> int:
    return sum(c["restartCount"] for c in obj["status"].get("containerStatuses") or [])


def pod_row(obj: dict, now: float, wide: bool) -> list[str]:
    row = [obj["metadata"]["name"], pod_ready_text(obj), pod_status_text(obj), str(pod_restarts(obj)),
           age(obj, now)]
    if wide:
        lab = obj["status"]["netlab"]
        row += [obj["status"].get("podIP") or NONE, obj["spec"].get("nodeName") or NONE,
                lab.get("netns") or NONE, lab.get("hostname") or NONE]
    return row


# --- nodes ---------------------------------------------------------------------------------

def _node_conditions(st: NodeStatus | None, agent_alive: bool) -> list[dict]:
    reported = list(st.conditions) if st else []
    out = []
    for c in reported:
        d = {**c.to_dict(), "lastTransitionTime": rfc3339(c.since)}
        out.append({k: v for k, v in d.items() if v not in (None, "")})
    if not any(c["type"] == "Ready" for c in out):
        ready = bool(st and st.ready)
        out.append(_drop_none({"type": "Ready", "status": "True" if ready else "False",
                               "reason": "AgentReady" if ready else "AgentNotReady",
                               "message": (st.message if st and st.message else None)}))
    if not agent_alive:
        # what the node lifecycle controller writes when the kubelet stops posting status
        out = [c for c in out if c["type"] != "Ready"]
        out.append({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                    "message": "the node's agent is not running; kube-netlab up restarts it"})
    return out


def node_object(node, st: NodeStatus | None, *, agent_pid: int | None, netns: str, vxlan,
                created: float | None = None) -> dict:
    """A v1 Node as `kubectl get node -o json` prints it, with flannel's annotations as
    flanneld writes them once it holds a lease; status.netlab holds the lab's facts."""
    underlay_ip = str(node.underlay_ip)
    meta: dict = {"name": node.name, "labels": node_labels(node), "annotations": {}}
    spec: dict = {}
    if st and st.pod_cidr:
        spec = {"podCIDR": st.pod_cidr, "podCIDRs": [st.pod_cidr]}
        meta["annotations"] = {
            FLANNEL + "backend-type": "vxlan",
            FLANNEL + "backend-data": json.dumps({"VNI": vxlan.vni, "VtepMAC": st.vtep_mac}, separators=(",", ":")),
            FLANNEL + "kube-subnet-manager": "true",
            FLANNEL + "public-ip": underlay_ip,
        }
    obj = {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec,
           "status": {"addresses": [{"type": "InternalIP", "address": underlay_ip},
                                    {"type": "Hostname", "address": node.name}],
                      "conditions": _node_conditions(st, agent_pid is not None),
                      "netlab": {"netns": netns, "agentPid": agent_pid, "underlayIP": underlay_ip,
                                 "vxlanDevice": vxlan.device, "vtepMAC": st.vtep_mac if st else None,
                                 "peers": list(st.peers) if st else [],
                                 "leaseExpiration": rfc3339(st.lease_expiration) if st else None,
                                 "proxyMode": st.proxy_mode if st else None}}}
    return _stamp(obj, created)


def node_ready(obj: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj["status"]["conditions"])


def node_roles(labels: dict) -> str:
    """kubectl's ROLES: node-role.kubernetes.io/<role> labels (and kubernetes.io/role)."""
    roles = {k[len(ROLE_LABEL):] for k in labels if k.startswith(ROLE_LABEL) and k != ROLE_LABEL}
    if labels.get("kubernetes.io/role"):
        roles.add(labels["kubernetes.io/role"])
    return ",".join(sorted(roles)) or NONE


def node_row(obj: dict, now: float, wide: bool) -> list[str]:
    lab = obj["status"]["netlab"]
    row = [obj["metadata"]["name"], "Ready" if node_ready(obj) else "NotReady",
           node_roles(obj["metadata"].get("labels", {})), age(obj, now), obj["spec"].get("podCIDR") or NONE]
    if wide:
        internal = next((a["address"] for a in obj["status"]["addresses"] if a["type"] == "InternalIP"), NONE)
        row += [internal, lab.get("vtepMAC") or NONE, lab["netns"],
                str(lab["agentPid"]) if lab.get("agentPid") else "<dead>"]
    return row


# --- services ------------------------------------------------------------------------------

def service_object(svc, created: float | None = None) -> dict:
    """A v1 Service as Kubernetes returns it: the stored spec plus the fields the API
    server fills in (clusterIPs, ipFamilies, status)."""
    obj = svc.to_dict()
    obj["metadata"].setdefault("labels", {})
    spec = obj["spec"]
    if spec.get("clusterIP"):
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
    if spec.get("type") != "ExternalName":
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    obj["status"] = {"loadBalancer": {}}
    return _stamp(obj, created)


def service_ports_text(ports: list[dict]) -> str:
    """PORT(S): 80/TCP, 80:30080/TCP, 53/UDP,53/TCP,9153/TCP (kubectl's makePortString)."""
    return ",".join(f"{p['port']}:{p['nodePort']}/{p.get('protocol', 'TCP')}" if p.get("nodePort")
                    else f"{p['port']}/{p.get('protocol', 'TCP')}" for p in ports) or NONE


def service_external_ip(spec: dict) -> str:
    """EXTERNAL-IP: the externalName of an ExternalName Service, else its externalIPs."""
    if spec.get("type") == "ExternalName":
        return spec.get("externalName") or NONE
    return ",".join(spec.get("externalIPs") or []) or NONE


def service_row(obj: dict, now: float, wide: bool) -> list[str]:
    spec = obj["spec"]
    row = [obj["metadata"]["name"], spec.get("type", "ClusterIP"), (spec.get("clusterIPs") or [NONE])[0],
           service_external_ip(spec), service_ports_text(spec.get("ports") or []), age(obj, now)]
    if wide:
        row.append(format_labels(spec.get("selector")))
    return row


# --- endpoints -----------------------------------------------------------------------------

def _endpoint_address(e, namespace: str) -> dict:
    d = {"ip": e.address, "nodeName": e.node, "targetRef": {"kind": "Pod", "name": e.pod, "namespace": namespace}}
    if e.hostname:
        d["hostname"] = e.hostname
    return d


def endpoints_object(namespace: str, name: str, slices: Iterable[EndpointSlice], *,
                     labels: dict | None = None, created: float | None = None) -> dict:
    """The v1 Endpoints of a Service, built from its EndpointSlices as the endpoints
    controller would: one subset per distinct port set, ready addresses and not-ready
    ones apart, sorted by IP."""
    groups: dict[tuple, tuple[dict, dict]] = {}
    for s in slices:
        ports = tuple(sorted(s.ports))
        ready, not_ready = groups.setdefault(ports, ({}, {}))
        for e in s.endpoints:
            (ready if e.ready else not_ready)[e.address] = _endpoint_address(e, namespace)
    subsets = []
    for ports, (ready, not_ready) in sorted(groups.items()):
        if not ready and not not_ready:
            continue
        subset: dict = {}
        if ready:
            subset["addresses"] = [ready[ip] for ip in sorted(ready)]
        if not_ready:
            subset["notReadyAddresses"] = [not_ready[ip] for ip in sorted(not_ready)]
        subset["ports"] = [{**({"name": p.name} if p.name else {}), "port": p.port, "protocol": p.protocol}
                           for p in ports]
        subsets.append(subset)
    obj = {"apiVersion": "v1", "kind": "Endpoints",
           "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})}}
    if subsets:
        obj["subsets"] = subsets   # Kubernetes omits the field when there are none
    return _stamp(obj, created)


def endpoints_text(obj: dict) -> str:
    """ENDPOINTS, kubectl's formatEndpoints: ready ip:port pairs, three of them then
    "+ N more..."; "<none>" without subsets."""
    subsets = obj.get("subsets") or []
    if not subsets:
        return NONE
    listed: list[str] = []
    total = 0
    for ss in subsets:
        addrs = [a["ip"] for a in ss.get("addresses") or []]
        for port in ss.get("ports") or [None]:   # headless Services may have no ports
            total += len(addrs)
            listed += [ip if port is None else f"{ip}:{port['port']}" for ip in addrs]
    # kubectl prints an empty cell when every address is not ready
    return more_text(listed, total, empty="")


def endpoints_row(obj: dict, now: float, wide: bool) -> list[str]:
    return [obj["metadata"]["name"], endpoints_text(obj), age(obj, now)]


def endpoint_slice_object(s: EndpointSlice, created: float | None = None) -> dict:
    """A discovery.k8s.io/v1 EndpointSlice (the stored record already has that shape)."""
    obj = s.to_dict()
    obj["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Service", "name": s.service,
                                           "controller": True, "blockOwnerDeletion": True}]
    return _stamp(obj, created)


def slice_ports_text(obj: dict) -> str:
    ports = [str(p.get("port") or p.get("name") or "*") for p in obj.get("ports") or []]
    return more_text(ports, len(ports), empty="<unset>")


def slice_endpoints_text(obj: dict) -> str:
    addrs = [a for e in obj.get("endpoints") or [] for a in e.get("addresses", [])]
    return more_text(addrs, len(addrs), empty="<unset>")


def endpoint_slice_row(obj: dict, now: float, wide: bool) -> list[str]:
    return [obj["metadata"]["name"], obj.get("addressType", "IPv4"), slice_ports_text(obj),
            slice_endpoints_text(obj), age(obj, now)]


# --- events --------------------------------------------------------------------------------

def event_object(ev: EventRecord) -> dict:
    """A core v1 Event (the stored record already has that shape)."""
    return ev.to_dict()


def event_source_text(obj: dict) -> str:
    """SOURCE, kubectl's formatEventSource: "component, host"."""
    source = obj.get("source") or {}
    component = source.get("component") or obj.get("reportingComponent") or ""
    host = source.get("host") or obj.get("reportingInstance") or ""
    return f"{component}, {host}" if host else component


def event_row(obj: dict, now: float, wide: bool) -> list[str]:
    """kubectl's printEvent: LAST SEEN TYPE REASON OBJECT MESSAGE; wide adds SUBOBJECT and
    SOURCE before MESSAGE, FIRST SEEN, COUNT and NAME after it."""
    first = parse_rfc3339(obj.get("firstTimestamp"))
    last = parse_rfc3339(obj.get("lastTimestamp")) or first
    since = (lambda t: "<unknown>" if t is None else human_duration(now - t))
    involved = obj.get("involvedObject") or {}
    target = f"{involved.get('kind', '').lower()}/{involved['name']}" if involved.get("name") \
        else involved.get("kind", "").lower()
    message = (obj.get("message") or "").strip()
    if not wide:
        return [since(last), obj.get("type", ""), obj.get("reason", ""), target, message]
    return [since(last), obj.get("type", ""), obj.get("reason", ""), target, involved.get("fieldPath") or "",
            event_source_text(obj), message, since(first), str(obj.get("count") or 1), obj["metadata"]["name"]]


# --- resources: names, aliases, columns ----------------------------------------------------

@dataclass(frozen=True)
class Resource:
    name: str                       # plural, as kubectl's `api-resources` lists it
    kind: str
    aliases: tuple[str, ...]
    namespaced: bool
    header: tuple[str, ...]
    wide_header: tuple[str, ...]
    row: Callable[[dict, float, bool], list[str]]
    name_prefix: str                # `-o name`: kind, lower-case, with group
    wide_columns: tuple[str, ...] = ()   # the whole wide header, when wide inserts columns (events)

    def columns(self, wide: bool, all_namespaces: bool) -> list[str]:
        if wide and self.wide_columns:
            cols = list(self.wide_columns)
        else:
            cols = list(self.header) + (list(self.wide_header) if wide else [])
        return (["NAMESPACE"] + cols) if (all_namespaces and self.namespaced) else cols

    def rows(self, objects: list[dict], now: float, wide: bool, all_namespaces: bool,
             kind_in_name: bool = False) -> list[list[str]]:
        prefix = all_namespaces and self.namespaced
        out = []
        for o in objects:
            row = self.row(o, now, wide)
            if kind_in_name:   # `get svc,ep` names rows service/web, endpoints/web
                row[0] = f"{self.name_prefix}/{row[0]}"
            out.append(([o["metadata"].get("namespace", "")] if prefix else []) + row)
        return out


RESOURCES = (
    Resource("pods", "Pod", ("pod", "po"), True, ("NAME", "READY", "STATUS", "RESTARTS", "AGE"),
             ("IP", "NODE", "NETNS", "HOSTNAME"), pod_row, "pod"),
    Resource("nodes", "Node", ("node", "no"), False, ("NAME", "STATUS", "ROLES", "AGE", "POD-CIDR"),
             ("INTERNAL-IP", "VTEP-MAC", "NETNS", "AGENT-PID"), node_row, "node"),
    Resource("services", "Service", ("service", "svc"), True,
             ("NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"), ("SELECTOR",), service_row, "service"),
    Resource("endpoints", "Endpoints", ("ep",), True, ("NAME", "ENDPOINTS", "AGE"), (), endpoints_row, "endpoints"),
    Resource("endpointslices", "EndpointSlice", ("endpointslice", "endpointslices.discovery.k8s.io",
                                                 "endpointslice.discovery.k8s.io"), True,
             ("NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"), (), endpoint_slice_row,
             "endpointslice.discovery.k8s.io"),
    Resource("events", "Event", ("event", "ev"), True, ("LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"), (),
             event_row, "event",
             ("LAST SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE", "MESSAGE", "FIRST SEEN", "COUNT",
              "NAME")),
)


class UnknownResource(ValueError):
    pass


def resource(word: str) -> Resource:
    """The resource a word names: its plural, singular or short name, any case."""
    w = word.lower()
    for r in RESOURCES:
        if w == r.name or w in r.aliases:
            return r
    known = ", ".join(f"{r.name} ({', '.join(a for a in r.aliases if '.' not in a)})" for r in RESOURCES)
    raise UnknownResource(f'the server doesn\'t have a resource type "{word}"; known: {known}')


def render(res: Resource, objects: list[dict], output: str | None, *, now: float,
           all_namespaces: bool = False, single: bool = False, kind_in_name: bool = False) -> str:
    """What `get` prints: a table, JSON (one object when single, else a List) or names."""
    if output == "json":
        return json.dumps(objects[0] if single and objects else as_list(objects), indent=4)
    if output == "name":
        return "\n".join(f"{res.name_prefix}/{o['metadata']['name']}" for o in objects)
    wide = output == "wide"
    return table(res.columns(wide, all_namespaces), res.rows(objects, now, wide, all_namespaces, kind_in_name))

"""EndpointSlices: which pods back a Service, as the endpointslice controller
computes them (pkg/controller/endpointslice), pure.

Each node's agent owns the slices of its own pods (one per Service, named
"<service>-<node>", plus "-<n>" when a named targetPort resolves to different
numbers on different pods of that node), so endpoints follow a pod's
readiness within a sync of the agent that sees it, and no central controller
is needed. `kubectl get endpointslices` shows them the same way (a Service
may have any number of slices; their union is its endpoints).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from .workloads import Pod, Service

MANAGED_BY = "netlab-agent"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"


@dataclass(frozen=True, order=True)
class EndpointPort:
    name: str           # the Service port's name ("" for a single unnamed port)
    port: int           # resolved targetPort
    protocol: str = "TCP"

    def to_dict(self) -> dict:
        return {"name": self.name, "port": self.port, "protocol": self.protocol}


@dataclass(frozen=True, order=True)
class SliceEndpoint:
    address: str
    node: str
    pod: str            # the pod's name (targetRef)
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    hostname: str | None = None   # set when the pod's subdomain names the Service (per-pod DNS records)

    def to_dict(self, namespace: str) -> dict:
        d: dict[str, Any] = {"addresses": [self.address],
                             "conditions": {"ready": self.ready, "serving": self.serving,
                                            "terminating": self.terminating},
                             "nodeName": self.node,
                             "targetRef": {"kind": "Pod", "name": self.pod, "namespace": namespace}}
        if self.hostname:
            d["hostname"] = self.hostname
        return d


@dataclass(frozen=True)
class EndpointSlice:
    name: str
    namespace: str
    service: str
    node: str                                  # the agent that owns this slice
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[SliceEndpoint, ...] = field(default_factory=tuple)

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.service}"

    def to_dict(self) -> dict:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "labels": {SERVICE_NAME_LABEL: self.service, MANAGED_BY_LABEL: MANAGED_BY,
                                        "kubernetes.io/hostname": self.node}},
                "addressType": "IPv4",
                "endpoints": [e.to_dict(self.namespace) for e in self.endpoints],
                "ports": [p.to_dict() for p in self.ports]}

    @classmethod
    def from_dict(cls, d: dict) -> "EndpointSlice":
        meta = d["metadata"]
        labels = meta.get("labels", {})
        eps = []
        for e in d.get("endpoints") or ():
            c = e.get("conditions", {})
            eps.append(SliceEndpoint(e["addresses"][0], e.get("nodeName", ""), e.get("targetRef", {}).get("name", ""),
                                     bool(c.get("ready", True)), bool(c.get("serving", True)),
                                     bool(c.get("terminating", False)), e.get("hostname")))
        ports = tuple(EndpointPort(p.get("name", ""), int(p["port"]), p.get("protocol", "TCP"))
                      for p in d.get("ports") or ())
        return cls(meta["name"], meta.get("namespace", "default"), labels.get(SERVICE_NAME_LABEL, ""),
                   labels.get("kubernetes.io/hostname", ""), ports, tuple(eps))


class PodState(Protocol):
    """What the slice computation needs of a pod's status (netlab.state.PodStatus)."""

    pod_ip: str | None
    ready: bool
    terminal: bool


def resolve_target_port(svc_port, pod: Pod) -> int | None:
    """A numeric targetPort as is; a named one is the pod's containerPort of that
    name and protocol (None: this pod does not serve the port)."""
    if isinstance(svc_port.target_port, int):
        return svc_port.target_port
    for p in pod.ports():
        if p.name == svc_port.target_port and p.protocol == svc_port.protocol:
            return p.container_port
    return None


def selects(svc: Service, pod: Pod) -> bool:
    """The Service's selector picks this pod (an empty selector picks none: manual endpoints)."""
    return (bool(svc.selector) and pod.namespace == svc.namespace
            and all(pod.labels.get(k) == v for k, v in svc.selector.items()))


def node_slices(svc: Service, pods: Iterable[tuple[Pod, PodState]], node: str) -> list[EndpointSlice]:
    """The slices node's agent publishes for svc: its pods the selector picks that
    have an address and are not finished, grouped by resolved ports."""
    if getattr(svc, "type", "") == "ExternalName":
        return []
    publish_not_ready = getattr(svc, "publish_not_ready_addresses", False)
    groups: dict[tuple[EndpointPort, ...], list[SliceEndpoint]] = {}
    for pod, st in pods:
        if pod.node_name != node or not selects(svc, pod) or not st.pod_ip or st.terminal:
            continue
        ports = []
        for sp in svc.ports:
            number = resolve_target_port(sp, pod)
            if number is not None:
                ports.append(EndpointPort(sp.name or "", number, sp.protocol))
        if svc.ports and not ports:
            continue
        hostname = pod.spec.hostname if pod.spec.hostname and pod.spec.subdomain == svc.name else None
        ready = st.ready or publish_not_ready
        groups.setdefault(tuple(ports), []).append(
            SliceEndpoint(st.pod_ip, node, pod.name, ready=ready, serving=ready, terminating=False,
                          hostname=hostname))
    out = []
    for i, (ports, eps) in enumerate(sorted(groups.items())):
        name = f"{svc.name}-{node}" + (f"-{i}" if i else "")
        out.append(EndpointSlice(name, svc.namespace, svc.name, node, ports, tuple(sorted(eps))))
    return out

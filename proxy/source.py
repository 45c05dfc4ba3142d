"""From the lab's records to what a proxy backend is given: Services (model)
and EndpointSlices become one ServicePort per port and its Endpoints, as
kube-proxy's ServiceChangeTracker and EndpointsChangeTracker do. Pure.
"""
from __future__ import annotations

from typing import Iterable

from .types import Endpoint, ProxyState, ServicePort, ServicePortName


def proxied(svc) -> bool:
    """Headless and ExternalName Services have no virtual IP: DNS alone serves them."""
    return bool(svc.cluster_ip) and svc.cluster_ip != "None" and svc.type != "ExternalName"


def service_ports(svc) -> list[ServicePort]:
    if not proxied(svc):
        return []
    affinity = svc.session_affinity_timeout if svc.session_affinity == "ClientIP" else 0
    return [ServicePort(name=ServicePortName(svc.namespace, svc.name, p.name or ""), protocol=p.protocol,
                        cluster_ip=svc.cluster_ip, port=p.port,
                        node_port=(p.node_port or 0) if svc.type == "NodePort" else 0,
                        external_ips=tuple(svc.external_ips), affinity_timeout=affinity,
                        external_policy_local=svc.external_traffic_policy == "Local",
                        internal_policy_local=svc.internal_traffic_policy == "Local")
            for p in svc.ports]


def slice_endpoints(port: ServicePort, slices: Iterable) -> tuple[Endpoint, ...]:
    """The endpoints of one service port: every slice endpoint, on the slice port
    of the same name and protocol (a slice without it does not serve the port)."""
    out = set()
    for s in slices:
        sp = next((p for p in s.ports if p.name == port.name.port and p.protocol == port.protocol), None)
        if sp is None:
            continue
        for e in s.endpoints:
            out.add(Endpoint(e.address, sp.port, e.node, e.ready, e.serving, e.terminating))
    return tuple(sorted(out, key=lambda e: (e.ip, e.port)))


def build_state(services: Iterable, slices: Iterable) -> ProxyState:
    """services: model.Service with addresses allocated; slices: model.endpoints.EndpointSlice."""
    by_service: dict[str, list] = {}
    for s in slices:
        by_service.setdefault(s.service_key, []).append(s)
    ports: dict[ServicePortName, ServicePort] = {}
    endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}
    for svc in services:
        for sp in service_ports(svc):
            ports[sp.name] = sp
            endpoints[sp.name] = slice_endpoints(sp, by_service.get(f"{svc.namespace}/{svc.name}", ()))
    return ProxyState(ports, endpoints)


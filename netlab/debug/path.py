"""Where packets of a lab can be seen: the places a capture or a trace names
(a pod, node/NAME, underlay, external), the namespaces they live in, and a
trace's destination resolved as the source would (a pod, a Service by any of
its DNS forms through the pod's search path, IP[:port], node/NAME:PORT).
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass

from netlab import engine, state
from netlab.engine import LabError
from netlab.model import dns as dns_names
from netlab.model import names

DEFAULT_NAMESPACE = "default"
PROTOCOLS = ("tcp", "udp", "icmp")


@dataclass(frozen=True)
class Place:
    """A host of the lab a packet can leave from or be seen in."""

    kind: str            # pod | node | external | underlay
    name: str            # what the user reads: default/echo-..., node/node-a, external, underlay
    netns: str
    ip: str | None = None
    node: str | None = None
    namespace: str | None = None   # a pod's Kubernetes namespace


@dataclass(frozen=True)
class Destination:
    """What a trace sends to, and what the user called it."""

    text: str            # as given: svc/echo, echo.default, 10.96.0.2:80, node/node-a:30080
    ip: str
    port: int | None
    proto: str           # tcp | udp | icmp
    kind: str            # pod | service | nodeport | ip
    name: str | None = None        # the pod or Service (ns/name), the node for a NodePort

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}" if self.port is not None else self.ip


def split_pod_ref(ref: str, namespace: str | None) -> tuple[str, str]:
    """`NS/POD`, or POD with -n NS (default namespace: default), as every pod-taking command."""
    if "/" in ref:
        ns, _, pod = ref.partition("/")
        if namespace and namespace != ns:
            raise LabError(f"{ref!r} names namespace {ns} but -n says {namespace}; give one of them")
        return ns, pod
    return namespace or DEFAULT_NAMESPACE, ref


class LabPlaces:
    """One lab's hosts and Services, read once through LabState."""

    def __init__(self, lab_name: str):
        self.paths, store, self.lab = engine.open_lab(lab_name)
        self.state = state.LabState(store)
        self.pods = self.state.pods()
        self.statuses = self.state.pod_statuses()
        self._services = None

    @property
    def services(self) -> dict:
        if self._services is None:
            self._services = self.state.services()
        return self._services

    # --- places ---------------------------------------------------------------------------
    def node(self, name: str) -> Place:
        if name not in self.lab.node_names:
            raise LabError(f"no node {name!r} in lab {self.lab.name} (nodes: {', '.join(self.lab.node_names)})")
        return Place("node", f"node/{name}", self.lab.node_netns(name), str(self.lab.node(name).underlay_ip), name)

    def underlay(self) -> Place:
        return Place("underlay", names.UNDERLAY, self.lab.underlay_netns)

    def external(self) -> Place:
        if not self.lab.external:
            raise LabError(f"lab {self.lab.name} has no external host (spec.external is false)")
        return Place("external", names.EXTERNAL, self.lab.external_netns, str(self.lab.external.ip))

    def pod(self, ref: str, namespace: str | None = None) -> Place:
        ns, name = split_pod_ref(ref, namespace)
        key = f"{ns}/{name}"
        status = self.statuses.get(key)
        if key not in self.pods or status is None:
            near = [k for k in self.pods if k.endswith("/" + name)]
            hint = f" (did you mean {', '.join(near)}?)" if near else "; list pods with: kube-netlab get pods -A"
            raise LabError(f"pod {ns}/{name} not found{hint}")
        if status.phase != "Running" or not status.pod_ip:
            raise LabError(f"pod {ns}/{name} is {status.phase}, not running; see kube-netlab get pods -n {ns}")
        return Place("pod", f"{ns}/{name}", status.netns, status.pod_ip, status.node, ns)

    def place(self, text: str, namespace: str | None = None) -> Place:
        """A capture target or a trace source: POD, NS/POD, node/NAME, underlay, external."""
        if text.startswith(("node/", "nodes/", "no/")):
            return self.node(text.split("/", 1)[1])
        if text == names.UNDERLAY:
            return self.underlay()
        if text == names.EXTERNAL:
            return self.external()
        return self.pod(text, namespace)

    def running_pods(self) -> list[Place]:
        out = []
        for key, st in sorted(self.statuses.items()):
            if st.phase == "Running" and st.pod_ip and key in self.pods:
                ns = key.split("/", 1)[0]
                out.append(Place("pod", key, st.netns, st.pod_ip, st.node, ns))
        return out

    def every_place(self) -> list[Place]:
        """Every host a packet of the lab can cross, in path order: pods, nodes, the switch, external."""
        out = self.running_pods() + [self.node(n) for n in self.lab.node_names] + [self.underlay()]
        if self.lab.external:
            out.append(self.external())
        return out

    def place_of_ip(self, ip: str) -> Place | None:
        for p in self.every_place():
            if p.ip == ip:
                return p
        return None

    # --- destinations ---------------------------------------------------------------------
    def destination(self, text: str, *, source: Place, namespace: str | None = None,
                    port: int | None = None, proto: str = "tcp") -> Destination:
        if proto not in PROTOCOLS:
            raise LabError(f"--proto {proto!r}: use one of {', '.join(PROTOCOLS)}")
        if proto == "icmp":
            port = None
        if text.startswith(("node/", "nodes/", "no/")):
            name, _, nport = text.split("/", 1)[1].partition(":")
            node = self.node(name)
            if proto != "icmp" and not (nport or port):
                raise LabError(f"{text}: say which NodePort, e.g. node/{name}:30080 (kube-netlab get svc)")
            return Destination(text, node.ip, int(nport or port) if proto != "icmp" else None, proto,
                               "nodeport", node.name)
        if text.startswith(("svc/", "service/", "services/")):
            ns = namespace or source.namespace or DEFAULT_NAMESPACE
            return self._service(text, self.services.get(f"{ns}/{text.split('/', 1)[1]}"),
                                 port, proto, f"no Service {text.split('/', 1)[1]!r} in namespace {ns}")
        literal = _ip_port(text)
        if literal:
            ip, lport = literal
            return Destination(text, ip, (lport or port or 80) if proto != "icmp" else None, proto, "ip")
        svc = self._service_by_dns(text, namespace or source.namespace or DEFAULT_NAMESPACE)
        if svc is not None:
            return self._service(text, svc, port, proto, "")
        pod = self.pod(text, namespace or (source.namespace if "/" not in text else None))
        return Destination(text, pod.ip, self._pod_port(pod, port, proto), proto, "pod", pod.name)

    def service_of(self, dest: Destination) -> str | None:
        """The Service ("ns/name") a destination reaches: by name, or the owner of a NodePort."""
        if dest.kind == "service":
            return dest.name
        if dest.kind in ("nodeport", "ip") and dest.port:
            for key, svc in self.services.items():
                if any(p.node_port == dest.port and p.protocol.lower() == dest.proto for p in svc.ports):
                    return key
        return None

    def _pod_port(self, pod: Place, port: int | None, proto: str) -> int | None:
        if proto == "icmp":
            return None
        if port:
            return port
        spec = self.pods[pod.name]
        for c in spec.containers:
            for p in c.ports:
                if p.protocol.lower() == proto:
                    return p.container_port
        raise LabError(f"pod {pod.name} declares no {proto.upper()} containerPort; say which with --port")

    def _service_by_dns(self, name: str, namespace: str):
        """The Service a name resolves to through the pod's resolv.conf (search path, ndots:5),
        or None when the name is no Service of the cluster domain."""
        name = name.rstrip(".")
        domain = self.lab.cluster_domain
        candidates = [f"{name}.{s}" for s in dns_names.cluster_searches(namespace, domain)] + [name]
        for fqdn in candidates:
            suffix = f".svc.{domain}"
            if fqdn.endswith(suffix):
                parts = fqdn[: -len(suffix)].split(".")
                if len(parts) == 2:
                    svc = self.services.get(f"{parts[1]}/{parts[0]}")
                    if svc is not None:
                        return svc
        return None

    def _service(self, text: str, svc, port: int | None, proto: str, missing: str) -> Destination:
        if svc is None:
            raise LabError(f"{missing}; list them with: kube-netlab get svc -A")
        if not svc.cluster_ip or svc.cluster_ip == "None":
            raise LabError(f"Service {svc.namespace}/{svc.name} has no cluster IP (headless or ExternalName): "
                           "trace one of its pods instead")
        if proto == "icmp":
            return Destination(text, svc.cluster_ip, None, proto, "service", f"{svc.namespace}/{svc.name}")
        ports = [p for p in svc.ports if p.protocol.lower() == proto and (port is None or p.port == port)]
        if not ports:
            have = ", ".join(f"{p.port}/{p.protocol}" for p in svc.ports)
            raise LabError(f"Service {svc.namespace}/{svc.name} has no port {port or ''}/{proto.upper()} "
                           f"(it has {have}); use --port and --proto")
        return Destination(text, svc.cluster_ip, ports[0].port, proto, "service", f"{svc.namespace}/{svc.name}")


def _ip_port(text: str) -> tuple[str, int | None] | None:
    host, _, port = text.partition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return None
    if port and not port.isdigit():
        raise LabError(f"{text!r}: the port after ':' must be a number, e.g. 10.96.0.2:80")
    return host, int(port) if port else None


def route_get(netns: str, dst: str, *extra: str) -> dict | None:
    """`ip -j route get DST [...]` in netns: the kernel's own choice (dev, gateway, prefsrc), None: no route."""
    res = subprocess.run(["ip", "-n", netns, "-j", "route", "get", dst, *extra], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    routes = json.loads(res.stdout or "[]")
    return routes[0] if routes else None

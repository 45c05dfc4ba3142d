"""Kubernetes objects as written for a real cluster: Namespace, Pod,
Deployment, StatefulSet, DaemonSet, Service (and List). Parsed into frozen dataclasses; fields with
no meaning here (image, resources, probes, volumes, ...) are accepted and
ignored, and `to_dict()` gives back a Kubernetes-shaped, JSON-able dict that
parses to an equal object.

Deployments expand into Pods named like Kubernetes names them
(`<deployment>-<pod-template-hash>-<suffix>`), deterministically, so applying
the same file twice names the same pods and scaling adds or removes only the
highest-numbered replicas. StatefulSets name theirs by ordinal (`web-0`,
`web-1`, ...) with stable hostnames; DaemonSets make one pod per matching
node (expansion needs the lab's nodes).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Union

from . import names
from ._reader import Problems, Reader
from .errors import Problem, show
from .validate import (dns_label, dns_subdomain, env_name, ipv4_address, label_key, label_value,
                       port_name, service_name)

BUILTIN_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTOCOLS = ("TCP", "UDP")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
SERVICE_TYPES = ("ClusterIP", "NodePort", "ExternalName")
CONTROLLER_KINDS = ("Deployment", "StatefulSet", "DaemonSet")   # kinds that own generated pods
DEFAULT_AFFINITY_TIMEOUT = 10800   # kube-proxy's ClientIP default, seconds
POD_TEMPLATE_HASH = "pod-template-hash"
STATEFULSET_POD_NAME = "statefulset.kubernetes.io/pod-name"
POD_INDEX = "apps.kubernetes.io/pod-index"           # the ordinal, on StatefulSet pods since Kubernetes 1.28
CONTROLLER_REVISION_HASH = "controller-revision-hash"
# env valueFrom.fieldRef paths the kubelet resolves (the downward API)
FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
               "spec.serviceAccountName", "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs")

# Kubernetes' rand.SafeEncodeString alphabet: no vowels (no words), no 0/1/3 (look like letters).
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


# --- where an object came from ----------------------------------------------

@dataclass(frozen=True, eq=False)
class Origin:
    """File, line and field path prefix of a parsed object, so problems found
    later (unknown node, duplicate name) point at the right place."""

    source: str
    line: int | None = None
    path: str = ""                      # e.g. spec.manifests[2] inside a lab file
    lines: dict = field(default_factory=dict)

    def where(self, rel: str) -> tuple[str, int | None]:
        """(full field path, line) of a field given relative to the object;
        the line of the nearest enclosing field that was present if it was not."""
        full = f"{self.path}.{rel}" if self.path and rel else (self.path or rel)
        probe = full
        while probe:
            if probe in self.lines:
                return full, self.lines[probe]
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
        return full, self.line


@dataclass(frozen=True, eq=False)
class LabFieldOrigin(Origin):
    """An object the lab makes itself (the cluster DNS Deployment): every problem with it
    points at the lab file's field that asked for it, e.g. spec.dns.replicas."""

    def where(self, rel: str) -> tuple[str, int | None]:
        return self.path, self.line


_NO_ORIGIN = Origin("<unknown>")


def _origin_field():
    return field(default=_NO_ORIGIN, compare=False, repr=False)


# --- pod pieces -------------------------------------------------------------

@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    name: str | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"containerPort": self.container_port, "protocol": self.protocol}
        if self.name:
            d["name"] = self.name
        return d


@dataclass(frozen=True)
class EnvVar:
    """An environment variable: a literal value, or a downward-API field path
    (status.podIP, metadata.name, ...) the pod runner fills in."""

    name: str
    value: str | None = None
    field_path: str | None = None

    def to_dict(self) -> dict:
        if self.field_path:
            return {"name": self.name, "valueFrom": {"fieldRef": {"fieldPath": self.field_path}}}
        return {"name": self.name, "value": self.value or ""}


@dataclass(frozen=True)
class Container:
    name: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    env: tuple[EnvVar, ...] = ()
    working_dir: str | None = None

    @property
    def argv(self) -> tuple[str, ...]:
        """What to run: command + args. There is no image entrypoint here, so
        args alone are the command line."""
        return self.command + self.args

    @property
    def runs_echo_server(self) -> bool:
        """No command: the built-in echo server answers on each containerPort."""
        return not self.argv

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name}
        if self.command:
            d["command"] = list(self.command)
        if self.args:
            d["args"] = list(self.args)
        if self.ports:
            d["ports"] = [p.to_dict() for p in self.ports]
        if self.env:
            d["env"] = [e.to_dict() for e in self.env]
        if self.working_dir:
            d["workingDir"] = self.working_dir
        return d


@dataclass(frozen=True)
class DNSConfig:
    """spec.dnsConfig: merged into the pod's resolv.conf like the kubelet does."""

    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[tuple[str, str | None], ...] = ()

    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        if self.nameservers:
            d["nameservers"] = list(self.nameservers)
        if self.searches:
            d["searches"] = list(self.searches)
        if self.options:
            d["options"] = [{"name": n} if v is None else {"name": n, "value": v} for n, v in self.options]
        return d


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    node_name: str | None = None
    node_selector: dict = field(default_factory=dict)
    hostname: str | None = None
    subdomain: str | None = None
    dns_policy: str = "ClusterFirst"
    dns_config: DNSConfig | None = None
    restart_policy: str = "Always"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"containers": [c.to_dict() for c in self.containers]}
        if self.node_name:
            d["nodeName"] = self.node_name
        if self.node_selector:
            d["nodeSelector"] = dict(self.node_selector)
        if self.hostname:
            d["hostname"] = self.hostname
        if self.subdomain:
            d["subdomain"] = self.subdomain
        d["dnsPolicy"] = self.dns_policy
        if self.dns_config is not None:
            d["dnsConfig"] = self.dns_config.to_dict()
        d["restartPolicy"] = self.restart_policy
        return d


@dataclass(frozen=True)
class OwnerRef:
    """The controller of a generated pod (Deployment, StatefulSet or
    DaemonSet). There are no ReplicaSet objects here: a Deployment owns its
    pods directly."""

    kind: str
    name: str


def _meta(name: str, namespace: str | None, labels: dict, extra: dict | None = None) -> dict:
    m: dict[str, Any] = {"name": name}
    if namespace is not None:
        m["namespace"] = namespace
    if labels:
        m["labels"] = dict(labels)
    if extra:
        m.update(extra)
    return m


# --- the kinds --------------------------------------------------------------

@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict = field(default_factory=dict)
    origin: Origin = _origin_field()

    kind = "Namespace"
    api_version = "v1"

    @property
    def namespace(self) -> None:
        return None  # cluster-scoped

    def to_dict(self) -> dict:
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(self.name, None, self.labels)}


@dataclass(frozen=True)
class Pod:
    name: str
    spec: PodSpec
    namespace: str = "default"
    labels: dict = field(default_factory=dict)
    owner: OwnerRef | None = None
    origin: Origin = _origin_field()

    kind = "Pod"
    api_version = "v1"

    @property
    def key(self) -> str:
        return names.pod_key(self.namespace, self.name)

    @property
    def node_name(self) -> str | None:
        return self.spec.node_name

    @property
    def containers(self) -> tuple[Container, ...]:
        return self.spec.containers

    @property
    def hostname(self) -> str:
        return names.pod_hostname(self.name, self.spec.hostname)

    def netns(self, lab: str) -> str:
        return names.pod_netns(lab, self.namespace, self.name)

    def ports(self) -> list[ContainerPort]:
        return [p for c in self.spec.containers for p in c.ports]

    def bind(self, node: str) -> "Pod":
        """This pod scheduled to node (spec.nodeName set)."""
        return replace(self, spec=replace(self.spec, node_name=node))

    def to_dict(self) -> dict:
        extra = None
        if self.owner:
            extra = {"ownerReferences": [{"apiVersion": "apps/v1", "kind": self.owner.kind,
                                          "name": self.owner.name, "controller": True}]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(self.name, self.namespace, self.labels, extra),
                "spec": self.spec.to_dict()}


@dataclass(frozen=True)
class LabelSelector:
    match_labels: dict = field(default_factory=dict)
    # (key, operator, values): operator In, NotIn, Exists, DoesNotExist
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: dict) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        if self.match_labels:
            d["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            d["matchExpressions"] = [{"key": k, "operator": op, **({"values": list(v)} if v else {})}
                                     for k, op, v in self.match_expressions]
        return d


@dataclass(frozen=True)
class PodTemplate:
    spec: PodSpec
    labels: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"metadata": {"labels": dict(self.labels)} if self.labels else {},
                             "spec": self.spec.to_dict()}
        return d


@dataclass(frozen=True)
class Deployment:
    name: str
    selector: LabelSelector
    template: PodTemplate
    namespace: str = "default"
    replicas: int = 1
    labels: dict = field(default_factory=dict)
    origin: Origin = _origin_field()

    kind = "Deployment"
    api_version = "apps/v1"

    @property
    def template_hash(self) -> str:
        return pod_template_hash(self.template)

    @property
    def replica_set_name(self) -> str:
        """<deployment>-<pod-template-hash>, the ReplicaSet Kubernetes would create."""
        return f"{self.name}-{self.template_hash}"

    def pods(self) -> list[Pod]:
        """The replicas, unscheduled unless the template names a node.

        Replica i's name depends only on the template and replicas 0..i, so
        re-applying keeps names, scaling up appends and scaling down drops
        the highest-numbered; a changed template renames every pod (a rollout).
        """
        thash = self.template_hash
        rs = f"{self.name}-{thash}"
        labels = {**self.template.labels, POD_TEMPLATE_HASH: thash}
        owner = OwnerRef("Deployment", self.name)
        out = [Pod(name=n, spec=self.template.spec, namespace=self.namespace, labels=labels, owner=owner,
                   origin=self.origin) for n in replica_names(rs, self.replicas)]
        return out

    def to_dict(self) -> dict:
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": _meta(self.name, self.namespace, self.labels),
                "spec": {"replicas": self.replicas, "selector": self.selector.to_dict(),
                         "template": self.template.to_dict()}}


@dataclass(frozen=True)
class StatefulSet:
    """Pods named by ordinal, each with hostname = its name and subdomain =
    serviceName, so `web-0.<serviceName>.<ns>.svc.<domain>` resolves through
    the headless Service of that name."""

    name: str
    selector: LabelSelector
    template: PodTemplate
    namespace: str = "default"
    replicas: int = 1
    service_name: str | None = None
    start_ordinal: int = 0            # spec.ordinals.start
    labels: dict = field(default_factory=dict)
    origin: Origin = _origin_field()

    kind = "StatefulSet"
    api_version = "apps/v1"

    @property
    def ordinals(self) -> range:
        return range(self.start_ordinal, self.start_ordinal + self.replicas)

    def pod_names(self) -> list[str]:
        """<name>-<ordinal>: scaling up appends ordinals, scaling down drops the highest."""
        return [f"{self.name}-{i}" for i in self.ordinals]

    def pods(self) -> list[Pod]:
        revision = f"{self.name}-{pod_template_hash(self.template)}"
        owner = OwnerRef(self.kind, self.name)
        out = []
        for i, pod_name in zip(self.ordinals, self.pod_names()):
            # the StatefulSet controller overwrites the template's hostname and subdomain
            spec = replace(self.template.spec, hostname=pod_name, subdomain=self.service_name)
            labels = {**self.template.labels, STATEFULSET_POD_NAME: pod_name, POD_INDEX: str(i),
                      CONTROLLER_REVISION_HASH: revision}
            out.append(Pod(pod_name, spec, self.namespace, labels, owner, self.origin))
        return out

    def to_dict(self) -> dict:
        spec: dict[str, Any] = {"replicas": self.replicas}
        if self.service_name:
            spec["serviceName"] = self.service_name
        if self.start_ordinal:
            spec["ordinals"] = {"start": self.start_ordinal}
        spec.update({"selector": self.selector.to_dict(), "template": self.template.to_dict()})
        return {"apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": _meta(self.name, self.namespace, self.labels), "spec": spec}


def node_labels(node) -> dict[str, str]:
    """A node's labels plus the ones every Kubernetes node carries."""
    return {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", **node.labels}


@dataclass(frozen=True)
class DaemonSet:
    """One pod on every node its template's nodeSelector (and nodeName) allows,
    pinned there with spec.nodeName, as the DaemonSet controller does."""

    name: str
    selector: LabelSelector
    template: PodTemplate
    namespace: str = "default"
    labels: dict = field(default_factory=dict)
    origin: Origin = _origin_field()

    kind = "DaemonSet"
    api_version = "apps/v1"

    def runs_on(self, node) -> bool:
        spec = self.template.spec
        labels = node_labels(node)
        return (spec.node_name in (None, node.name)
                and all(labels.get(k) == v for k, v in spec.node_selector.items()))

    def pods(self, nodes: Iterable = ()) -> list[Pod]:
        """The pods for these nodes (the lab's Node objects), in node order.

        A pod's name is <daemonset>-<5 characters> from the template and the
        node, so it stays the same while both do, and a changed template
        replaces every pod (a rolling update's new pods get new names too)."""
        thash = pod_template_hash(self.template)
        labels = {**self.template.labels, CONTROLLER_REVISION_HASH: f"{self.name}-{thash}"}
        owner = OwnerRef(self.kind, self.name)
        seen: set[str] = set()
        out = []
        for node in nodes:
            if self.runs_on(node):
                pod_name = _generated_name(self.name, f"{self.name}/{thash}/{node.name}", seen)
                spec = replace(self.template.spec, node_name=node.name)
                out.append(Pod(pod_name, spec, self.namespace, labels, owner, self.origin))
        return out

    def to_dict(self) -> dict:
        return {"apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": _meta(self.name, self.namespace, self.labels),
                "spec": {"selector": self.selector.to_dict(), "template": self.template.to_dict()}}


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: Union[int, str]      # a number, or the name of a containerPort
    protocol: str = "TCP"
    name: str | None = None
    node_port: int | None = None      # None: allocated from the lab's nodePortRange

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"port": self.port, "targetPort": self.target_port, "protocol": self.protocol}
        if self.name:
            d["name"] = self.name
        if self.node_port:
            d["nodePort"] = self.node_port
        return d


@dataclass(frozen=True)
class Service:
    """A Service as written. cluster_ip and the ports' node_port are what the
    manifest asks for (None: allocate); services.allocate_services() fills
    them in. ExternalName Services have external_name and no cluster IP."""

    name: str
    ports: tuple[ServicePort, ...]
    namespace: str = "default"
    type: str = "ClusterIP"
    selector: dict = field(default_factory=dict)
    cluster_ip: str | None = None     # None: allocate; "None": headless
    session_affinity: str = "None"    # or ClientIP
    session_affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    external_ips: tuple[str, ...] = ()
    labels: dict = field(default_factory=dict)
    publish_not_ready_addresses: bool = False
    external_name: str | None = None  # type ExternalName: the DNS name a CNAME points to
    origin: Origin = _origin_field()

    kind = "Service"
    api_version = "v1"

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"

    @property
    def has_cluster_ip(self) -> bool:
        """Gets (or has) a virtual IP: not headless, not ExternalName."""
        return self.type != "ExternalName" and not self.headless

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict:
        spec: dict[str, Any] = {"type": self.type, "ports": [p.to_dict() for p in self.ports]}
        if self.selector:
            spec["selector"] = dict(self.selector)
        if self.cluster_ip:
            spec["clusterIP"] = self.cluster_ip
            spec["clusterIPs"] = [self.cluster_ip]
        if self.external_name:
            spec["externalName"] = self.external_name
        spec["sessionAffinity"] = self.session_affinity
        if self.session_affinity == "ClientIP":
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": self.session_affinity_timeout}}
        if self.type == "NodePort":
            spec["externalTrafficPolicy"] = self.external_traffic_policy
        spec["internalTrafficPolicy"] = self.internal_traffic_policy
        if self.external_ips:
            spec["externalIPs"] = list(self.external_ips)
        if self.publish_not_ready_addresses:
            spec["publishNotReadyAddresses"] = True
        return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(self.name, self.namespace, self.labels),
                "spec": spec}


Object = Union[Namespace, Pod, Deployment, StatefulSet, DaemonSet, Service]
KINDS = {"Namespace": ("v1", Namespace), "Pod": ("v1", Pod), "Deployment": ("apps/v1", Deployment),
         "Service": ("v1", Service), "StatefulSet": ("apps/v1", StatefulSet), "DaemonSet": ("apps/v1", DaemonSet)}


def object_key(obj: Object) -> tuple[str, str, str]:
    """(kind, namespace, name): what `apply` replaces and `delete` removes."""
    return obj.kind, obj.namespace or "", obj.name


def describe(obj: Object) -> str:
    ns = f"{obj.namespace}/" if obj.namespace not in (None, "default") else ""
    return f'{obj.kind} "{ns}{obj.name}"'


def problem_at(obj: Object, rel: str, message: str) -> Problem:
    """A problem with one field of a parsed object (rel: e.g. spec.clusterIP),
    at the file and line the object came from."""
    path, line = obj.origin.where(rel)
    return Problem(obj.origin.source, path, message, line, describe(obj))


# --- Deployment naming ------------------------------------------------------

def _safe_encode(digest: bytes, length: int) -> str:
    n = int.from_bytes(digest, "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, len(_SAFE))
        out.append(_SAFE[r])
    return "".join(out)


def pod_template_hash(template: PodTemplate) -> str:
    """10 characters from the Kubernetes alphabet, a hash of everything the
    template means here; fields we ignore (image, ...) never change it."""
    # Hashes to_dict(): a field added to the model later must be left out of
    # to_dict() when it has its default, or every running pod gets renamed.
    canonical = json.dumps(template.to_dict(), sort_keys=True, separators=(",", ":"))
    return _safe_encode(hashlib.sha256(canonical.encode()).digest(), 10)


def _generated_name(owner: str, key: str, seen: set[str]) -> str:
    """generateName-style "<owner>-" (cut to 58 like the API server) plus 5
    characters hashed from key; a clash with a name in seen is resolved by
    rehashing. Adds the name to seen."""
    base = f"{owner}-"[:58]
    attempt = 0
    while True:
        name = base + _safe_encode(hashlib.sha256((key + (f"/{attempt}" if attempt else "")).encode()).digest(), 5)
        if name not in seen:
            seen.add(name)
            return name
        attempt += 1


def replica_names(replica_set: str, replicas: int) -> list[str]:
    """Pod names for replicas 0..n-1: "<rs>-" plus 5 characters. Names are
    unique and each depends only on the replicas before it."""
    seen: set[str] = set()
    return [_generated_name(replica_set, f"{replica_set}/{i}", seen) for i in range(replicas)]


def expand(objects: Iterable[Object], nodes: Iterable = ()) -> list[Pod]:
    """Every pod the objects ask for: standalone Pods, Deployment and
    StatefulSet replicas, and a DaemonSet's pod per matching node (of nodes,
    the lab's Node objects), in declaration order. Unscheduled unless pinned
    by nodeName (DaemonSet pods always are)."""
    nodes = tuple(nodes)
    pods: list[Pod] = []
    for obj in objects:
        if isinstance(obj, Pod):
            pods.append(obj)
        elif isinstance(obj, DaemonSet):
            pods.extend(obj.pods(nodes))
        elif isinstance(obj, (Deployment, StatefulSet)):
            pods.extend(obj.pods())
    return pods


# --- parsing ----------------------------------------------------------------

_IGNORED_META = frozenset({"annotations", "generateName", "uid", "resourceVersion", "generation",
                           "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                           "finalizers", "managedFields", "selfLink", "ownerReferences"})
_IGNORED_POD_SPEC = frozenset({
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "enableServiceLinks",
    "ephemeralContainers", "hostAliases", "hostIPC", "hostPID", "hostUsers", "imagePullSecrets",
    "initContainers", "os", "overhead", "preemptionPolicy", "priority", "priorityClassName", "readinessGates",
    "resourceClaims", "resources", "runtimeClassName", "schedulerName", "schedulingGates", "securityContext",
    "serviceAccount", "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace",
    "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints", "volumes"})
_IGNORED_CONTAINER = frozenset({
    "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe", "readinessProbe", "resizePolicy",
    "resources", "restartPolicy", "securityContext", "startupProbe", "stdin", "stdinOnce",
    "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices", "volumeMounts"})
# spec fields each controller kind uses, and the ones accepted and ignored
_CONTROLLER_FIELDS = {
    "Deployment": ({"replicas", "selector", "template"},
                   {"minReadySeconds", "paused", "progressDeadlineSeconds", "revisionHistoryLimit", "strategy"}),
    "StatefulSet": ({"replicas", "selector", "template", "serviceName", "ordinals"},
                    {"minReadySeconds", "persistentVolumeClaimRetentionPolicy", "podManagementPolicy",
                     "revisionHistoryLimit", "updateStrategy", "volumeClaimTemplates"}),
    "DaemonSet": ({"selector", "template"}, {"minReadySeconds", "revisionHistoryLimit", "updateStrategy"}),
}
_IGNORED_SERVICE_SPEC = frozenset({"allocateLoadBalancerNodePorts", "healthCheckNodePort", "ipFamilies",
                                   "ipFamilyPolicy", "loadBalancerClass", "loadBalancerIP",
                                   "loadBalancerSourceRanges", "trafficDistribution"})


def _check_label_map(r: Reader, key: str) -> dict[str, str]:
    return r.string_map(key, check_key=label_key, check_value=label_value)


def _metadata(r: Reader, *, namespaced: bool, kind: str, name_check) -> tuple[str | None, str, dict]:
    """(name, namespace, labels) of metadata; sets the reader's subject."""
    m = r.mapping("metadata", required=True, hint=f"a {kind} needs metadata: {{name: ...}}")
    if m is None:
        return None, "default", {}
    m.fields({"name", "namespace", "labels"}, strict=False, ignored=_IGNORED_META)
    name = m.text("name", required=True, hint=f"give the {kind} a name: metadata.name", check=name_check)
    namespace = "default"
    if namespaced:
        namespace = m.text("namespace", "default", check=dns_label)
    elif m.has("namespace"):
        m.error("namespace", f"a {kind} is not namespaced; remove metadata.namespace")
    labels = _check_label_map(m, "labels")
    if name:
        ns = f"{namespace}/" if namespaced and namespace != "default" else ""
        r.subject = f'{kind} "{ns}{name}"'
    return name, namespace, labels


def _ports(r: Reader, names_seen: set[str]) -> tuple[ContainerPort, ...]:
    out = []
    for p in r.mappings("ports", what="a port: {containerPort: 8080}"):
        p.fields({"containerPort", "protocol", "name"}, strict=False, ignored=frozenset({"hostIP", "hostPort"}))
        number = p.integer("containerPort", required=True, hint="set containerPort: <1-65535>", lo=1, hi=65535)
        protocol = _protocol(p)
        pname = p.text("name", check=port_name)
        if pname:
            if pname in names_seen:
                p.error("name", f"port name {show(pname)} is used twice in this pod; port names must be unique")
            names_seen.add(pname)
        host_port = p.raw("hostPort")
        if host_port not in (None, 0):
            p.error("hostPort", f"{show(host_port)}: hostPort is not supported; remove it and expose the port "
                                "with a NodePort Service")
        if number is not None and protocol is not None:
            out.append(ContainerPort(number, protocol, pname))
    return tuple(out)


def _protocol(r: Reader) -> str | None:
    proto = r.text("protocol", "TCP")
    if proto is None:
        return None
    if proto not in PROTOCOLS:
        if proto.upper() in PROTOCOLS:
            r.error("protocol", f"{show(proto)} is not a protocol (they are upper case); use {proto.upper()}")
        else:
            r.error("protocol", f"{show(proto)} is not supported here; use TCP or UDP")
        return None
    return proto


def _env(r: Reader) -> tuple[EnvVar, ...]:
    out = []
    for e in r.mappings("env", what="an environment variable: {name: X, value: Y}"):
        e.fields({"name", "value", "valueFrom"}, strict=False)
        name = e.text("name", required=True, hint="every env entry needs a name", check=env_name)
        value = e.raw("value")
        if value is not None and not isinstance(value, str):
            e.error("value", f"{show(value)} is not a string; quote it: value: \"{value}\"")
            value = None
        vf = e.mapping("valueFrom")
        path = None
        if vf is not None:
            vf.fields({"fieldRef"}, strict=False)
            ref = vf.mapping("fieldRef")
            if ref is None:
                vf.error(None, "only valueFrom.fieldRef is supported (no Secrets or ConfigMaps here); "
                               "use value: or fieldRef: {fieldPath: status.podIP}")
            else:
                path = ref.text("fieldPath", required=True, hint="e.g. fieldPath: status.podIP")
                if path and path not in FIELD_PATHS and not path.startswith(("metadata.labels[", "metadata.annotations[")):
                    ref.error("fieldPath", f"{show(path)} is not a supported field; use one of {', '.join(FIELD_PATHS)}")
                    path = None
        if name:
            out.append(EnvVar(name, value if path is None else None, path))
    return tuple(out)


def _containers(r: Reader) -> tuple[Container, ...]:
    out = []
    seen: set[str] = set()
    port_names: set[str] = set()
    items = list(r.mappings("containers", required=True, hint="a pod needs at least one container",
                            what="a container: {name: app}"))
    if r.raw("containers") == []:
        r.error("containers", "is empty; a pod needs at least one container, e.g. - name: app")
    for c in items:
        c.fields({"name", "command", "args", "ports", "env", "workingDir"}, strict=False, ignored=_IGNORED_CONTAINER)
        name = c.text("name", required=True, hint="every container needs a name, e.g. name: app", check=dns_label)
        if name:
            if name in seen:
                c.error("name", f"{show(name)} is used by another container of this pod; container names must be unique")
            seen.add(name)
        command = c.strings("command") or []
        args = c.strings("args") or []
        ports = _ports(c, port_names)
        env = _env(c)
        wd = c.text("workingDir")
        if name:
            out.append(Container(name, tuple(command), tuple(args), ports, env, wd))
    return tuple(out)


def _dns_config(r: Reader) -> DNSConfig | None:
    d = r.mapping("dnsConfig")
    if d is None:
        return None
    d.fields({"nameservers", "searches", "options"}, strict=False)
    servers = d.strings("nameservers") or []
    for i, s in enumerate(servers):
        if msg := ipv4_address(s):
            d.error(("nameservers", i), msg)
    if len(servers) > 3:
        d.error("nameservers", f"{len(servers)} nameservers; a resolv.conf takes at most 3")
    searches = d.strings("searches") or []
    options = []
    for o in d.mappings("options", what="an option: {name: ndots, value: \"2\"}"):
        oname = o.text("name", required=True, hint="e.g. name: ndots")
        value = o.raw("value")
        if value is not None and not isinstance(value, str):
            value = str(value)
        if oname:
            options.append((oname, value))
    return DNSConfig(tuple(servers), tuple(searches), tuple(options))


def _pod_spec(s: Reader, *, controller: str | None) -> PodSpec | None:
    s.fields({"containers", "nodeName", "nodeSelector", "hostname", "subdomain", "dnsPolicy", "dnsConfig",
              "restartPolicy", "hostNetwork"}, strict=False, ignored=_IGNORED_POD_SPEC)
    containers = _containers(s)
    node_name = s.text("nodeName", check=dns_label)
    node_selector = _check_label_map(s, "nodeSelector")
    hostname = s.text("hostname", check=dns_label)
    subdomain = s.text("subdomain", check=dns_label)
    if s.boolean("hostNetwork", False):
        s.error("hostNetwork", "true is not supported: every pod gets its own network namespace here; "
                               "remove hostNetwork")
    dns_policy = s.text("dnsPolicy", "ClusterFirst")
    if dns_policy not in DNS_POLICIES:
        s.error("dnsPolicy", f"{show(dns_policy)} is not a DNS policy; use one of {', '.join(DNS_POLICIES)}")
        dns_policy = "ClusterFirst"
    dns_config = _dns_config(s)
    if dns_policy == "None" and not (dns_config and dns_config.nameservers):
        s.error("dnsConfig", "dnsPolicy: None needs dnsConfig.nameservers (at least one); add them or use "
                             "dnsPolicy: ClusterFirst")
    restart = s.text("restartPolicy", "Always")
    if restart not in RESTART_POLICIES:
        s.error("restartPolicy", f"{show(restart)} is not a restart policy; use one of {', '.join(RESTART_POLICIES)}")
        restart = "Always"
    elif controller and restart != "Always":
        s.error("restartPolicy", f"{show(restart)}: a {controller}'s pods must use Always; remove restartPolicy")
    if not containers:
        return None
    return PodSpec(containers, node_name, node_selector, hostname, subdomain, dns_policy, dns_config, restart)


def _parse_namespace(r: Reader) -> Namespace | None:
    name, _, labels = _metadata(r, namespaced=False, kind="Namespace", name_check=dns_label)
    r.fields({"apiVersion", "kind", "metadata"}, strict=False, ignored=frozenset({"spec", "status"}))
    return Namespace(name, labels, _origin(r)) if name else None


def _pod_name_check(value: str) -> str | None:
    return dns_subdomain(value)


def _parse_pod(r: Reader) -> Pod | None:
    name, namespace, labels = _metadata(r, namespaced=True, kind="Pod", name_check=_pod_name_check)
    r.fields({"apiVersion", "kind", "metadata", "spec"}, strict=False, ignored=frozenset({"status"}))
    if name and namespace and len(namespace) + len(name) > names.MAX_POD_KEY:
        r.error(("metadata", "name"), f"namespace and name together are {len(namespace) + len(name)} characters; "
                                 f"use at most {names.MAX_POD_KEY} (the pod's network namespace name is a file name)")
    owner = None
    m = r.data.get("metadata") if isinstance(r.data.get("metadata"), dict) else {}
    for ref in m.get("ownerReferences") or ():
        # only our own stored pods carry this; it keeps a controller's pods tied to it
        if isinstance(ref, dict) and ref.get("kind") in CONTROLLER_KINDS and isinstance(ref.get("name"), str):
            owner = OwnerRef(ref["kind"], ref["name"])
    s = r.mapping("spec", required=True, hint="a Pod needs spec.containers")
    spec = _pod_spec(s, controller=None) if s else None
    if not (name and spec):
        return None
    return Pod(name, spec, namespace, labels, owner, _origin(r))


def _selector(r: Reader, kind: str) -> LabelSelector | None:
    s = r.mapping("selector", required=True, hint=f"apps/v1 {kind}s need spec.selector.matchLabels "
                                                  "matching the template's labels")
    if s is None:
        return None
    s.fields({"matchLabels", "matchExpressions"}, strict=False)
    match_labels = _check_label_map(s, "matchLabels")
    exprs = []
    for e in s.mappings("matchExpressions", what="{key: app, operator: In, values: [web]}"):
        key = e.text("key", required=True, hint="e.g. key: app", check=label_key)
        op = e.text("operator", required=True, hint="In, NotIn, Exists or DoesNotExist")
        values = e.strings("values") or []
        if op is not None and op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            e.error("operator", f"{show(op)} is not an operator; use In, NotIn, Exists or DoesNotExist")
            op = None
        elif op in ("In", "NotIn") and not values:
            e.error("values", f"operator {op} needs a non-empty values list")
        elif op in ("Exists", "DoesNotExist") and values:
            e.error("values", f"operator {op} takes no values; remove them")
        if key and op:
            exprs.append((key, op, tuple(values)))
    sel = LabelSelector(match_labels, tuple(exprs))
    if sel.empty:
        s.error(None, "is empty; select the template's pods, e.g. matchLabels: {app: echo}")
        return None
    return sel


def _parse_controller(r: Reader, kind: str) -> dict | None:
    """What Deployment, StatefulSet and DaemonSet share: metadata, selector,
    template and (except DaemonSet) replicas. None when anything is wrong."""
    # a StatefulSet's name is in its pods' hostnames: a DNS label
    name_check = dns_label if kind == "StatefulSet" else dns_subdomain
    name, namespace, labels = _metadata(r, namespaced=True, kind=kind, name_check=name_check)
    r.fields({"apiVersion", "kind", "metadata", "spec"}, strict=False, ignored=frozenset({"status"}))
    s = r.mapping("spec", required=True, hint=f"a {kind} needs spec.selector and spec.template")
    if s is None:
        return None
    known, ignored = _CONTROLLER_FIELDS[kind]
    s.fields(known, strict=False, ignored=frozenset(ignored))
    replicas = 1
    if "replicas" in known:
        replicas = s.integer("replicas", 1, lo=0, why=" (0 stops every replica)")
    elif s.has("replicas"):
        s.error("replicas", f"a {kind} runs one pod on every node its template allows; remove replicas "
                            "(choose nodes with the template's nodeSelector)")
    selector = _selector(s, kind)
    t = s.mapping("template", required=True, hint=f"a {kind} needs spec.template with metadata.labels and spec")
    spec = None
    tlabels: dict = {}
    if t is not None:
        t.fields({"metadata", "spec"}, strict=False)
        tm = t.mapping("metadata")
        if tm is not None:
            tm.fields({"labels"}, strict=False, ignored=_IGNORED_META | {"name", "namespace"})
            tlabels = _check_label_map(tm, "labels")
        ts = t.mapping("spec", required=True, hint="the template needs spec.containers")
        spec = _pod_spec(ts, controller=kind) if ts else None
        if selector is not None and not selector.matches(tlabels):
            s.error("selector", f"{show(selector.to_dict())} does not match the template's labels "
                                f"{show(tlabels)}; make spec.template.metadata.labels include the selector's labels")
    if not (name and spec and selector is not None and replicas is not None):
        return None
    return {"name": name, "namespace": namespace, "labels": labels, "selector": selector,
            "template": PodTemplate(spec, tlabels), "replicas": replicas, "spec": s}


def _parse_deployment(r: Reader) -> Deployment | None:
    c = _parse_controller(r, "Deployment")
    if c is None:
        return None
    return Deployment(c["name"], c["selector"], c["template"], c["namespace"], c["replicas"], c["labels"],
                      _origin(r))


def _parse_statefulset(r: Reader) -> StatefulSet | None:
    c = _parse_controller(r, "StatefulSet")
    if c is None:
        return None
    s: Reader = c["spec"]
    service = s.text("serviceName", check=service_name)
    start = 0
    o = s.mapping("ordinals")
    if o is not None:
        o.fields({"start"}, strict=True)
        start = o.integer("start", 0, lo=0)
    last = f"{c['name']}-{start + max(c['replicas'], 1) - 1}"
    if len(last) > 63:
        r.error(("metadata", "name"), f"makes pod {show(last)}, {len(last)} characters; a pod's hostname is at "
                                      "most 63, so shorten the name")
        return None
    if start is None or (s.has("serviceName") and service is None):
        return None
    return StatefulSet(c["name"], c["selector"], c["template"], c["namespace"], c["replicas"], service, start,
                       c["labels"], _origin(r))


def _parse_daemonset(r: Reader) -> DaemonSet | None:
    c = _parse_controller(r, "DaemonSet")
    if c is None:
        return None
    return DaemonSet(c["name"], c["selector"], c["template"], c["namespace"], c["labels"], _origin(r))


def _service_cluster_ip(s: Reader, stype: str | None) -> tuple[str | None, bool]:
    """(spec.clusterIP or clusterIPs[0], ok). "" and absent mean: allocate."""
    cluster_ip = s.text("clusterIP")
    ips = s.strings("clusterIPs") or []
    ok = True
    if len(ips) > 1:
        s.error("clusterIPs", f"{show(ips)} lists {len(ips)} addresses; only IPv4 single-stack is supported here, "
                              "list one address (the same as clusterIP)")
        ok = False
    elif ips and cluster_ip not in (None, "") and ips[0] != cluster_ip:
        s.error("clusterIPs", f"{show(ips[0])} differs from clusterIP {show(cluster_ip)}; clusterIPs[0] must "
                              "be clusterIP (or remove clusterIPs)")
        ok = False
    elif ips and cluster_ip in (None, ""):
        cluster_ip = ips[0]
    if cluster_ip == "":
        cluster_ip = None
    if cluster_ip not in (None, "None") and (msg := ipv4_address(cluster_ip)):
        s.error("clusterIP", f"{msg}; or remove it to have one allocated")
        return None, False
    if cluster_ip == "None" and stype == "NodePort":
        s.error("clusterIP", "None (headless) cannot be a NodePort Service; use type: ClusterIP or remove clusterIP")
        ok = False
    if cluster_ip is not None and stype == "ExternalName":
        s.error("clusterIP", f"{show(cluster_ip)}: an ExternalName Service has no cluster IP (DNS answers with a "
                             "CNAME to spec.externalName); remove clusterIP")
        ok = False
    return cluster_ip, ok


def _service_ports(s: Reader, stype: str | None, cluster_ip: str | None) -> tuple[list[ServicePort], bool]:
    """spec.ports, each checked, and whether all of them were fine."""
    ports = []
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    items = list(s.mappings("ports", what="a port: {port: 80, targetPort: 8080}"))
    if not s.raw("ports") and cluster_ip != "None" and stype != "ExternalName":
        s.error("ports", "missing; a Service needs at least one port, e.g. ports: [{port: 80, targetPort: 8080}]")
    for p in items:
        p.fields({"port", "targetPort", "protocol", "name", "nodePort"}, strict=False, ignored=frozenset({"appProtocol"}))
        number = p.integer("port", required=True, hint="set port: <1-65535>", lo=1, hi=65535)
        protocol = _protocol(p)
        pname = p.text("name", check=dns_label)
        if len(items) > 1 and not pname:
            p.error("name", "missing; a Service with several ports must name each one, e.g. name: http")
        if pname:
            if pname in seen_names:
                p.error("name", f"{show(pname)} names two ports; port names must be unique")
            seen_names.add(pname)
        if number is not None and protocol:
            if (number, protocol) in seen_ports:
                p.error("port", f"{number}/{protocol} is listed twice; remove one")
            seen_ports.add((number, protocol))
        target = p.raw("targetPort", number)
        if isinstance(target, bool) or not isinstance(target, (int, str)):
            p.error("targetPort", f"{show(target)} is not a port; use a number or a containerPort name")
            target = None
        elif isinstance(target, int) and not 1 <= target <= 65535:
            p.error("targetPort", f"{target} is out of range; use a value from 1 to 65535")
            target = None
        elif isinstance(target, str):
            if target.isdigit():
                target = int(target)  # "8080" as a string means the number
                if not 1 <= target <= 65535:
                    p.error("targetPort", f"{target} is out of range; use a value from 1 to 65535")
                    target = None
            elif msg := port_name(target):
                p.error("targetPort", msg)
                target = None
        node_port = p.integer("nodePort", lo=0, hi=65535)
        if node_port == 0:
            node_port = None
        if node_port is not None and stype != "NodePort":
            p.error("nodePort", f"{node_port}: only NodePort Services have a nodePort; remove it or set type: NodePort")
        if number is not None and protocol and target is not None:
            ports.append(ServicePort(number, target, protocol, pname, node_port))
    return ports, len(ports) == len(items)


def _parse_service(r: Reader) -> Service | None:
    name, namespace, labels = _metadata(r, namespaced=True, kind="Service", name_check=service_name)
    r.fields({"apiVersion", "kind", "metadata", "spec"}, strict=False, ignored=frozenset({"status"}))
    s = r.mapping("spec", required=True, hint="a Service needs spec.ports")
    if s is None:
        return None
    s.fields({"type", "ports", "selector", "clusterIP", "clusterIPs", "externalName", "sessionAffinity",
              "sessionAffinityConfig", "externalTrafficPolicy", "internalTrafficPolicy", "externalIPs",
              "publishNotReadyAddresses"}, strict=False, ignored=_IGNORED_SERVICE_SPEC)
    stype = s.text("type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        why = (" (there is no cloud load balancer here: a NodePort Service answers on every node's address)"
               if stype == "LoadBalancer" else "")
        s.error("type", f"{show(stype)} is not supported{why}; use {', '.join(SERVICE_TYPES[:-1])} or "
                        f"{SERVICE_TYPES[-1]}")
        stype = None
    cluster_ip, ip_ok = _service_cluster_ip(s, stype)
    external_name = s.text("externalName")
    if external_name is not None:
        external_name = external_name.removesuffix(".")   # a trailing dot (an absolute name) is allowed
        if stype != "ExternalName":
            s.error("externalName", f"{show(external_name)}: only ExternalName Services have an externalName; "
                                    "remove it or set type: ExternalName")
        elif msg := dns_subdomain(external_name):
            s.error("externalName", f"{msg}; write a DNS name like db.example.com")
            external_name = None
    elif stype == "ExternalName":
        s.error("externalName", "missing; an ExternalName Service needs the DNS name its CNAME points to, "
                                "e.g. externalName: db.example.com", s.line)
    selector = _check_label_map(s, "selector")
    ports, ports_ok = _service_ports(s, stype, cluster_ip)
    affinity = s.text("sessionAffinity", "None")
    if affinity not in ("None", "ClientIP"):
        s.error("sessionAffinity", f"{show(affinity)} is not supported; use None or ClientIP")
        affinity = "None"
    elif affinity == "ClientIP" and stype == "ExternalName":
        s.error("sessionAffinity", "ClientIP: an ExternalName Service has no proxy to keep affinity; "
                                   "remove sessionAffinity")
    timeout = DEFAULT_AFFINITY_TIMEOUT
    cfg = s.mapping("sessionAffinityConfig")
    if cfg is not None:
        cip = cfg.mapping("clientIP")
        if cip is not None:
            timeout = cip.integer("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT, lo=1, hi=86400)
    etp = s.text("externalTrafficPolicy", "Cluster")
    if etp not in ("Cluster", "Local"):
        s.error("externalTrafficPolicy", f"{show(etp)} is not a policy; use Cluster or Local")
        etp = "Cluster"
    elif etp == "Local" and stype != "NodePort":
        s.error("externalTrafficPolicy", "Local applies only to NodePort Services; remove it or set type: NodePort")
    itp = s.text("internalTrafficPolicy", "Cluster")
    if itp not in ("Cluster", "Local"):
        s.error("internalTrafficPolicy", f"{show(itp)} is not a policy; use Cluster or Local")
        itp = "Cluster"
    external_ips = s.strings("externalIPs") or []
    for i, ip in enumerate(external_ips):
        if msg := ipv4_address(ip):
            s.error(("externalIPs", i), msg)
    publish = s.boolean("publishNotReadyAddresses", False)
    if not (name and stype and ip_ok and ports_ok and (stype != "ExternalName" or external_name)):
        return None
    if not (ports or cluster_ip == "None" or stype == "ExternalName"):
        return None
    return Service(name, tuple(ports), namespace, stype, selector, cluster_ip, affinity, timeout, etp, itp,
                   tuple(external_ips), labels, publish, external_name, _origin(r))


def _origin(r: Reader) -> Origin:
    return Origin(r.source, r.line, r.path, r.lines)


_PARSERS = {"Namespace": _parse_namespace, "Pod": _parse_pod, "Deployment": _parse_deployment,
            "Service": _parse_service, "StatefulSet": _parse_statefulset, "DaemonSet": _parse_daemonset}


def parse_object(data: Any, source: str, problems: Problems, *, path: str = "",
                 line: int | None = None) -> list[Object]:
    """One document (or a List of them) into objects; problems are collected.

    Returns the objects that parsed cleanly; anything wrong is in problems.
    """
    r = Reader(data, path, source, problems, line, lines={})
    if not r.ok:
        problems.add(source, path, f"{show(data)[:60]} is {'a list' if isinstance(data, list) else 'not a mapping'}; "
                                   "each YAML document must be one Kubernetes object (apiVersion, kind, metadata, "
                                   "spec); separate objects with ---", line)
        return []
    kind = r.text("kind", required=True, hint="every object needs a kind, e.g. kind: Deployment")
    api = r.text("apiVersion", required=True, hint="every object needs an apiVersion, e.g. apiVersion: v1")
    if kind is None:
        return []
    if kind == "List":
        out: list[Object] = []
        for i, item, item_line in r.items("items") or ():
            out.extend(parse_object(item, source, problems, path=f"{path}.items[{i}]" if path else f"items[{i}]",
                                    line=item_line))
        return out
    if kind not in KINDS:
        r.error("kind", f"{show(kind)} is not supported; use one of {', '.join(KINDS)} (or List)")
        return []
    want_api, _ = KINDS[kind]
    if api is not None and api != want_api:
        r.error("apiVersion", f"{show(api)} is not the API version of {kind}; use apiVersion: {want_api}")
    obj = _PARSERS[kind](r)
    return [obj] if obj is not None else []

"""The model layer: pure data and validation (no kernel, no root).

A lab file and Kubernetes manifests become a `Lab` holding `Node`s and
workload objects (`Namespace`, `Pod`, `Deployment`, `StatefulSet`,
`DaemonSet`, `Service`); controllers expand into Pods with Kubernetes-style
names; `schedule` places pods on nodes; `allocate_services` gives Services
their ClusterIPs and NodePorts; `system_objects` are the kubernetes and
kube-dns Services and the coredns Deployment every lab has; `names` says what
every kernel object is called. Anything invalid raises `ModelError`, whose
message names file, line, field, bad value and fix. See docs/lab-format.md.
"""
from . import addressing, names
from .dns import pod_resolv_conf, resolv_conf
from .errors import ModelError, Problem
from .lab import (API_VERSION, NFTABLES_LAYOUTS, PROXY_MODES, VXLAN, ClusterDNS, External, Lab, Node, Underlay,
                  load_lab, parse_lab)
from .manifests import (load_manifests, manifest_warnings, merge_objects, object_from_dict, parse_manifests,
                        remove_objects)
from .scheduling import node_labels, schedule
from .services import allocate_services
from .system import system_objects
from .workloads import (BUILTIN_NAMESPACES, SERVICE_TYPES, STATEFULSET_POD_NAME, Container, ContainerPort, DaemonSet,
                        Deployment, DNSConfig, EnvVar, LabelSelector, Namespace, Object, OwnerRef, Pod, PodSpec,
                        PodTemplate, Service, ServicePort, StatefulSet, expand, object_key, pod_template_hash,
                        replica_names)

__all__ = [
    "API_VERSION", "BUILTIN_NAMESPACES", "NFTABLES_LAYOUTS", "PROXY_MODES", "SERVICE_TYPES", "STATEFULSET_POD_NAME",
    "ClusterDNS", "Container", "ContainerPort", "DNSConfig", "DaemonSet", "Deployment", "EnvVar", "External", "Lab",
    "LabelSelector", "ModelError", "Namespace", "Node", "Object", "OwnerRef", "Pod", "PodSpec", "PodTemplate",
    "Problem", "Service", "ServicePort", "StatefulSet", "Underlay", "VXLAN", "addressing", "allocate_services",
    "expand", "load_lab", "load_manifests", "manifest_warnings", "merge_objects", "names", "node_labels",
    "object_from_dict", "object_key", "parse_lab", "parse_manifests", "pod_resolv_conf", "pod_template_hash",
    "remove_objects", "replica_names", "resolv_conf", "schedule", "system_objects",
]

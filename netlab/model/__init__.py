"""The model layer: pure data and validation (no kernel, no root).

A lab file and Kubernetes manifests become a `Lab` holding `Node`s and
workload objects (`Namespace`, `Pod`, `Deployment`, `Service`); Deployments
expand into Pods with Kubernetes-style names; `schedule` places pods on
nodes; `names` says what every kernel object is called. Anything invalid
raises `ModelError`, whose message names file, line, field, bad value and fix.
See docs/lab-format.md.
"""
from . import addressing, names
from .dns import pod_resolv_conf, resolv_conf
from .errors import ModelError, Problem
from .lab import API_VERSION, PROXY_MODES, VXLAN, External, Lab, Node, Underlay, load_lab, parse_lab
from .manifests import load_manifests, merge_objects, object_from_dict, parse_manifests, remove_objects
from .scheduling import node_labels, schedule
from .workloads import (BUILTIN_NAMESPACES, Container, ContainerPort, Deployment, DNSConfig, EnvVar, LabelSelector,
                        Namespace, Object, OwnerRef, Pod, PodSpec, PodTemplate, Service, ServicePort, expand,
                        object_key, pod_template_hash, replica_names)

__all__ = [
    "API_VERSION", "BUILTIN_NAMESPACES", "PROXY_MODES", "Container", "ContainerPort", "DNSConfig", "Deployment",
    "EnvVar", "External", "Lab", "LabelSelector", "ModelError", "Namespace", "Node", "Object", "OwnerRef", "Pod",
    "PodSpec", "PodTemplate", "Problem", "Service", "ServicePort", "Underlay", "VXLAN", "addressing", "expand",
    "load_lab", "load_manifests", "merge_objects", "names", "object_from_dict", "node_labels", "object_key", "parse_lab",
    "parse_manifests", "pod_resolv_conf", "pod_template_hash", "remove_objects", "replica_names", "resolv_conf",
    "schedule",
]

"""The objects every lab has from the start, as kubeadm creates them on a
real cluster (not written in lab files; users may not redefine them):

- the built-in Namespaces (default, kube-system, kube-public, kube-node-lease);
- Service default/kubernetes: the first address of the serviceCIDR, port
  https 443/TCP -> 6443, and no selector. No API server runs here, so it has
  no endpoints and the proxy REJECTs it, as kube-proxy does for any Service
  without endpoints;
- Service kube-system/kube-dns at spec.dnsIP, ports dns 53/UDP, dns-tcp
  53/TCP and metrics 9153/TCP, selecting k8s-app: kube-dns;
- Deployment kube-system/coredns (spec.dns.replicas pods, dnsPolicy
  Default) running `netlab-dns serve --lab <lab>` in the CoreDNS role.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .workloads import (BUILTIN_NAMESPACES, Container, ContainerPort, Deployment, LabelSelector, LabFieldOrigin,
                        Namespace, Object, PodSpec, PodTemplate, Service, ServicePort)

if TYPE_CHECKING:
    from .lab import Lab

DNS_APP_LABELS = {"k8s-app": "kube-dns"}
DNS_COMMAND = "netlab-dns"


def system_objects(lab: "Lab") -> list[Object]:
    """The lab's system objects; their addresses and replicas follow the lab file."""
    kubernetes = Service(
        "kubernetes", (ServicePort(443, 6443, "TCP", "https"),), namespace="default",
        cluster_ip=str(lab.kubernetes_service_ip), labels={"component": "apiserver", "provider": "kubernetes"})
    kube_dns = Service(
        "kube-dns", (ServicePort(53, 53, "UDP", "dns"), ServicePort(53, 53, "TCP", "dns-tcp"),
                     ServicePort(9153, 9153, "TCP", "metrics")),
        namespace="kube-system", selector=dict(DNS_APP_LABELS), cluster_ip=str(lab.dns_ip),
        labels={**DNS_APP_LABELS, "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"})
    container = Container(
        "coredns", command=(DNS_COMMAND, "serve", "--lab", lab.name),
        ports=(ContainerPort(53, "UDP", "dns"), ContainerPort(53, "TCP", "dns-tcp"),
               ContainerPort(9153, "TCP", "metrics")))
    # dnsPolicy Default: the DNS server must not resolve through itself
    coredns = Deployment(
        "coredns", LabelSelector(dict(DNS_APP_LABELS)),
        PodTemplate(PodSpec((container,), dns_policy="Default"), dict(DNS_APP_LABELS)),
        namespace="kube-system", replicas=lab.dns.replicas, labels=dict(DNS_APP_LABELS),
        origin=LabFieldOrigin(lab.source or "the lab", path="spec.dns.replicas"))
    return [*(Namespace(n) for n in BUILTIN_NAMESPACES), kubernetes, kube_dns, coredns]

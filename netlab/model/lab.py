"""The lab topology: a Kubernetes-style file naming the lab, its nodes, its
address plan, proxy mode and the workloads to apply.

    apiVersion: netlab.dev/v1alpha1
    kind: Lab
    metadata: {name: demo}
    spec:
      nodes: [{name: node-a}, {name: node-b}]
      workloads: [workloads/echo.yaml]

`load_lab(path)` reads the file and every workload file it names, checks it
all (docs/lab-format.md lists the rules) and returns a `Lab`, or raises one
ModelError listing every problem. Besides the objects of its files, every lab
has the system objects of `system.py` (kubernetes and kube-dns Services,
the coredns Deployment, the built-in Namespaces). Validation runs in two phases: first every
field of every file, then, once those are valid, the checks across objects
(unknown nodes and namespaces, duplicates, Service addresses, room on nodes).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import addressing, names
from ._reader import Problems, Reader, load_yaml_documents
from .errors import ModelError, Problem, show
from .manifests import MANIFEST_SUFFIXES, duplicates, parse_manifests, read_text
from .scheduling import schedule
from .services import allocate_services, service_problems
from .system import system_objects
from .validate import dns_label, dns_subdomain, ipv4_address, ipv4_network, label_key, label_value
from .workloads import (BUILTIN_NAMESPACES, DaemonSet, Deployment, Namespace, Object, Pod, Service, StatefulSet,
                        describe, expand, object_key, parse_object, problem_at)

API_VERSION = "netlab.dev/v1alpha1"
KIND = "Lab"
PROXY_MODES = ("iptables", "nftables", "ipvs")
# nftables mode: kube-proxy's own table layout (what a student reads beside its docs), or one
# without a chain per Service and endpoint (verdict maps only), which stays fast at 10k Services
NFTABLES_LAYOUTS = ("kube-proxy", "maps")
FIRST_NODE_HOST = 11          # nodes from 192.168.56.11, like the Vagrantfile
MIN_MTU, MAX_MTU = 576, 65535

DEFAULT_POD_CIDR = "10.244.0.0/16"
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_UNDERLAY_CIDR = "192.168.56.0/24"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_NODE_PORT_RANGE = (30000, 32767)
DEFAULT_VNI = 1
DEFAULT_VXLAN_PORT = 8472
DEFAULT_MTU = 1500
DEFAULT_DNS_TTL = 30          # kubeadm's Corefile: kubernetes ... ttl 30
MAX_DNS_TTL = 3600            # CoreDNS kubernetes plugin's limit
DNS_PORT = 53

_LAB_NAME = re.compile(r"^[a-z][a-z0-9]*$")


@dataclass(frozen=True)
class Node:
    name: str
    underlay_ip: IPv4Address
    labels: dict = field(default_factory=dict)

    def netns(self, lab: str) -> str:
        return names.node_netns(lab, self.name)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "underlayIP": str(self.underlay_ip)}
        if self.labels:
            d["labels"] = dict(self.labels)
        return d


@dataclass(frozen=True)
class Underlay:
    cidr: IPv4Network = IPv4Network(DEFAULT_UNDERLAY_CIDR)
    mtu: int = DEFAULT_MTU


@dataclass(frozen=True)
class VXLAN:
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_VXLAN_PORT

    @property
    def device(self) -> str:
        return names.vxlan_device(self.vni)


@dataclass(frozen=True)
class External:
    """A host on the underlay outside the cluster (a NodePort client)."""

    ip: IPv4Address


@dataclass(frozen=True)
class ClusterDNS:
    """spec.dns: the cluster DNS server's settings."""

    ttl: int = DEFAULT_DNS_TTL
    upstream: str | None = None     # "IP:PORT" for names outside the cluster domain; None: answer REFUSED
    replicas: int = 1               # coredns pods

    @property
    def upstream_address(self) -> tuple[str, int] | None:
        """(ip, port) of the upstream server, or None."""
        if self.upstream is None:
            return None
        ip, _, port = self.upstream.rpartition(":")
        return ip, int(port)

    def to_dict(self) -> dict:
        return {"ttl": self.ttl, "upstream": self.upstream or False, "replicas": self.replicas}


@dataclass(frozen=True)
class Lab:
    name: str
    nodes: tuple[Node, ...]
    pod_cidr: IPv4Network = IPv4Network(DEFAULT_POD_CIDR)
    subnet_len: int = 24
    service_cidr: IPv4Network = IPv4Network(DEFAULT_SERVICE_CIDR)
    dns_ip: IPv4Address = IPv4Address("10.96.0.10")
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    underlay: Underlay = Underlay()
    vxlan: VXLAN = VXLAN()
    proxy_mode: str = "iptables"
    nftables_layout: str = "kube-proxy"
    dns: ClusterDNS = ClusterDNS()
    node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE
    external: External | None = External(IPv4Address("192.168.56.254"))
    objects: tuple[Object, ...] = ()
    source: str | None = field(default=None, compare=False, repr=False)

    # --- derived values ---
    @property
    def overlay_mtu(self) -> int:
        """flannel.<vni>, cni0 and pod MTU: underlay MTU - 50."""
        return addressing.overlay_mtu(self.underlay.mtu)

    @property
    def pods_per_node(self) -> int:
        return addressing.pods_per_node(self.subnet_len)

    @property
    def kubernetes_service_ip(self) -> IPv4Address:
        return addressing.kubernetes_service_ip(self.service_cidr)

    def node_subnets(self) -> list[IPv4Network]:
        """Subnets agents may lease, in order (flannel skips the first)."""
        return list(addressing.node_subnets(self.pod_cidr, self.subnet_len))

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def node_netns(self, node: str) -> str:
        return names.node_netns(self.name, node)

    @property
    def underlay_netns(self) -> str:
        return names.underlay_netns(self.name)

    @property
    def external_netns(self) -> str | None:
        return names.external_netns(self.name) if self.external else None

    def pod_netns(self, pod: Pod) -> str:
        return pod.netns(self.name)

    def netns_names(self) -> list[str]:
        """Every infrastructure namespace of the lab (not pods): underlay, nodes, external."""
        out = [self.underlay_netns] + [self.node_netns(n.name) for n in self.nodes]
        if self.external:
            out.append(names.external_netns(self.name))
        return out

    # --- workloads ---
    # `objects` are the user's (from lab files and apply); the system objects are derived from
    # the lab's settings, so they are never stored and always match them.
    @property
    def system_objects(self) -> list[Object]:
        return system_objects(self)

    @property
    def all_objects(self) -> list[Object]:
        """The user's objects, then the system objects."""
        return [*self.objects, *system_objects(self)]

    @property
    def namespaces(self) -> list[str]:
        """Kubernetes namespaces that exist: the built-in ones and those declared."""
        declared = [o.name for o in self.objects if isinstance(o, Namespace)]
        return list(dict.fromkeys([*BUILTIN_NAMESPACES, *declared]))

    # the per-kind lists and pods() are the user's objects; all_objects and system=True add the system's
    def _of_kind(self, kind: type) -> list:
        return [o for o in self.objects if isinstance(o, kind)]

    @property
    def deployments(self) -> list[Deployment]:
        return self._of_kind(Deployment)

    @property
    def statefulsets(self) -> list[StatefulSet]:
        return self._of_kind(StatefulSet)

    @property
    def daemonsets(self) -> list[DaemonSet]:
        return self._of_kind(DaemonSet)

    @property
    def services(self) -> list[Service]:
        """The user's Services as written (addresses not allocated)."""
        return self._of_kind(Service)

    def allocated_services(self, existing: Mapping[str, Service] | None = None) -> list[Service]:
        """Every Service of the lab, kubernetes and kube-dns included, with
        ClusterIPs and NodePorts (services.allocate_services): what the store
        holds. existing: as allocated before, by "ns/name", so addresses stay put."""
        return allocate_services(self, [o for o in self.all_objects if isinstance(o, Service)], existing)

    def pods(self, *, system: bool = False) -> list[Pod]:
        """Every pod wanted (Pods, Deployment and StatefulSet replicas, a
        DaemonSet's pod per matching node), not yet scheduled; system=True
        adds the coredns pods after the user's."""
        return expand(self.all_objects if system else self.objects, self.nodes)

    def scheduled_pods(self, current: Mapping[str, str] | None = None, *, system: bool = False) -> list[Pod]:
        """pods() bound to nodes; current maps "ns/name" to the node a pod
        runs on now so running pods stay put."""
        return schedule(self.pods(system=system), self.nodes, current=current,
                        max_pods_per_node=self.pods_per_node)

    def with_objects(self, objects: Iterable[Object]) -> "Lab":
        """This lab with another set of desired objects (after apply/delete),
        checked like load_lab checks its workloads. A system object applied
        unchanged is accepted and not kept (it exists anyway); a changed one
        is an error. Raises ModelError."""
        system = {object_key(o): o for o in system_objects(self)}
        objects = tuple(o for o in objects if not _same_as_system(o, system.get(object_key(o))))
        problems = _check_objects(self, objects)
        if problems:
            raise ModelError(problems)
        return replace(self, objects=objects)

    # --- serialisation (for the state store) ---
    def to_dict(self) -> dict:
        """A JSON-able lab document with every default spelled out and the
        workloads inlined; Lab.from_dict() reads it back to an equal Lab."""
        spec: dict[str, Any] = {
            "nodes": [n.to_dict() for n in self.nodes],
            "podCIDR": str(self.pod_cidr),
            "subnetLen": self.subnet_len,
            "serviceCIDR": str(self.service_cidr),
            "dnsIP": str(self.dns_ip),
            "clusterDomain": self.cluster_domain,
            "underlay": {"cidr": str(self.underlay.cidr), "mtu": self.underlay.mtu},
            "vxlan": {"vni": self.vxlan.vni, "port": self.vxlan.port},
            "proxyMode": self.proxy_mode,
            "nftables": {"layout": self.nftables_layout},
            "dns": self.dns.to_dict(),
            "nodePortRange": f"{self.node_port_range[0]}-{self.node_port_range[1]}",
            "external": {"ip": str(self.external.ip)} if self.external else False,
            "manifests": [o.to_dict() for o in self.objects],
        }
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": self.name}, "spec": spec}

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "<dict>") -> "Lab":
        return _build_lab([(data, None)], source, base_dir=None, name=None)


# --- loading ----------------------------------------------------------------

def load_lab(path: str | os.PathLike, *, name: str | None = None) -> Lab:
    """Read a lab file and the workload files it names; validate everything.

    name overrides metadata.name (to run a second copy of a topology, or in
    tests that need their own prefix). Raises ModelError.
    """
    shown = str(path)
    text = read_text(path, shown)
    docs = load_yaml_documents(text, shown)
    return _build_lab(docs, shown, base_dir=Path(path).parent, name=name)


def parse_lab(text: str, source: str = "<text>", *, base_dir: str | os.PathLike | None = None,
              name: str | None = None) -> Lab:
    """load_lab() for text; workload paths are relative to base_dir (default: cwd)."""
    docs = load_yaml_documents(text, source)
    return _build_lab(docs, source, base_dir=Path(base_dir) if base_dir else None, name=name)


def lab_name_problem(value: str) -> str | None:
    if not _LAB_NAME.match(value) or len(value) > names.MAX_LAB_NAME:
        return (f"{show(value)} is not a valid lab name; use at most {names.MAX_LAB_NAME} lowercase letters and "
                "digits, starting with a letter (no '-': the lab name prefixes kernel object names as "
                "<lab>-<node>, and the first '-' ends it)")
    return None


def _node_name_problem(value: str) -> str | None:
    msg = dns_label(value, max_len=names.MAX_NODE_NAME,
                    why=" (a node name is also an interface name on the underlay bridge)")
    if msg:
        return msg
    if value in names.RESERVED_NODE_NAMES:
        return f"{show(value)} is reserved (the lab's {value} namespace or interface has it); pick another name"
    return None


def _cidr(r: Reader, key: str, default: str) -> IPv4Network | None:
    value = r.text(key, default, check=ipv4_network)
    if value is None:
        return None
    net = IPv4Network(value)
    addr = net.network_address
    if addr.is_loopback or addr.is_multicast or addr.is_link_local or addr.is_reserved or addr.is_unspecified:
        r.error(key, f"{show(value)} is a reserved range (loopback, link-local, multicast or class E); "
                     "use a private range like 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
        return None
    return net


def _build_lab(docs: list[tuple[Any, int | None]], source: str, *, base_dir: Path | None,
               name: str | None) -> Lab:
    problems = Problems()
    if not docs:
        raise ModelError([Problem(source, "", "is empty; a lab file starts with apiVersion: "
                                              f"{API_VERSION} and kind: {KIND}")])
    data, line = docs[0]
    r = Reader(data, "", source, problems, line)
    if not r.ok:
        raise ModelError([Problem(source, "", f"is {'a list' if isinstance(data, list) else 'not a mapping'}; "
                                              f"a lab file is a mapping with apiVersion: {API_VERSION}, kind: {KIND}, "
                                              "metadata and spec", line)])
    r.fields({"apiVersion", "kind", "metadata", "spec"}, strict=True)
    api = r.text("apiVersion", required=True, hint=f"add apiVersion: {API_VERSION}")
    kind = r.text("kind", required=True, hint=f"add kind: {KIND}")
    if kind is not None and kind != KIND:
        r.error("kind", f"{show(kind)}: this is not a lab file; use kind: {KIND} (apply Kubernetes manifests with "
                        "kube-netlab apply -f, or list them under spec.workloads)")
        raise ModelError(problems.items)
    if api is not None and api != API_VERSION:
        r.error("apiVersion", f"{show(api)} is not supported; use apiVersion: {API_VERSION}")

    # metadata
    m = r.mapping("metadata", required=name is None, hint="give the lab a name: metadata: {name: demo}")
    lab_name = name
    if name is not None:
        if msg := lab_name_problem(name):
            problems.add("lab name", "", msg)
    if m is not None:
        m.fields({"name", "labels", "annotations"}, strict=True)
        file_name = m.text("name", required=name is None, hint="give the lab a name, e.g. name: demo",
                           check=lab_name_problem if name is None else None)
        lab_name = name or file_name
        m.string_map("labels", check_key=label_key, check_value=label_value)

    s = r.mapping("spec") or Reader({}, "spec", source, problems, line)
    s.fields({"nodes", "podCIDR", "subnetLen", "serviceCIDR", "dnsIP", "clusterDomain", "underlay", "vxlan",
              "proxyMode", "nftables", "dns", "nodePortRange", "external", "workloads", "manifests"}, strict=True)

    # address plan
    pod_cidr = _cidr(s, "podCIDR", DEFAULT_POD_CIDR)
    service_cidr = _cidr(s, "serviceCIDR", DEFAULT_SERVICE_CIDR)
    u = s.mapping("underlay") or Reader({}, "spec.underlay", source, problems, s.line)
    u.fields({"cidr", "mtu"}, strict=True)
    underlay_cidr = _cidr(u, "cidr", DEFAULT_UNDERLAY_CIDR)
    mtu = u.integer("mtu", DEFAULT_MTU, lo=MIN_MTU, hi=MAX_MTU)
    ranges = [("spec.podCIDR", s, "podCIDR", pod_cidr), ("spec.serviceCIDR", s, "serviceCIDR", service_cidr),
              ("spec.underlay.cidr", u, "cidr", underlay_cidr)]
    for i, (path_a, _, _, a) in enumerate(ranges):
        for path_b, rb, key_b, b in ranges[i + 1:]:
            if a is not None and b is not None and a.overlaps(b):
                rb.error(key_b, f"{b} overlaps {path_a} {a}; pick ranges that do not overlap "
                                f"(defaults: podCIDR {DEFAULT_POD_CIDR}, serviceCIDR {DEFAULT_SERVICE_CIDR}, "
                                f"underlay.cidr {DEFAULT_UNDERLAY_CIDR})")

    subnet_len = None
    if pod_cidr is not None:
        subnet_len = s.integer("subnetLen", addressing.default_subnet_len(pod_cidr), lo=pod_cidr.prefixlen + 1,
                               hi=30, why=f" (longer than podCIDR's /{pod_cidr.prefixlen}; /30 leaves one pod)")

    dns_ip = None
    if service_cidr is not None:
        dns_text = s.text("dnsIP", str(addressing.default_dns_ip(service_cidr)), check=ipv4_address)
        if dns_text is not None:
            dns_ip = IPv4Address(dns_text)
            if not addressing.is_host_address(service_cidr, dns_ip):
                s.error("dnsIP", f"{show(dns_text)} is not a usable address of serviceCIDR {service_cidr}; "
                                 f"use one inside it, e.g. {addressing.default_dns_ip(service_cidr)}")
                dns_ip = None
            elif dns_ip == addressing.kubernetes_service_ip(service_cidr):
                s.error("dnsIP", f"{show(dns_text)} is the kubernetes Service's address; use another, e.g. "
                                 f"{addressing.default_dns_ip(service_cidr)}")
                dns_ip = None

    domain = s.text("clusterDomain", DEFAULT_CLUSTER_DOMAIN)
    if domain is not None:
        if domain.endswith("."):
            s.error("clusterDomain", f"{show(domain)} ends with '.'; write it without, e.g. {domain.rstrip('.')}")
            domain = None
        elif msg := dns_subdomain(domain):
            s.error("clusterDomain", msg)
            domain = None

    x = s.mapping("vxlan") or Reader({}, "spec.vxlan", source, problems, s.line)
    x.fields({"vni", "port"}, strict=True)
    vni = x.integer("vni", DEFAULT_VNI, lo=1, hi=names.MAX_VNI,
                    why=f" (the device flannel.<vni> must fit {names.IFNAME_MAX} characters)")
    vxlan_port = x.integer("port", DEFAULT_VXLAN_PORT, lo=1, hi=65535)

    proxy_mode = s.text("proxyMode", "iptables")
    if proxy_mode is not None and proxy_mode not in PROXY_MODES:
        fix = proxy_mode.lower() if proxy_mode.lower() in PROXY_MODES else " or ".join(PROXY_MODES)
        s.error("proxyMode", f"{show(proxy_mode)} is not a proxy mode; use {fix}")
        proxy_mode = None
    nft = s.mapping("nftables") or Reader({}, "spec.nftables", source, problems, s.line)
    nft.fields({"layout"}, strict=True)
    layout = nft.text("layout", NFTABLES_LAYOUTS[0])
    if layout is not None and layout not in NFTABLES_LAYOUTS:
        nft.error("layout", f"{show(layout)} is not an nftables layout; use {' or '.join(NFTABLES_LAYOUTS)} "
                            "(kube-proxy: kube-proxy's own table; maps: no chain per Service, for thousands)")
        layout = None

    npr = _node_port_range(s)
    if npr is not None and vxlan_port is not None and npr[0] <= vxlan_port <= npr[1]:
        s.error("nodePortRange", f"{npr[0]}-{npr[1]} contains the VXLAN port {vxlan_port} (spec.vxlan.port); "
                                 "a UDP NodePort there would take the overlay's traffic; use a range without it")
        npr = None

    # external host
    external_ip = None
    want_external = True
    ext = s.raw("external", True)
    if isinstance(ext, bool):
        want_external = ext
    elif isinstance(ext, dict):
        e = s.mapping("external")
        e.fields({"ip"}, strict=True)
        ip_text = e.text("ip", check=ipv4_address)
        if ip_text is not None:
            external_ip = IPv4Address(ip_text)
            if underlay_cidr is not None and not addressing.is_host_address(underlay_cidr, external_ip):
                e.error("ip", f"{show(ip_text)} is not a usable address of underlay.cidr {underlay_cidr}; "
                              "use one inside it")
                external_ip = None
    else:
        s.error("external", f"{show(ext)} is {'a ' + type(ext).__name__}; use true, false or {{ip: 192.168.56.254}}")
    if want_external and external_ip is None and underlay_cidr is not None:
        external_ip = underlay_cidr.broadcast_address - 1   # the last address: far from the nodes' .11 up

    dns = _cluster_dns(s, external_ip if want_external else None, dns_ip)

    # nodes
    nodes = _nodes(s, underlay_cidr, external_ip if want_external else None)
    if nodes is not None and pod_cidr is not None and subnet_len is not None:
        fit = addressing.node_subnet_count(pod_cidr, subnet_len)
        if len(nodes) > fit:
            s.error("nodes", f"{len(nodes)} nodes do not fit podCIDR {pod_cidr} with subnetLen {subnet_len}: "
                             f"it has {fit} node subnets (the first is never leased); use a larger podCIDR or a "
                             "longer subnetLen")

    # workloads: files, then inline manifests, then any further documents of the lab file
    objects: list[Object] = []
    for i, entry, item_line in s.items("workloads") or ():
        if not isinstance(entry, str):
            problems.add(source, f"spec.workloads[{i}]", f"{show(entry)} is not a path; list manifest file paths "
                                                         "here and inline objects under spec.manifests", item_line)
            continue
        objects.extend(_workload_files(entry, base_dir, source, f"spec.workloads[{i}]", item_line, problems))
    for i, item, item_line in s.items("manifests") or ():
        objects.extend(parse_object(item, source, problems, path=f"spec.manifests[{i}]", line=item_line))
    for extra, extra_line in docs[1:]:
        objects.extend(parse_object(extra, source, problems, line=extra_line))

    problems.raise_if_any()
    assert None not in (lab_name, pod_cidr, service_cidr, underlay_cidr, subnet_len, dns_ip, domain,
                        proxy_mode, layout, dns, npr, nodes, vni, vxlan_port, mtu)
    lab = Lab(name=lab_name, nodes=tuple(nodes), pod_cidr=pod_cidr, subnet_len=subnet_len,
              service_cidr=service_cidr, dns_ip=dns_ip, cluster_domain=domain,
              underlay=Underlay(underlay_cidr, mtu), vxlan=VXLAN(vni, vxlan_port), proxy_mode=proxy_mode,
              nftables_layout=layout, dns=dns, node_port_range=npr, external=External(external_ip) if want_external else None, source=source)
    return lab.with_objects(objects)


def _cluster_dns(s: Reader, external_ip: IPv4Address | None, dns_ip: IPv4Address | None) -> ClusterDNS | None:
    d = s.mapping("dns") or Reader({}, "spec.dns", s.source, s.problems, s.line)
    d.fields({"ttl", "upstream", "replicas"}, strict=True)
    ttl = d.integer("ttl", DEFAULT_DNS_TTL, lo=0, hi=MAX_DNS_TTL, why=" seconds (CoreDNS's limit)")
    replicas = d.integer("replicas", 1, lo=0, why=" (0: no cluster DNS pod)")
    raw = d.raw("upstream", True)
    upstream = None
    if raw is True:   # absent: the external host plays the outside world's DNS server
        upstream = f"{external_ip}:{DNS_PORT}" if external_ip else None
    elif isinstance(raw, str) and raw:
        upstream = _upstream(d, raw, dns_ip)
        if upstream is None:
            return None
    elif raw is not False:
        d.error("upstream", f"{show(raw)} is not a DNS server; write IP or IP:PORT (e.g. 192.168.56.254:53), "
                            "or false for none (names outside the cluster domain get REFUSED)")
        return None
    if ttl is None or replicas is None:
        return None
    return ClusterDNS(ttl, upstream, replicas)


def _upstream(d: Reader, raw: str, dns_ip: IPv4Address | None) -> str | None:
    """IP[:PORT] -> "IP:PORT"; None after reporting a problem."""
    host, sep, port_text = raw.rpartition(":") if ":" in raw else (raw, "", str(DNS_PORT))
    if msg := ipv4_address(host):
        d.error("upstream", f"{msg}; write IP or IP:PORT, e.g. 192.168.56.254:53")
        return None
    if not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
        d.error("upstream", f"{show(raw)} has no valid port; write IP:PORT with a port from 1 to 65535, "
                            f"or leave the port out for {DNS_PORT}")
        return None
    if IPv4Address(host) == dns_ip:
        d.error("upstream", f"{show(raw)} is the cluster DNS address itself (spec.dnsIP); name a server outside "
                            "the cluster, or false for none")
        return None
    return f"{IPv4Address(host)}:{int(port_text)}"


def _node_port_range(s: Reader) -> tuple[int, int] | None:
    raw = s.raw("nodePortRange", "30000-32767")
    text = str(raw)
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not m or isinstance(raw, bool):
        s.error("nodePortRange", f"{show(raw)} is not a port range; write it like the API server's flag: 30000-32767")
        return None
    lo, hi = int(m.group(1)), int(m.group(2))
    if not (1 <= lo <= hi <= 65535):
        s.error("nodePortRange", f"{show(raw)} is not a valid range; use FIRST-LAST with 1 <= FIRST <= LAST <= 65535")
        return None
    return lo, hi


def _nodes(s: Reader, cidr: IPv4Network | None, external_ip: IPv4Address | None) -> list[Node] | None:
    raw = s.raw("nodes", 1)
    problems = s.problems
    before = len(problems.items)
    specs: list[tuple[str | None, IPv4Address | None, dict, Reader | None]] = []
    if isinstance(raw, int) and not isinstance(raw, bool):
        # shorthand: nodes: 3 -> node-1, node-2, node-3
        if raw < 1:
            s.error("nodes", f"{raw}: a lab needs at least one node; use nodes: 1 or more")
            return None
        specs = [(f"node-{i}", None, {}, None) for i in range(1, raw + 1)]
    elif isinstance(raw, list):
        if not raw:
            s.error("nodes", "is empty; list at least one node, e.g. nodes: [{name: node-a}]")
            return None
        lines = getattr(raw, "item_lines", [s.line_of("nodes")] * len(raw))
        for i, item in enumerate(raw):
            path = f"spec.nodes[{i}]"
            if isinstance(item, str):  # nodes: [node-a, node-b]
                item = {"name": item}
            if not isinstance(item, dict):
                problems.add(s.source, path, f"{show(item)} is not a node; write {{name: node-a}}", lines[i])
                specs.append((None, None, {}, None))
                continue
            n = Reader(item, path, s.source, problems, lines[i], lines=s.lines)
            n.fields({"name", "underlayIP", "labels"}, strict=True)
            name = n.text("name", required=True, hint="every node needs a name, e.g. name: node-a",
                          check=_node_name_problem)
            ip_text = n.text("underlayIP", check=ipv4_address)
            labels = n.string_map("labels", check_key=label_key, check_value=label_value)
            specs.append((name, IPv4Address(ip_text) if ip_text else None, labels, n))
    else:
        s.error("nodes", f"{show(raw)} is {'a boolean' if isinstance(raw, bool) else 'not a node list'}; "
                         "use a number (nodes: 2) or a list (nodes: [{name: node-a}, {name: node-b}])")
        return None

    seen_names: dict[str, int] = {}
    taken: dict[IPv4Address, int] = {}
    for i, (name, ip, _, n) in enumerate(specs):
        if name is not None:
            if name in seen_names:
                n.error("name", f"{show(name)} is already the name of spec.nodes[{seen_names[name]}]; "
                                "node names must be unique")
            seen_names.setdefault(name, i)
        if ip is not None and cidr is not None:
            if not addressing.is_host_address(cidr, ip):
                n.error("underlayIP", f"{show(str(ip))} is not a usable address of underlay.cidr {cidr}; "
                                      f"use one inside it, e.g. {addressing.nth_host(cidr, FIRST_NODE_HOST + i)}, "
                                      "or leave underlayIP out to have one assigned")
            elif ip in taken:
                n.error("underlayIP", f"{show(str(ip))} is already spec.nodes[{taken[ip]}]'s address; "
                                      "every node needs its own")
            elif ip == external_ip:
                n.error("underlayIP", f"{show(str(ip))} is the external host's address; use another, or move the "
                                      "external host with spec.external.ip")
            taken.setdefault(ip, i)
    if len(problems.items) > before or cidr is None:
        return None

    # the rest get addresses from .11 up, skipping used ones
    nodes = []
    candidate = addressing.nth_host(cidr, FIRST_NODE_HOST)
    for name, ip, labels, _ in specs:
        if ip is None:
            while candidate in taken or candidate == external_ip:
                candidate += 1
            if not addressing.is_host_address(cidr, candidate):
                s.error("nodes", f"underlay.cidr {cidr} has no address left for node {show(name)} (nodes get "
                                 f".{FIRST_NODE_HOST} and up); use a larger underlay.cidr or set underlayIP")
                return None
            ip = candidate
            taken[ip] = -1
        nodes.append(Node(name, ip, labels))
    return nodes


def _workload_files(entry: str, base_dir: Path | None, source: str, path: str, line: int | None,
                    problems: Problems) -> list[Object]:
    full = Path(entry) if os.path.isabs(entry) or base_dir is None else base_dir / entry
    shown = os.path.normpath(str(full))
    if not full.exists():
        problems.add(source, path, f"{show(entry)}: no such file ({shown}); paths are relative to the lab file",
                     line)
        return []
    files = sorted(p for p in full.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES) \
        if full.is_dir() else [full]
    out: list[Object] = []
    for f in files:
        fshown = os.path.normpath(str(f))
        try:
            out.extend(parse_manifests(read_text(f, fshown), fshown))
        except ModelError as e:
            problems.extend(e.problems)
    return out


# --- checks across objects --------------------------------------------------

def _same_as_system(obj: Object, system: Object | None) -> bool:
    """obj is the system object written out again (a Service may leave its
    clusterIP to be filled in)."""
    if system is None:
        return False
    if isinstance(obj, Service) and obj.cluster_ip is None:
        obj = replace(obj, cluster_ip=system.cluster_ip)
    return obj == system


def _check_objects(lab: Lab, objects: tuple[Object, ...]) -> list[Problem]:
    problems = duplicates(objects)
    system = system_objects(lab)
    system_keys = {object_key(o) for o in system}
    for o in objects:
        if object_key(o) in system_keys:
            problems.append(problem_at(o, "metadata.name", f"{describe(o)} is one of the lab's system objects, "
                                                           "which may not be changed; remove it from the "
                                                           "manifests or give yours another name"))
    objects = tuple(o for o in objects if object_key(o) not in system_keys)   # one problem each is enough
    known_ns = set(BUILTIN_NAMESPACES) | {o.name for o in objects if isinstance(o, Namespace)}
    for o in objects:
        if o.namespace is not None and o.namespace not in known_ns:
            problems.append(problem_at(o, "metadata.namespace",
                                       f"namespace {show(o.namespace)} does not exist; add a Namespace object "
                                       f"(kind: Namespace, metadata: {{name: {o.namespace}}}) or use an existing "
                                       "one"))
    everything = [*objects, *system]

    # generated pod names must not meet declared ones
    owners: dict[str, Object] = {}
    for o in everything:
        for p in expand([o], lab.nodes):
            other = owners.get(p.key)
            if other is not None and other is not o:
                problems.append(problem_at(o, "metadata.name", f"makes pod {show(p.key)}, which {describe(other)} "
                                                               "also makes; rename one of them"))
            owners.setdefault(p.key, o)

    problems += service_problems(lab, [o for o in everything if isinstance(o, Service)])

    if not problems:
        try:
            schedule(expand(everything, lab.nodes), lab.nodes, max_pods_per_node=lab.pods_per_node)
        except ModelError as e:
            problems += e.problems
    return problems

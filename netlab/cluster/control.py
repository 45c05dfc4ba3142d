"""`kube-netlab control up`: the control plane of a cluster across machines.

It starts etcd when asked to listen (or uses the one at --store), then writes what
kubeadm init and flannel's setup would: the network config at <prefix>/config, the
cluster's settings (the lab document without nodes) and the system objects (the
kubernetes and kube-dns Services, addresses allocated). The DNS pod is scheduled like
any pod once nodes join (until then it would be Pending, as in Kubernetes).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from ipaddress import IPv4Interface
from urllib.parse import urlsplit

from .. import state
from ..model import Lab
from ..model.lab import API_VERSION, KIND
from ..store import Store, StoreError, open_store
from ..store.subnets import NetworkConfig, set_network_config
from .etcd_server import CLIENT_PORT, PEER_PORT, EtcdServer

ETCD_DATA_DIR = "/var/lib/netlab/etcd"
DEFAULT_CLUSTER = "cluster"
DESIRED_LOCK = state.LOCKS + "desired"
# a stand-in node, only to validate the settings (Lab needs a node); never stored
_PLACEHOLDER = {"name": "placeholder"}


class ClusterError(RuntimeError):
    """A user-facing failure of control up / node join / node leave."""


def cluster_doc(name: str = DEFAULT_CLUSTER, *, proxy_mode: str = "iptables", nftables_layout: str = "kube-proxy",
                underlay_cidr: str | None = None, pod_cidr: str | None = None, mtu: int | None = None) -> dict:
    """The cluster's lab document without nodes: the defaults everyone knows, no external host."""
    spec: dict = {"nodes": [], "proxyMode": proxy_mode, "nftables": {"layout": nftables_layout}, "external": False}
    if underlay_cidr or mtu:
        spec["underlay"] = {k: v for k, v in (("cidr", underlay_cidr), ("mtu", mtu)) if v}
    if pod_cidr:
        spec["podCIDR"] = pod_cidr
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


def lab_of(doc: dict, nodes: list[dict], manifests: list | None = None) -> Lab:
    """The lab with these nodes (ModelError names the field when something is off)."""
    spec = dict(doc["spec"], nodes=nodes)
    if manifests is not None:
        spec["manifests"] = manifests
    return Lab.from_dict(dict(doc, spec=spec), source="control up")


def network_config(lab: Lab) -> NetworkConfig:
    return NetworkConfig.make(lab.pod_cidr, subnet_len=lab.subnet_len,
                              backend={"Type": "vxlan", "VNI": lab.vxlan.vni, "Port": lab.vxlan.port})


def _listen_network(ip: str) -> str | None:
    """The network of the interface holding ip (the cluster's underlay), if it is local."""
    from .host import _addresses
    for _, addr, _, _ in _addresses():
        if str(addr.ip) == ip:
            return str(addr.network)
    return None


def start_etcd(listen: str, *, data_dir: str = ETCD_DATA_DIR, port: int = CLIENT_PORT,
               peer_port: int = PEER_PORT) -> EtcdServer:
    """Our etcd on listen:port, unless one answers there already (re-running converges)."""
    server = EtcdServer(data_dir, host=listen, client_port=port, peer_port=peer_port, name="netlab-control",
                        log_path=data_dir.rstrip("/") + ".log")
    if not server.healthy():
        server.start()
    return server


def control_up(store_url: str | None, *, listen: str | None = None, name: str = DEFAULT_CLUSTER,
               proxy_mode: str = "iptables", nftables_layout: str = "kube-proxy", underlay_cidr: str | None = None,
               pod_cidr: str | None = None, etcd_data_dir: str = ETCD_DATA_DIR) -> tuple[Lab, str]:
    """Start (or use) etcd, write the cluster's config and system objects. Returns the
    cluster (a Lab without nodes) and the store URL nodes join with."""
    if not store_url and not listen:
        raise ClusterError("give --store etcd://IP:2379 (an etcd to use) or --listen IP (start one here)")
    if listen:
        host = urlsplit(store_url).hostname if store_url else listen
        if host != listen:
            raise ClusterError(f"--listen {listen} and --store {store_url} name different hosts; "
                               f"the etcd started here listens on {listen}, so use --store etcd://{listen}:2379")
        port = (urlsplit(store_url).port if store_url else None) or CLIENT_PORT
        start_etcd(listen, data_dir=etcd_data_dir, port=port)
        store_url = store_url or f"etcd://{listen}:{port}"
        underlay_cidr = underlay_cidr or _listen_network(listen)
    doc = cluster_doc(name, proxy_mode=proxy_mode, nftables_layout=nftables_layout, underlay_cidr=underlay_cidr,
                      pod_cidr=pod_cidr)
    probe = lab_of(doc, [dict(_PLACEHOLDER, underlayIP=str(next(IPv4Interface(
        underlay_cidr or "192.168.56.0/24").network.hosts())))])  # ModelError before anything is written
    lab = replace(probe, nodes=())
    store = _open(store_url)
    try:
        lab_state = state.LabState(store)
        old = lab_state.cluster_doc()
        if old is not None and old["metadata"]["name"] != name:
            raise ClusterError(f"the store {store_url} already holds cluster {old['metadata']['name']!r}; "
                               f"use --lab {old['metadata']['name']}, or another store prefix (etcd://IP:2379/NAME)")
        set_network_config(store, network_config(lab))
        lab_state.put_cluster_doc(doc)
        with desired_lock(store, "control up"):
            existing = lab_state.services()
            for svc in lab.allocated_services(existing):
                lab_state.put_service(svc)
    finally:
        store.close()
    return lab, store_url


def _open(store_url: str) -> Store:
    try:
        store = open_store(store_url)
        store.revision()  # reachable?
        return store
    except StoreError as e:
        raise ClusterError(str(e)) from None


@contextlib.contextmanager
def desired_lock(store: Store, who: str, *, ttl: float = 30.0, timeout: float = 60.0):
    """One writer of the desired state at a time across machines (joins racing to add
    themselves to the lab document): a create-if-absent key with a TTL, so a writer that
    dies releases it by expiring."""
    deadline = time.monotonic() + timeout
    holder = f"{who} pid {os.getpid()}"
    while True:
        revision = store.create(DESIRED_LOCK, holder, ttl=ttl)
        if revision:
            break
        if time.monotonic() > deadline:
            kv = store.get(DESIRED_LOCK)
            raise ClusterError(f"the desired state stayed locked for {timeout:.0f}s by {kv.value if kv else '?'}; "
                               f"try again (the lock expires {ttl:.0f}s after its holder stops)")
        time.sleep(0.1)
    try:
        yield
    finally:
        try:
            store.delete(DESIRED_LOCK, revision)
        except StoreError:
            pass  # it expires

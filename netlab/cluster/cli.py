"""The multi-machine commands of kube-netlab (control up, node join/leave).

    kube-netlab control up --store etcd://IP:2379 [--listen IP] [--proxy-mode MODE]
    kube-netlab node join --store etcd://IP:2379 --name NAME [--iface IFACE | --public-ip IP]
    kube-netlab node leave [--name NAME]

--store defaults to $NETLAB_STORE, as for get/apply/delete/exec/status.
"""
from __future__ import annotations

import os
import sys

from ..model import ModelError


def cmd_control_up(a) -> int:
    from .control import control_up
    lab, url = control_up(a.store, listen=a.listen, name=a.lab or "cluster", proxy_mode=a.proxy_mode,
                          nftables_layout=a.nftables_layout, underlay_cidr=a.underlay_cidr, pod_cidr=a.pod_cidr)
    print(f"cluster {lab.name} is up in {url}: pods on {lab.pod_cidr} over VXLAN {lab.vxlan.device} "
          f"(UDP {lab.vxlan.port}), Services on {lab.service_cidr}, proxy {lab.proxy_mode}, DNS {lab.dns_ip}")
    print(f"join each machine with: kube-netlab node join --store {url} --name NAME [--iface IFACE]")
    return 0


def cmd_node_join(a) -> int:
    from .node import join
    if not a.store:
        print("kube-netlab: node join needs --store etcd://IP:2379 (or NETLAB_STORE)", file=sys.stderr)
        return 2
    st, record = join(a.store, a.name, iface=a.iface, public_ip=a.public_ip, timeout=a.timeout,
                      lease_ttl=a.lease_ttl)
    print(f"node {a.name} is Ready: podCIDR {st.pod_cidr}, VTEP {st.vtep_mac} on {record.iface} {record.public_ip}, "
          f"{len(st.peers)} peers")
    return 0


def cmd_node_leave(a) -> int:
    from .node import leave
    leave(a.name, store_url=a.store)
    return 0


def _run(func):
    """Errors users can fix print one line and exit 1 (bad input: 2)."""
    def run(a) -> int:
        from ..store import StoreError
        from .control import ClusterError
        if os.geteuid() != 0:
            print("kube-netlab: run as root (a node's agent changes this host's network)", file=sys.stderr)
            return 1
        try:
            return func(a)
        except ModelError as e:
            print(f"kube-netlab: {e}", file=sys.stderr)
            return 2
        except (ClusterError, StoreError) as e:
            print(f"kube-netlab: {e}", file=sys.stderr)
            return 1
    return run


def register(sub, lab_opt) -> None:
    """Add this group's subcommands to kube-netlab's parser (sub: argparse subparsers;
    lab_opt(sp) adds --lab). Each subcommand's func takes the parsed args, returns the exit code."""
    store_default = os.environ.get("NETLAB_STORE") or None
    store_help = "the cluster's etcd, etcd://IP:2379[/PREFIX] (default: $NETLAB_STORE)"

    control = sub.add_parser("control", help="the control plane of a cluster across machines (etcd)")
    csub = control.add_subparsers(dest="control_cmd", required=True)
    sp = csub.add_parser("up", help="start (or use) etcd; write the cluster config and system objects")
    sp.add_argument("--store", default=store_default, help=store_help)
    sp.add_argument("--listen", metavar="IP", help="start etcd here, listening on IP:2379 (data in /var/lib/netlab/etcd)")
    sp.add_argument("--lab", "-l", help="the cluster's name (default: cluster)")
    sp.add_argument("--proxy-mode", default="iptables", choices=["iptables", "nftables", "ipvs"])
    sp.add_argument("--nftables-layout", default="kube-proxy")
    sp.add_argument("--underlay-cidr", help="the nodes' network (default: --listen's, else 192.168.56.0/24)")
    sp.add_argument("--pod-cidr", help="default 10.244.0.0/16")
    sp.set_defaults(func=_run(cmd_control_up))

    node = sub.add_parser("node", help="this machine as a node of a cluster (join, leave)")
    nsub = node.add_subparsers(dest="node_cmd", required=True)
    sp = nsub.add_parser("join", help="run a node agent in this host's own network namespace")
    sp.add_argument("--store", default=store_default, help=store_help)
    sp.add_argument("--name", required=True, help="the node's name, e.g. node-b")
    which = sp.add_mutually_exclusive_group()
    which.add_argument("--iface", help="the underlay interface (flanneld's --iface)")
    which.add_argument("--public-ip", help="the underlay address (flanneld's --public-ip)")
    sp.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the node to be Ready")
    sp.add_argument("--lease-ttl", type=float, help="seconds the subnet lease lasts unless renewed (default 24 h)")
    sp.set_defaults(func=_run(cmd_node_join))

    sp = nsub.add_parser("leave", help="remove everything this node made, and nothing else")
    sp.add_argument("--name", help="the node (default: the one joined from this machine)")
    sp.add_argument("--store", default=store_default, help="default: the store it joined")
    sp.set_defaults(func=_run(cmd_node_leave))

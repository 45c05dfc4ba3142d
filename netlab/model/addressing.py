"""Address arithmetic the layers above share: candidate node subnets, the
addresses flannel and the bridge plugin use inside one, Service IPs.

The model does not assign node subnets: agents lease them from the store by
compare-and-swap, like flanneld. These helpers say what may be leased.
"""
from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network
from typing import Iterator

VXLAN_OVERHEAD = 50   # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8, as flannel subtracts


def _net(cidr: str | IPv4Network) -> IPv4Network:
    return cidr if isinstance(cidr, IPv4Network) else IPv4Network(cidr)


def default_subnet_len(pod_cidr: str | IPv4Network) -> int:
    """flannel's SubnetLen default: 24, or the network's length + 2 when the
    network is smaller than a /22."""
    plen = _net(pod_cidr).prefixlen
    return 24 if plen <= 22 else plen + 2


def node_subnets(pod_cidr: str | IPv4Network, subnet_len: int = 24) -> Iterator[IPv4Network]:
    """The subnets a node may lease, in lease order: flannel's SubnetMin (the
    second subnet: the first would put a node's VTEP on the network address)
    through SubnetMax (the last)."""
    subnets = _net(pod_cidr).subnets(new_prefix=subnet_len)
    next(subnets, None)
    return subnets


def node_subnet_count(pod_cidr: str | IPv4Network, subnet_len: int = 24) -> int:
    """How many nodes the pod CIDR can hold (every subnet but the first)."""
    return 2 ** (subnet_len - _net(pod_cidr).prefixlen) - 1


def vtep_address(subnet: str | IPv4Network) -> IPv4Address:
    """The /32 flannel puts on flannel.<vni> and peers route via: the subnet's
    network address (10.244.1.0 for 10.244.1.0/24)."""
    return _net(subnet).network_address


def gateway(subnet: str | IPv4Network) -> IPv4Address:
    """The bridge's address and the pods' default gateway: the first host
    address (10.244.1.1), what FLANNEL_SUBNET names."""
    return _net(subnet).network_address + 1


def pod_range(subnet: str | IPv4Network) -> tuple[IPv4Address, IPv4Address]:
    """First and last pod address (host-local's rangeStart/rangeEnd): after
    the gateway, before the broadcast address."""
    net = _net(subnet)
    return net.network_address + 2, net.broadcast_address - 1


def pods_per_node(subnet_len: int = 24) -> int:
    """Pod addresses in one node subnet: all but network, gateway, broadcast."""
    return 2 ** (32 - subnet_len) - 3


def flannel_subnet(subnet: str | IPv4Network) -> str:
    """FLANNEL_SUBNET as flannel writes it in subnet.env: gateway/len."""
    net = _net(subnet)
    return f"{gateway(net)}/{net.prefixlen}"


def subnet_key(subnet: str | IPv4Network) -> str:
    """flannel's etcd key for a lease: 10.244.1.0-24."""
    net = _net(subnet)
    return f"{net.network_address}-{net.prefixlen}"


def overlay_mtu(underlay_mtu: int) -> int:
    """MTU of flannel.<vni>, cni0 and pods: underlay MTU minus the VXLAN overhead."""
    return underlay_mtu - VXLAN_OVERHEAD


def kubernetes_service_ip(service_cidr: str | IPv4Network) -> IPv4Address:
    """The `kubernetes` Service's ClusterIP: the first address (10.96.0.1)."""
    return _net(service_cidr).network_address + 1


def default_dns_ip(service_cidr: str | IPv4Network) -> IPv4Address:
    """kubeadm's cluster DNS address: the tenth address (10.96.0.10)."""
    return _net(service_cidr).network_address + 10


def nth_host(cidr: str | IPv4Network, n: int) -> IPv4Address:
    """network address + n (n=11 gives 192.168.56.11)."""
    return _net(cidr).network_address + n


def is_host_address(cidr: str | IPv4Network, ip: str | IPv4Address) -> bool:
    """Inside the network and neither its network nor broadcast address."""
    net = _net(cidr)
    addr = ipaddress.IPv4Address(ip)
    return addr in net and addr not in (net.network_address, net.broadcast_address)

"""kube-proxy's nftables chain and set names (pkg/proxy/nftables/proxier.go:
servicePortChainNameBase, servicePortEndpointChainNameBase, hashAndTruncate).

A name is a prefix plus base32(sha256(name))[:8] + "-" + the readable name,
e.g. service-ULMVA6XW-ns1/svc1/tcp/p80: the hash keeps names unique and tells
apart chains that differ in one digit; the readable part lets a student find
the Service in `nft list table ip kube-proxy`.
"""
from __future__ import annotations

import base64
import hashlib

from ..types import Endpoint, ServicePort, ServicePortName

NAME_LENGTH_MAX = 256                  # NFT_NAME_MAXLEN
CHAIN_NAME_PREFIX_LENGTH_MAX = 16      # kube-proxy keeps room for its longest prefix
CHAIN_NAME_BASE_LENGTH_MAX = NAME_LENGTH_MAX - CHAIN_NAME_PREFIX_LENGTH_MAX

CLUSTER_PREFIX = "service-"      # endpoints for the Cluster traffic policy
LOCAL_PREFIX = "local-"          # endpoints for the Local traffic policy
EXTERNAL_PREFIX = "external-"    # NodePort and externalIP traffic
ENDPOINT_PREFIX = "endpoint-"    # one endpoint: hairpin masquerade, affinity, DNAT
AFFINITY_PREFIX = "affinity-"    # the ClientIP affinity set of one endpoint


def hash_and_truncate(name: str) -> str:
    encoded = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    name = f"{encoded[:8]}-{name}"
    if len(name) > CHAIN_NAME_BASE_LENGTH_MAX:
        name = name[:CHAIN_NAME_BASE_LENGTH_MAX - 3] + "..."
    return name


def service_port_chain_base(name: ServicePortName, protocol: str) -> str:
    """"HASH-namespace/service/protocol/portName", e.g. "ULMVA6XW-ns1/svc1/tcp/p80"."""
    return hash_and_truncate(f"{name.namespace}/{name.name}/{protocol.lower()}/{name.port}")


def endpoint_chain_base(name: ServicePortName, protocol: str, endpoint: Endpoint) -> str:
    """"HASH-namespace/service/protocol/portName__IP/port" (":" of IPv6 as ".")."""
    ip = endpoint.ip.replace(":", ".")
    return hash_and_truncate(f"{name.namespace}/{name.name}/{protocol.lower()}/{name.port}__{ip}/{endpoint.port}")


def cluster_chain(svc: ServicePort) -> str:
    return CLUSTER_PREFIX + service_port_chain_base(svc.name, svc.proto)


def local_chain(svc: ServicePort) -> str:
    return LOCAL_PREFIX + service_port_chain_base(svc.name, svc.proto)


def external_chain(svc: ServicePort) -> str:
    return EXTERNAL_PREFIX + service_port_chain_base(svc.name, svc.proto)


def endpoint_chain(svc: ServicePort, endpoint: Endpoint) -> str:
    return ENDPOINT_PREFIX + endpoint_chain_base(svc.name, svc.proto, endpoint)


def affinity_set(svc: ServicePort, endpoint: Endpoint) -> str:
    return AFFINITY_PREFIX + endpoint_chain_base(svc.name, svc.proto, endpoint)

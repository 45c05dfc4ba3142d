"""kube-proxy's iptables names: chain constants and the hash-named per-service
and per-endpoint chains (K/K pkg/proxy/iptables/proxier.go). Pure functions;
tests pin them to kube-proxy's own fixtures, so a student's `iptables-save`
reads like a real node's."""
from __future__ import annotations

import base64
import functools
import hashlib

from proxy.types import Endpoint, ServicePortName

# dispatch and helper chains (nat and filter)
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY"

SVC_PREFIX = "KUBE-SVC-"      # Cluster traffic policy: all usable endpoints
SVL_PREFIX = "KUBE-SVL-"      # Local traffic policy: this node's endpoints
EXT_PREFIX = "KUBE-EXT-"      # NodePort / externalIP traffic, before its policy chain
FW_PREFIX = "KUBE-FW-"        # loadBalancerSourceRanges (no load balancers here; kept for cleanup)
SEP_PREFIX = "KUBE-SEP-"      # one endpoint: hairpin masquerade + DNAT
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX)

# kube-proxy drops per-rule comments above this many endpoints ("large cluster mode")
LARGE_CLUSTER_ENDPOINTS = 1000


@functools.lru_cache(maxsize=65536)
def _hash16(text: str) -> str:
    # base32 encodes 5-byte groups independently: the first 10 bytes give exactly the
    # first 16 characters of kube-proxy's base32(sha256)[:16], at a third of the cost
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode()


def port_proto_hash(service_port_name: str | ServicePortName, protocol: str) -> str:
    """kube-proxy's portProtoHash: base32(sha256(name + protocol))[:16]; protocol lower case."""
    return _hash16(f"{service_port_name}{protocol.lower()}")


def service_chain(name: str | ServicePortName, protocol: str) -> str:
    return SVC_PREFIX + port_proto_hash(name, protocol)


def local_chain(name: str | ServicePortName, protocol: str) -> str:
    return SVL_PREFIX + port_proto_hash(name, protocol)


def external_chain(name: str | ServicePortName, protocol: str) -> str:
    return EXT_PREFIX + port_proto_hash(name, protocol)


def endpoint_chain(name: str | ServicePortName, protocol: str, endpoint: str | Endpoint) -> str:
    """KUBE-SEP-: base32(sha256(name + protocol + "ip:port"))[:16]."""
    return SEP_PREFIX + _hash16(f"{name}{protocol.lower()}{endpoint}")


def is_service_chain(chain: str) -> bool:
    """A per-service or per-endpoint chain, i.e. one a sync may delete when stale."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


@functools.lru_cache(maxsize=4096)
def probability(n: int) -> str:
    """computeProbability: 1/n printed with %0.10f, e.g. 0.3333333333 (restore input)."""
    return f"{1.0 / n:0.10f}"


def saved_probability(restore_value: str) -> str:
    """What `iptables-save` prints back for a restore probability: the kernel keeps
    lround(2^31 * p) and libxt_statistic prints that over 2^31 with %.11f."""
    stored = round(0x80000000 * float(restore_value))
    return f"{stored / 0x80000000:.11f}"

"""kube-proxy's iptables names: chain constants and the hash-named per-service
and per-endpoint chains (K/K pkg/proxy/iptables/proxier.go). Pure functions;
tests pin them to kube-proxy's own fixtures, so a student's `iptables-save`
reads like a real node's."""
from __future__ import annotations

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


_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE32_PAIRS = tuple(a + b for a in _BASE32 for b in _BASE32)   # 10 bits -> their two base32 characters


def _hash16(text: str) -> str:
    # kube-proxy's base32(sha256)[:16] is the first 80 bits, 5 to a character; two
    # characters per table look-up beat base64.b32encode (pure Python in 3.11) 4x.
    # Callers keep the result (RenderCache), as kube-proxy keeps its chain names.
    v = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    p = _BASE32_PAIRS
    return (p[v >> 70] + p[(v >> 60) & 1023] + p[(v >> 50) & 1023] + p[(v >> 40) & 1023]
            + p[(v >> 30) & 1023] + p[(v >> 20) & 1023] + p[(v >> 10) & 1023] + p[v & 1023])


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

"""kube-proxy's IPVS mode: `IpvsProxier(node, netns=...)`; what it computes is in plan."""
from .proxier import IpvsProxier

__all__ = ["IpvsProxier"]

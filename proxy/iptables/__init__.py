"""kube-proxy's iptables mode: names.py (chain names and hashes), render.py (the
restore text of a sync), backend.py (nft or legacy, and running the tools),
proxier.py (IptablesProxier: sync and cleanup)."""
from .proxier import IptablesProxier

__all__ = ["IptablesProxier"]

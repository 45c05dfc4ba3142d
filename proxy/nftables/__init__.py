"""kube-proxy's nftables mode in two layouts ("kube-proxy" and "maps"); see render.py."""
from .names import affinity_set, cluster_chain, endpoint_chain, external_chain, local_chain
from .proxier import NftablesProxier, NftError
from .render import DEFAULT_LAYOUT, LAYOUTS, TABLE, Piece, check_layout, render_piece
from .table import Written, full_sync, render_full, render_pieces

__all__ = ["NftablesProxier", "NftError", "LAYOUTS", "DEFAULT_LAYOUT", "TABLE", "render_full", "full_sync",
           "render_piece", "render_pieces", "Piece", "Written", "check_layout", "cluster_chain",
           "local_chain", "external_chain", "endpoint_chain", "affinity_set"]

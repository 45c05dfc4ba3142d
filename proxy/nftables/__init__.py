"""kube-proxy's nftables mode in two layouts ("kube-proxy" and "maps"); see render.py."""
from .names import affinity_set, cluster_chain, endpoint_chain, external_chain, local_chain
from .proxier import NftablesProxier, NftError
from .render import (DEFAULT_LAYOUT, LAYOUTS, TABLE, Piece, Written, check_layout, render_full,
                     render_piece, render_pieces)

__all__ = ["NftablesProxier", "NftError", "LAYOUTS", "DEFAULT_LAYOUT", "TABLE", "render_full",
           "render_piece", "render_pieces", "Piece", "Written", "check_layout", "cluster_chain",
           "local_chain", "external_chain", "endpoint_chain", "affinity_set"]

"""kube-netlab's CNI plugins: netlab-bridge (main) and netlab-ipam (host-local compatible).

This package stands alone and imports only the standard library at module
level, so an exec'd plugin starts fast; pyroute2 is imported only by the code
that touches the kernel.
"""

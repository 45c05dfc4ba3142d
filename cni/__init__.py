"""kube-netlab's CNI plugins: netlab-bridge (main) and netlab-ipam (host-local compatible).

This package stands alone and needs only the standard library (netlink through
cni.rtnl), so an exec'd plugin starts fast.
"""

"""IPAM CNI plugins."""

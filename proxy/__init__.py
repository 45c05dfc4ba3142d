"""Service proxy (kube-proxy equivalent) and cluster DNS."""

"""Clusters across real machines: the control plane (etcd) and nodes joining it
in their host's own network namespace (the Vagrant lab)."""

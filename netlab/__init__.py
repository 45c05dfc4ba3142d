"""kube-netlab: real Kubernetes node networking on Linux, without Kubernetes."""

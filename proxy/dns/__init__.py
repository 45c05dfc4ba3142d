"""The cluster DNS (the CoreDNS role): Kubernetes DNS specification 1.1.0 records
for the lab's Services and endpoints, learned by watching the store."""

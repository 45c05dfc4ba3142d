"""Packet-level debugging of a lab: capture, trace, explain, logs, events, graph.

scapy is imported only by the commands that need it (never on the CNI plugin's
path, nor by `kube-netlab get`)."""

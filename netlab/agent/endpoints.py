"""The endpoints controller: publishes this node's EndpointSlices.

Each agent owns the slices of its own pods (netlab.model.endpoints.node_slices), so a
pod's readiness reaches the slices within one sync of the agent that sees it, with no
central endpointslice controller. Watches /netlab/services/ (every Service) and the pod
statuses of this node: a pod whose process dies (not ready), that finishes or that is
deleted changes its status key, and the slices follow.
"""
from __future__ import annotations

from ..model.endpoints import node_slices
from ..state import POD_STATUS, SERVICES, PodStatus, event_records
from .controller import Controller


class EndpointsController(Controller):
    name = "endpoints"
    prefixes = (SERVICES, POD_STATUS)
    condition = "EndpointsFailing"

    def wants(self, event) -> bool:
        if event.key.startswith(SERVICES):
            return True
        return any(isinstance(st, PodStatus) and st.node == self.node.name for st in event_records(event))

    def sync(self, full: bool) -> None:
        node = self.node.name
        statuses = self.state.pod_statuses()
        pods = [(pod, statuses[key]) for key, pod in self.state.pods().items()
                if pod.node_name == node and key in statuses and statuses[key].node == node]
        produced = set()
        for svc in self.state.services().values():
            for s in node_slices(svc, pods, node):
                self.state.put_endpoint_slice(s)  # written only when different
                produced.add((s.namespace, s.service, s.name))
        for s in self.state.endpoint_slices():
            if s.node == node and (s.namespace, s.service, s.name) not in produced:
                self.state.delete_endpoint_slice(s)

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
    component = "endpointslice-controller"
    # each sync reads every pod of the node: a Deployment coming up is one sync per half second,
    # not one per pod (the proxy programs them at most once a second anyway)
    min_interval = 0.5

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
        before = {(s.namespace, s.service, s.name): s for s in self.state.endpoint_slices() if s.node == node}
        for svc in self.state.services().values():
            for s in node_slices(svc, pods, node):
                if self.state.put_endpoint_slice(s):  # written only when different
                    self._record_changes(before.get((s.namespace, s.service, s.name)), s)
                produced.add((s.namespace, s.service, s.name))
        for key, s in before.items():
            if key not in produced:
                self.state.delete_endpoint_slice(s)
                self._record_changes(s, None)

    def _record_changes(self, old, new) -> None:
        """EndpointAdded / EndpointRemoved on the Service, for each ready address that came or went."""
        def ready(s):
            return {e.address: e for e in s.endpoints if e.ready} if s is not None else {}
        was, now = ready(old), ready(new)
        s = new or old
        for ip in sorted(now.keys() - was.keys()):
            self.record_event("Service", s.namespace, s.service, "EndpointAdded",
                              f"{ip} (pod {now[ip].pod}) ready in EndpointSlice {s.name}")
        for ip in sorted(was.keys() - now.keys()):
            gone = "removed from" if new is None or all(e.address != ip for e in new.endpoints) else "not ready in"
            self.record_event("Service", s.namespace, s.service, "EndpointRemoved",
                              f"{ip} (pod {was[ip].pod}) {gone} EndpointSlice {s.name}")

"""The agents' events without the kernel: controllers over a real store in tmp_path
record what they did (endpoints added and removed, a sync that failed)."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest

from netlab.agent import Agent, Controller
from netlab.agent.endpoints import EndpointsController
from netlab.model import load_lab
from netlab.model.workloads import Service, ServicePort
from netlab.state import ContainerStatus, LabPaths, LabState, PodStatus
from netlab.store import SQLiteStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWO_NODE = os.path.join(ROOT, "topologies", "two-node.yaml")


@pytest.fixture
def state(tmp_path, clock):
    store = SQLiteStore(tmp_path / "state.db", clock=clock)
    st = LabState(store)
    lab = load_lab(TWO_NODE, name="unit")
    st.put_lab(lab)
    for pod in lab.scheduled_pods({}):
        st.put_pod(pod)
    yield st
    store.close()


def agent_with(state, tmp_path, clock, factory):
    return Agent("unit", "node-a", LabPaths("unit", root=str(tmp_path)), store=state.store, clock=clock,
                 controllers=lambda a: [factory(a)])


def reasons(state, namespace=None):
    return [(e.reason, e.kind, e.object_name, e.message) for e in state.events(namespace)]


def test_endpoints_added_and_removed_are_events_on_the_service(state, tmp_path, clock):
    ctl = agent_with(state, tmp_path, clock, EndpointsController).controllers[0]
    state.put_service(Service("echo", (ServicePort(80, "http", name="http"),), selector={"app": "echo"}))
    mine = sorted(k for k, p in state.pods().items() if p.node_name == "node-a")
    for i, key in enumerate(mine):
        state.put_pod_status(key, PodStatus("node-a", "ns", "Running", f"10.244.1.{i + 2}",
                                            containers=(ContainerStatus("echo", 10 + i, "running"),)))
    ctl.sync(True)
    pod0, pod1 = (k.split("/")[1] for k in mine)
    assert reasons(state) == [
        ("EndpointAdded", "Service", "echo", f"10.244.1.2 (pod {pod0}) ready in EndpointSlice echo-node-a"),
        ("EndpointAdded", "Service", "echo", f"10.244.1.3 (pod {pod1}) ready in EndpointSlice echo-node-a")]
    ev = state.events()[0]
    assert (ev.component, ev.host, ev.type) == ("endpointslice-controller", "node-a", "Normal")

    clock.now += 1
    dead = state.pod_status(mine[0])
    state.put_pod_status(mine[0], replace(dead, containers=(ContainerStatus("echo", None, "waiting", -9),)))
    ctl.sync(False)
    clock.now += 1
    state.delete_pod_status(mine[1])
    ctl.sync(False)
    assert reasons(state)[2:] == [
        ("EndpointRemoved", "Service", "echo", f"10.244.1.2 (pod {pod0}) not ready in EndpointSlice echo-node-a"),
        ("EndpointRemoved", "Service", "echo", f"10.244.1.3 (pod {pod1}) removed from EndpointSlice echo-node-a")]


def test_a_failed_sync_is_a_warning_on_the_node(state, tmp_path, clock):
    class Broken(Controller):
        name, component = "proxy", "kube-proxy"

        def sync(self, full):
            raise RuntimeError("iptables-restore: line 3 failed")

    agent = agent_with(state, tmp_path, clock, Broken)
    assert agent.sync_controller(agent.controllers[0], True) is False
    (ev,) = state.events("default")
    assert (ev.type, ev.reason, ev.kind, ev.object_name, ev.component) == \
        ("Warning", "SyncFailed", "Node", "node-a", "kube-proxy")
    assert ev.message == "proxy: RuntimeError: iptables-restore: line 3 failed"
    agent.sync_controller(agent.controllers[0], True)   # the same failure again: counted
    assert [e.count for e in state.events("default")] == [2]

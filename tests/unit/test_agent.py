"""The agent's controllers without the kernel: a real store in tmp_path, a fake clock,
controllers whose kernel side is replaced by a recording runtime where needed."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest

from netlab.agent import Agent, Controller, Watcher
from netlab.agent.endpoints import EndpointsController
from netlab.agent.overlay import LeaseKeeper
from netlab.agent.pods import FAILED_CREATE, PodsController
from netlab.model import load_lab
from netlab.model.workloads import Service, ServicePort
from netlab.pods import Backoff
from netlab.state import ContainerStatus, LabPaths, LabState, PodStatus
from netlab.store import SQLiteStore
from netlab.store.subnets import NetworkConfig, list_leases

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWO_NODE = os.path.join(ROOT, "topologies", "two-node.yaml")


@pytest.fixture
def store(tmp_path, clock):
    s = SQLiteStore(tmp_path / "state.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def lab(store):
    lab = load_lab(TWO_NODE, name="unit")
    state = LabState(store)
    state.put_lab(lab)
    for pod in lab.scheduled_pods({}):
        state.put_pod(pod)
    return lab


class Recording(Controller):
    """Counts its syncs; raises while .broken is set."""

    def __init__(self, agent, name="rec", prefixes=("/netlab/services/",), condition="RecFailing"):
        super().__init__(agent)
        self.name, self.prefixes, self.condition = name, prefixes, condition
        self.syncs, self.broken = [], None

    def sync(self, full):
        if self.broken:
            raise RuntimeError(self.broken)
        self.syncs.append(full)


def agent_with(store, tmp_path, clock, *factories):
    return Agent("unit", "node-a", LabPaths("unit", root=str(tmp_path)), store=store, clock=clock,
                 controllers=lambda a: [f(a) for f in factories])


# --- watching ----------------------------------------------------------------------------

def test_an_unrelated_key_does_not_wake_a_controller(store, lab, tmp_path, clock):
    agent = agent_with(store, tmp_path, clock, Recording)
    rec = agent.controllers[0]
    watcher = Watcher(store, agent.controllers)
    store.put("/netlab/status/nodes/node-b", "{}")
    store.put("/coreos.com/network/subnets/10.244.9.0-24", '{"PublicIP":"192.168.56.99"}')
    assert watcher.step() == [] and not rec.runner.pending
    LabState(store).put_service(Service("web", (ServicePort(80, 8080),), selector={"app": "web"}))
    assert watcher.step() == [rec] and rec.runner.pending


def test_pods_controller_wants_only_its_own_nodes_pods(store, lab, tmp_path, clock):
    agent = agent_with(store, tmp_path, clock, PodsController, EndpointsController)
    pods_ctl, eps_ctl = agent.controllers
    state = LabState(store)
    watcher = Watcher(store, agent.controllers)
    pod_b = next(p for p in state.pods().values() if p.node_name == "node-b")
    state.put_pod(replace(pod_b, labels={**pod_b.labels, "extra": "1"}))
    state.put_pod_status(pod_b.key, PodStatus("node-b", "x", "Running"))
    assert watcher.step() == []
    moved = pod_b.bind("node-a")           # rescheduled here: concerns node-a
    state.put_pod(moved)
    assert watcher.step() == [pods_ctl]
    state.put_pod(moved.bind("node-b"))    # and away again: it was ours, still concerns us
    assert watcher.step() == [pods_ctl]
    state.put_pod_status("default/x", PodStatus("node-a", "x", "Running"))
    assert watcher.step() == [eps_ctl]
    state.delete_pod_status("default/x")   # a DELETE: the previous record says whose it was
    assert watcher.step() == [eps_ctl]


# --- the lease ---------------------------------------------------------------------------

def keeper(store, clock, ttl=10.0):
    return LeaseKeeper(store, "192.168.56.11", {"VtepMAC": "aa:bb:cc:dd:ee:01"},
                       config=NetworkConfig.make("10.244.0.0/16"), prefer="10.244.1.0/24", ttl=ttl, clock=clock)


def test_a_lease_not_renewed_expires(store, clock):
    k = keeper(store, clock)
    k.acquire()
    clock.now += 10.5
    assert list_leases(store) == []


def test_the_keeper_renews_before_the_ttl_ends_and_the_lease_stays(store, clock):
    k = keeper(store, clock)
    first = k.acquire()
    clock.now += 5
    assert k.keep() == first                      # half the TTL left: nothing to do
    for _ in range(5):                            # five TTLs, renewed each time less than 1/24 is left
        clock.now = k.renew_at() + 0.01
        k.keep()
        assert k.lease.expiration == pytest.approx(clock.now + 10.0)
    clock.now += 5
    assert [str(l.subnet) for l in list_leases(store)] == ["10.244.1.0/24"]


def test_a_lost_lease_is_acquired_again_with_the_same_subnet(store, clock):
    k = keeper(store, clock)
    k.acquire()
    clock.now += 30                               # the agent was stopped longer than the TTL
    assert str(k.keep().subnet) == "10.244.1.0/24"
    assert [str(l.subnet) for l in list_leases(store)] == ["10.244.1.0/24"]


def test_a_lease_without_ttl_is_kept_without_rewriting_it(store, clock):
    k = keeper(store, clock, ttl=None)
    first = k.acquire()
    clock.now += 1e6
    assert k.keep().mod_revision == first.mod_revision and k.renew_at() is None


# --- conditions --------------------------------------------------------------------------

def test_a_failing_sync_sets_the_node_condition_and_clears_when_fixed(store, lab, tmp_path, clock):
    agent = agent_with(store, tmp_path, clock, Recording)
    rec = agent.controllers[0]
    agent.started = True
    assert agent.sync_controller(rec, True)
    agent.report_node()
    st = LabState(store).node_status("node-a")
    assert st.ready and st.condition("RecFailing").status is False

    rec.broken = "iptables-restore: line 3 failed"
    clock.now += 1
    assert not agent.sync_controller(rec, False)
    st = LabState(store).node_status("node-a")
    cond = st.condition("RecFailing")
    assert not st.ready and cond.status is True and "line 3 failed" in cond.message and cond.since == clock.now
    assert st.condition("Ready").status is False and "rec: RuntimeError" in st.message
    assert rec.runner.step() > 0 and rec.syncs == [True]   # a full retry is scheduled, not run at once

    rec.broken = None
    clock.now += 1
    assert agent.sync_controller(rec, False)
    st = LabState(store).node_status("node-a")
    assert st.ready and st.condition("RecFailing").status is False and st.message == ""


# --- pods: creation retried with backoff -------------------------------------------------

class FakeRuntime:
    """The pod runtime's interface, failing the first `fail` creations of each pod."""

    def __init__(self, fail=0):
        self.fail, self.created, self.deleted, self.tries = fail, {}, [], {}

    def create(self, pod, adopt=None):
        self.tries[pod.key] = self.tries.get(pod.key, 0) + 1
        if self.tries[pod.key] <= self.fail:
            raise RuntimeError("netlab-ipam: no free address in 10.244.1.0/24")
        self.created[pod.key] = pod
        return self.status(pod)

    def status(self, pod):
        return PodStatus("node-a", "ns", "Running", "10.244.1.9", pause_pid=1,
                         containers=(ContainerStatus("c", 2, "running"),))

    def delete(self, ns, name):
        self.deleted.append(f"{ns}/{name}")
        self.created.pop(f"{ns}/{name}", None)

    def delete_many(self, pods):
        for ns, name in pods:
            self.delete(ns, name)

    def supervise(self, pod):
        return False

    def reap(self):
        pass

    def next_restart(self):
        return None

    def exited(self):
        return False


def test_a_pod_whose_creation_failed_is_reported_and_retried_with_backoff(store, lab, tmp_path, clock):
    runtime = FakeRuntime(fail=2)
    agent = agent_with(store, tmp_path, clock,
                       lambda a: PodsController(a, runtime=runtime, create_backoff=Backoff(1.0, 8.0)))
    ctl = agent.controllers[0]
    state = LabState(store)
    mine = sorted(k for k, p in state.pods().items() if p.node_name == "node-a")
    key = mine[0]

    ctl.sync(True)
    st = state.pod_status(key)
    assert (st.phase, st.reason, st.attempts) == ("Pending", FAILED_CREATE, 1) and "no free address" in st.message
    assert key in runtime.deleted                 # what the failed attempt left is cleaned up
    ctl.sync(False)
    assert runtime.tries[key] == 1                # not before the backoff ends
    clock.now += 1.0
    ctl.sync(False)
    st = state.pod_status(key)
    assert runtime.tries[key] == 2 and st.attempts == 2 and st.phase == "Pending"
    clock.now += 1.0
    ctl.sync(False)
    assert runtime.tries[key] == 2                # the second wait is 2 s
    clock.now += 1.0
    ctl.sync(False)
    st = state.pod_status(key)
    assert st.phase == "Running" and st.pod_ip == "10.244.1.9" and st.attempts == 2 and st.reason is None
    assert st.start_time == clock.now and set(runtime.created) == set(mine)


def test_a_deleted_pod_goes_with_its_status(store, lab, tmp_path, clock):
    runtime = FakeRuntime()
    agent = agent_with(store, tmp_path, clock, lambda a: PodsController(a, runtime=runtime))
    state = LabState(store)
    agent.controllers[0].sync(True)
    key = next(iter(runtime.created))
    state.delete_pod(key)
    agent.controllers[0].sync(False)
    assert key not in runtime.created and state.pod_status(key) is None


# --- endpoints ---------------------------------------------------------------------------

def test_endpoint_slices_follow_readiness_and_deletion(store, lab, tmp_path, clock):
    agent = agent_with(store, tmp_path, clock, EndpointsController)
    ctl = agent.controllers[0]
    state = LabState(store)
    state.put_service(Service("echo", (ServicePort(80, "http", name="http"),), selector={"app": "echo"}))
    mine = sorted(k for k, p in state.pods().items() if p.node_name == "node-a")
    for i, key in enumerate(mine):
        state.put_pod_status(key, PodStatus("node-a", "ns", "Running", f"10.244.1.{i + 2}",
                                            containers=(ContainerStatus("echo", 10 + i, "running"),)))
    ctl.sync(True)
    (s,) = state.endpoint_slices("default/echo")
    assert s.name == "echo-node-a" and [e.ready for e in s.endpoints] == [True, True]
    assert [(p.name, p.port) for p in s.ports] == [("http", 8080)]

    dead = state.pod_status(mine[0])
    state.put_pod_status(mine[0], replace(dead, containers=(ContainerStatus("echo", None, "waiting", -9),)))
    ctl.sync(False)
    (s,) = state.endpoint_slices("default/echo")
    assert {e.address: e.ready for e in s.endpoints} == {"10.244.1.2": False, "10.244.1.3": True}

    state.delete_pod_status(mine[1])
    state.delete_pod(mine[1])
    ctl.sync(False)
    (s,) = state.endpoint_slices("default/echo")
    assert [e.address for e in s.endpoints] == ["10.244.1.2"]

    state.delete_pod_status(mine[0])
    ctl.sync(False)
    assert state.endpoint_slices("default/echo") == []   # nothing produced: this node's slice goes

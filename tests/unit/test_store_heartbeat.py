"""Agent liveness through the store (a TTL'd heartbeat key per node, as the kubelet's
Lease), the same on SQLite (fake clock) and etcd (seconds): what the CLI and the engine
ask where no pid file of this machine can answer."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from netlab import engine
from netlab.agent import Agent
from netlab.agent.heartbeat import HeartbeatController
from netlab.cluster.etcd_server import EtcdServer, free_port
from netlab.model import load_lab
from netlab.state import HEARTBEATS, LabPaths, LabState, NodeHeartbeat, write_file
from netlab.store import SQLiteStore, open_store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_heartbeat_says_alive_until_its_ttl_ends(tmp_path, clock):
    store = SQLiteStore(tmp_path / "state.db", clock=clock)
    lab_state, paths = LabState(store), LabPaths("unit", root=str(tmp_path))
    lab_state.put_heartbeat(NodeHeartbeat("node-b", "vm2", 4242, clock.now, duration=40))
    assert lab_state.heartbeat("node-b").pid == 4242
    assert engine.agent_alive(paths, lab_state, "node-b")          # no pid file here: the store answers
    clock.now += 41
    assert lab_state.heartbeat("node-b") is None and lab_state.heartbeats() == {}
    assert not engine.agent_alive(paths, lab_state, "node-b")
    # a pid file of this machine answers first: a dead pid is dead, whatever the store says
    lab_state.put_heartbeat(NodeHeartbeat("node-a", "vm1", 1, clock.now))
    write_file(paths.agent_pid("node-a"), "999999999\n")
    assert not engine.agent_alive(paths, lab_state, "node-a")
    store.close()


def test_the_heartbeat_controller_writes_the_kubelet_lease_shape(tmp_path, clock):
    store = SQLiteStore(tmp_path / "state.db", clock=clock)
    lab = load_lab(os.path.join(ROOT, "topologies", "two-node.yaml"), name="unit")
    LabState(store).put_lab(lab)
    agent = Agent("unit", "node-a", LabPaths("unit", root=str(tmp_path)), store=store, clock=clock,
                  controllers=lambda a: [HeartbeatController(a, ttl=30)])
    agent.controller("heartbeat").sync(True)
    kv = store.get(HEARTBEATS + "node-a")
    assert kv.ttl(clock.now) == pytest.approx(30)
    assert {"holderIdentity": "node-a", "leaseDurationSeconds": 30, "renewTime": clock.now, "pid": os.getpid(),
            "hostMode": False}.items() <= kv.json().items()
    store.close()


def test_a_heartbeat_in_etcd_expires_in_seconds(tmp_path):
    if shutil.which("etcd") is None:
        pytest.skip("no etcd binary (Debian's etcd-server)")
    server = EtcdServer(str(tmp_path / "data"), client_port=free_port(), peer_port=free_port()).start()
    try:
        store = open_store(server.store_url)
        lab_state = LabState(store)
        lab_state.put_heartbeat(NodeHeartbeat("node-b", "vm2", 4242, time.time(), duration=2))
        assert set(lab_state.heartbeats()) == {"node-b"}
        deadline = time.monotonic() + 10
        while lab_state.heartbeat("node-b") is not None:
            assert time.monotonic() < deadline, "a 2 s heartbeat outlived 10 s"
            time.sleep(0.2)
        store.close()
    finally:
        server.destroy()

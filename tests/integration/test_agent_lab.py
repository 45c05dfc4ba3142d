"""The node agents of a real two-node lab (engine.up, real namespaces, VXLAN, processes):
the periodic resync repairs outside interference, containers are restarted and counted,
EndpointSlices follow pod death and deletion."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from conftest import unique_name
from labrun import wait_for
from netlab import engine
from netlab.model.workloads import Service, ServicePort
from netlab.state import LabPaths, LabState
from netlab.store import open_store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWO_NODE = os.path.join(ROOT, "topologies", "two-node.yaml")


@pytest.fixture(scope="module")
def lab():
    name = unique_name("l")
    try:
        engine.up(TWO_NODE, name=name)
        store = open_store(LabPaths(name).store)
        yield name, LabState(store)
        store.close()
    finally:
        engine.down(name)


def node_cmd(lab_name, node, *cmd):
    return subprocess.run(["ip", "netns", "exec", f"{lab_name}-{node}", *cmd], capture_output=True, text=True,
                          timeout=30).stdout


def test_the_periodic_resync_repairs_a_deleted_fdb_entry_and_route(lab):
    name, state = lab
    b = state.node_status("node-b")
    assert b.vtep_mac in node_cmd(name, "node-a", "bridge", "fdb", "show", "dev", "flannel.1")
    subprocess.run(["ip", "-n", f"{name}-node-a", "route", "del", b.pod_cidr], check=True)
    subprocess.run(["ip", "netns", "exec", f"{name}-node-a", "bridge", "fdb", "del", b.vtep_mac, "dev", "flannel.1",
                    "dst", b.underlay_ip], check=True)
    assert b.pod_cidr not in node_cmd(name, "node-a", "ip", "route")
    wait_for("the route back", lambda: b.pod_cidr in node_cmd(name, "node-a", "ip", "route"))
    wait_for("the fdb entry back", lambda: f"{b.vtep_mac} dst {b.underlay_ip}" in node_cmd(
        name, "node-a", "bridge", "fdb", "show", "dev", "flannel.1"))


def test_a_killed_container_is_restarted_and_counted(lab):
    name, state = lab
    key, st = next((k, s) for k, s in sorted(state.pod_statuses().items()) if s.node == "node-b")
    old_pid = st.containers[0].pid
    os.kill(old_pid, signal.SIGKILL)
    st = wait_for("a restarted container", lambda: (s := state.pod_status(key)) and s.containers[0].restart_count == 1
                  and s.containers[0].running and s)
    assert st.containers[0].pid != old_pid and st.phase == "Running" and st.ready
    assert "netlab.workload.echo" in open(f"/proc/{st.containers[0].pid}/cmdline").read()


def test_endpoint_slices_follow_pod_death_and_deletion(lab):
    name, state = lab
    state.put_service(Service("echo", (ServicePort(80, "http", name="http"),), selector={"app": "echo"}))

    def ready_addresses():
        return {e.address for s in state.endpoint_slices("default/echo") for e in s.endpoints if e.ready}

    pods = {k: s for k, s in state.pod_statuses().items() if k.startswith("default/echo-")}
    wait_for("every echo pod in the slices", lambda: ready_addresses() == {s.pod_ip for s in pods.values()})
    slices = state.endpoint_slices("default/echo")
    assert sorted(s.name for s in slices) == ["echo-node-a", "echo-node-b"]

    dying_key, dying = next((k, s) for k, s in sorted(pods.items()) if s.node == "node-a")
    os.kill(dying.containers[0].pid, signal.SIGKILL)    # restartPolicy Always: back after its backoff
    wait_for("the dead pod out of the ready endpoints", lambda: dying.pod_ip not in ready_addresses())
    wait_for("the restarted pod back", lambda: dying.pod_ip in ready_addresses())

    gone_key, gone = next((k, s) for k, s in sorted(pods.items()) if s.node == "node-b")
    state.delete_pod(gone_key)
    wait_for("the deleted pod out of the slices", lambda: gone.pod_ip not in {
        e.address for s in state.endpoint_slices("default/echo") for e in s.endpoints})
    wait_for("its pod status gone", lambda: state.pod_status(gone_key) is None)
    state.delete_service("default/echo")

"""Events: the recorder's records (Kubernetes v1 Event JSON, counted repeats, TTL),
kubectl's table, and `kube-netlab get events` over a store, without root."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading

import pytest

from netlab import state, views
from netlab.events import WARNING, EventRecorder, event_name
from netlab.model import parse_lab
from netlab.store import open_store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = ("apiVersion: netlab.dev/v1alpha1\nkind: Lab\nmetadata: {name: evlab}\n"
       "spec:\n  nodes: [{name: node-a}, {name: node-b}]\n")


@pytest.fixture
def lab_state(tmp_path):
    paths = state.LabPaths("evlab", root=str(tmp_path))
    os.makedirs(paths.dir)
    st = state.LabState(open_store(paths.store))
    st.put_lab(parse_lab(LAB))
    return str(tmp_path), st


def test_an_event_is_a_kubernetes_v1_event(lab_state, clock):
    _, st = lab_state
    rec = EventRecorder(st, "node-a", clock=clock)
    ev = rec.record("kubelet", "Pod", "default", "echo-1", "Started", "Started container echo")
    obj = json.loads(st.store.get(state.event_key("default", ev.name)).value)
    assert obj["apiVersion"] == "v1" and obj["kind"] == "Event"
    assert obj["metadata"] == {"name": event_name("echo-1", int(clock.now * 1e9)), "namespace": "default",
                               "creationTimestamp": "1970-01-12T13:46:40Z"}
    assert obj["involvedObject"] == {"kind": "Pod", "name": "echo-1", "namespace": "default", "apiVersion": "v1"}
    assert (obj["reason"], obj["message"], obj["type"]) == ("Started", "Started container echo", "Normal")
    assert obj["source"] == {"component": "kubelet", "host": "node-a"}
    assert obj["firstTimestamp"] == obj["lastTimestamp"] == "1970-01-12T13:46:40Z"
    assert obj["count"] == 1 and "series" not in obj
    assert state.EventRecord.from_dict(obj) == ev


def test_events_expire_after_the_api_servers_hour(lab_state, clock):
    _, st = lab_state
    ev = EventRecorder(st, "node-a").record("kube-proxy", "Node", None, "node-a", "RulesSynced", "full")
    kv = st.store.get(state.event_key("default", ev.name))
    assert kv.ttl() == pytest.approx(state.EVENT_TTL, abs=5)


def test_a_node_event_lives_in_default_without_an_object_namespace(lab_state, clock):
    _, st = lab_state
    ev = EventRecorder(st, "node-a", clock=clock).record("flanneld", "Node", None, "node-a", "PeerAdded", "x")
    obj = ev.to_dict()
    assert obj["metadata"]["namespace"] == "default" and "namespace" not in obj["involvedObject"]


def test_the_same_event_again_counts_up_in_one_record(lab_state, clock):
    _, st = lab_state
    rec = EventRecorder(st, "node-a", clock=clock)
    first = rec.record("kubelet", "Pod", "default", "crash", "BackOff", "Back-off restarting", WARNING)
    clock.now += 7.25
    again = rec.record("kubelet", "Pod", "default", "crash", "BackOff", "Back-off restarting", WARNING)
    rec.record("kubelet", "Pod", "default", "crash", "Started", "Started container c")
    assert again.name == first.name and again.count == 2
    stored = [e for e in st.events("default") if e.reason == "BackOff"]
    assert len(stored) == 1 and stored[0].count == 2
    obj = stored[0].to_dict()
    assert obj["series"] == {"count": 2, "lastObservedTime": "1970-01-12T13:46:47.250000Z"}
    assert stored[0].last - stored[0].first == pytest.approx(7.25)


def test_recording_never_raises_into_a_sync(clock):
    class Broken:
        def put_event(self, ev):
            raise RuntimeError("database is locked")

    assert EventRecorder(Broken(), "node-a", clock=clock).record("kubelet", "Pod", "d", "p", "Started", "m") is None


def test_the_table_has_kubectls_columns():
    ev = state.EventRecord("default", "echo-1.1", "Pod", "echo-1", "Created", "Created container echo  ",
                           component="kubelet", host="node-a", first=100.0, last=160.0, count=3)
    obj = views.event_object(ev)
    assert views.event_row(obj, 170.0, False) == ["10s", "Normal", "Created", "pod/echo-1", "Created container echo"]
    assert views.event_row(obj, 170.0, True) == ["10s", "Normal", "Created", "pod/echo-1", "", "kubelet, node-a",
                                                 "Created container echo", "70s", "3", "echo-1.1"]
    res = views.resource("ev")
    assert res.columns(False, True) == ["NAMESPACE", "LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert res.columns(True, False)[4:7] == ["SUBOBJECT", "SOURCE", "MESSAGE"]


def get(root, *args, **kw):
    env = {**os.environ, "NETLAB_STATE_DIR": root, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "netlab.cli", "get", *args], capture_output=True, text=True,
                          env=env, timeout=60, **kw)


def test_get_events_lists_them_oldest_first_per_namespace(lab_state, clock):
    root, st = lab_state
    rec = EventRecorder(st, "node-a", clock=clock)
    rec.record("kubelet", "Pod", "default", "echo-1", "Created", "Created container echo")
    clock.now += 1
    rec.record("kubelet", "Pod", "kube-system", "coredns-1", "Started", "Started container coredns")
    clock.now += 1
    rec.record("kube-proxy", "Node", None, "node-a", "RulesSynced", "iptables full sync")
    out = get(root, "events").stdout.splitlines()
    assert out[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert [line.split()[3] for line in out[1:]] == ["pod/echo-1", "node/node-a"]
    every = json.loads(get(root, "ev", "-A", "-o", "json").stdout)
    assert [i["reason"] for i in every["items"]] == ["Created", "Started", "RulesSynced"]
    assert get(root, "events", "-n", "kube-system").stdout.splitlines()[1].split()[2] == "Started"


def test_get_events_w_streams_new_events(lab_state, clock):
    root, st = lab_state
    EventRecorder(st, "node-a").record("kubelet", "Pod", "default", "old", "Created", "before the watch")
    env = {**os.environ, "NETLAB_STATE_DIR": root, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "netlab.cli", "get", "events", "-w"], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]   # header, the event so far
        assert "pod/old" in lines[1]
        writer = threading.Thread(target=lambda: EventRecorder(st, "node-b").record(
            "kube-proxy", "Node", None, "node-b", "RulesSynced", "written while watching"))
        writer.start()
        writer.join()
        assert "written while watching" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_watch_is_for_events_only(lab_state):
    root, _ = lab_state
    res = get(root, "pods", "-w")
    assert res.returncode == 1 and "get events -w" in res.stderr


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_the_jq_examples_in_docs_debugging_md_work(lab_state, clock):
    root, st = lab_state
    rec = EventRecorder(st, "node-a", clock=clock)
    rec.record("kube-proxy", "Node", None, "node-a", "RulesSynced", "iptables full sync: 7 service ports")
    rec.record("endpointslice-controller", "Service", "default", "echo", "EndpointAdded", "10.244.1.2 ready")
    rec.record("kubelet", "Pod", "default", "crash", "BackOff", "Back-off restarting failed container", WARNING)
    with open(os.path.join(ROOT, "docs", "debugging.md")) as f:
        examples = [line.strip() for line in f if line.startswith("kube-netlab get events") and "| jq" in line]
    assert len(examples) >= 3
    # one script, kube-netlab a shell function; each example must print something
    script = (f'kube-netlab() {{ {shlex.quote(sys.executable)} -m netlab.cli "$@"; }}\nset -e -o pipefail\n'
              + "".join(f"{e} | grep . >/dev/null || {{ echo {shlex.quote(e)} printed nothing >&2; exit 1; }}\n"
                        for e in examples))
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NETLAB_STATE_DIR": root, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr

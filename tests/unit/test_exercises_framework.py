"""Course exercises without a kernel: the paused-repair tokens and their matching, the store
records, the controllers noticing a pause or a resume, the registry and the texts."""
from __future__ import annotations

import os

import pytest

from netlab.agent import Agent, Controller
from netlab.agent.pods import PodsController
from netlab.exercises import framework
from netlab.model import load_lab
from netlab.pods import Proc, PodRuntime
from netlab.state import (PAUSED_REPAIRS_KEY, REPAIRS, ExerciseRecord, LabPaths, PodStatus,
                          ContainerStatus, pause_token, paused_for, repair_paused, split_pause_token)

from test_events_agent import ROOT, TWO_NODE, state  # noqa: F401  (the lab-in-a-store fixture)


# --- tokens ---------------------------------------------------------------------------------

def test_a_token_pauses_exactly_its_repair_of_its_target():
    tokens = {pause_token("overlay.fdb", "node-a")}
    assert repair_paused(tokens, "overlay.fdb", "node-a")
    assert not repair_paused(tokens, "overlay.fdb", "node-b")        # another node still repairs
    assert not repair_paused(tokens, "overlay.route", "node-a")      # another repair of the node too
    assert not repair_paused(tokens, "overlay.fdb", "node-ab")       # no prefix matching
    assert paused_for(tokens, "node-a") == {"overlay.fdb"}
    assert paused_for(tokens, "node-b") == frozenset()


def test_a_star_target_pauses_the_repair_everywhere_and_pod_targets_have_a_slash():
    tokens = {"proxy/*", "pods.restart/kube-system/coredns-x"}
    assert repair_paused(tokens, "proxy", "node-a") and repair_paused(tokens, "proxy", "node-b")
    assert not repair_paused(tokens, "proxy.conntrack", "node-a")
    assert repair_paused(tokens, "pods.restart", "kube-system/coredns-x")
    assert not repair_paused(tokens, "pods.restart", "kube-system/coredns-y")
    assert split_pause_token("pods.restart/kube-system/coredns-x") == ("pods.restart", "kube-system/coredns-x")


@pytest.mark.parametrize("token, words", [
    ("overlay.fdb", "REPAIR/TARGET"),
    ("overlay.fbd/node-a", "is not one of"),
    ("proxy/", "target"),
])
def test_a_malformed_token_is_refused_with_the_fix(token, words):
    with pytest.raises(ValueError, match=words):
        split_pause_token(token)


def test_every_repair_is_described():
    assert all(isinstance(text, str) and text for text in REPAIRS.values())


# --- records --------------------------------------------------------------------------------

def test_paused_repairs_round_trip_and_an_empty_set_removes_the_key(state):
    assert state.paused_repairs() == frozenset()
    state.put_paused_repairs(["overlay.route/node-b", "node.sysctl/node-a"])
    assert state.paused_repairs() == {"overlay.route/node-b", "node.sysctl/node-a"}
    with pytest.raises(ValueError, match="is not one of"):
        state.put_paused_repairs(["nonsense/node-a"])
    state.put_paused_repairs(())
    assert state.store.get(PAUSED_REPAIRS_KEY) is None


def test_the_exercise_record_round_trips(state):
    rec = ExerciseRecord("fdb-missing", 7, {"node": "node-a"}, ("overlay.fdb/node-a",), 2, 123.0,
                         {"nodes": {"node-a": {"flannel.1 routes": 1}}})
    state.put_exercise(rec)
    assert state.exercise() == rec
    state.delete_exercise()
    assert state.exercise() is None


# --- controllers ------------------------------------------------------------------------------

class Overlayish(Controller):
    name = "overlay"
    prefixes = (PAUSED_REPAIRS_KEY,)
    repairs = ("overlay.fdb", "node.sysctl")

    def sync(self, full):
        pass


def test_a_controller_sees_its_own_pauses_and_a_resume_once(state, tmp_path, clock):
    agent = Agent("unit", "node-a", LabPaths("unit", root=str(tmp_path)), store=state.store, clock=clock,
                  controllers=lambda a: [Overlayish(a)])
    c = agent.controllers[0]
    state.put_paused_repairs(["overlay.fdb/node-a", "overlay.fdb/node-b", "proxy/node-a"])
    assert c.paused() == {"overlay.fdb"}            # not node-b's, not the proxy's
    assert c.resumed(c.paused()) is False
    state.put_paused_repairs(["overlay.fdb/node-b"])
    assert c.resumed(c.paused()) is True              # the sync after a resume is full ...
    assert c.resumed(c.paused()) is False             # ... once


def test_a_pause_event_wakes_only_the_controllers_it_concerns(state, tmp_path, clock):
    agent = Agent("unit", "node-a", LabPaths("unit", root=str(tmp_path)), store=state.store, clock=clock,
                  controllers=lambda a: [Overlayish(a)])
    c = agent.controllers[0]
    rev = state.store.revision()
    state.put_paused_repairs(["proxy/node-a"])              # not this controller's repair
    state.put_paused_repairs(["proxy/node-a", "overlay.fdb/node-a"])
    state.put_paused_repairs(())
    events = state.store.events_since(PAUSED_REPAIRS_KEY, rev)
    assert [c.pause_changed(e) for e in events] == [False, True, True]


class FakeRuntime:
    def __init__(self):
        self.supervised = []

    def create(self, pod, adopt=None):
        return PodStatus("node-a", pod.netns("unit"), "Running", "10.244.1.2",
                         containers=(ContainerStatus("c", 2, "running"),))

    def status(self, pod):
        return self.create(pod)

    def supervise(self, pod, hold_restarts=False):
        self.supervised.append((pod.key, hold_restarts))
        return False

    def next_restart(self, held=frozenset()):
        return None

    def reap(self):
        pass

    def exited(self):
        return False


def test_the_pods_controller_holds_the_restarts_of_exactly_the_paused_pod(state, tmp_path, clock):
    runtime = FakeRuntime()
    agent = Agent("unit", "node-a", LabPaths("unit", root=str(tmp_path)), store=state.store, clock=clock,
                  controllers=lambda a: [PodsController(a, runtime=runtime)])
    ctl = agent.controllers[0]
    mine = sorted(k for k, p in state.pods().items() if p.node_name == "node-a")
    ctl.sync(True)                       # creates them
    state.put_paused_repairs([pause_token("pods.restart", mine[0])])
    ctl.sync(True)
    assert sorted(runtime.supervised) == [(mine[0], True)] + [(k, False) for k in mine[1:]]


def test_a_held_pod_has_no_restart_due(tmp_path):
    lab = load_lab(TWO_NODE, name="unit")
    rt = PodRuntime(lab, "node-a", LabPaths("unit", root=str(tmp_path)), {})
    rt.containers = {"default/a": [Proc("c", 1, [], "", restart_at=50.0)],
                     "default/b": [Proc("c", 2, [], "", restart_at=60.0)]}
    assert rt.next_restart() == 50.0
    assert rt.next_restart(frozenset({"default/a"})) == 60.0
    assert rt.next_restart(frozenset({"default/a", "default/b"})) is None


# --- the registry -------------------------------------------------------------------------------

def test_every_exercise_has_its_texts_and_a_unique_cli_name():
    exs = framework.exercises()
    assert {"pod-mtu", "fdb-missing", "route-missing", "ip-forward-off"} <= {e.name for e in exs}
    for e in exs:
        assert e.title and e.goal and e.symptom and e.explanation and len(e.hints) >= 2, e.name
        assert os.path.exists(os.path.join(ROOT, framework.TOPOLOGIES, e.lab_file)), e.name
        assert os.path.exists(os.path.join(ROOT, "docs", "exercises", f"{e.name}.md")), e.name


def test_an_unknown_exercise_names_the_known_ones():
    with pytest.raises(framework.ExerciseError, match="fdb-missing"):
        framework.get("fdb-mising")


def test_a_check_serializes_for_graders():
    assert framework.Check("x", False, "no reply").to_dict() == {"name": "x", "passed": False, "why": "no reply"}


def test_hints_come_one_more_each_call_and_the_instructor_sees_the_fault(state, monkeypatch):
    class Dummy(framework.Exercise):
        name, hints, explanation = "unit-dummy", ("look at {node}", "the FDB"), "broke {node}\nwhy it matters"

        def solution(self, ctx, params):
            return [f"kube-netlab exec --node {params['node']} -- true"]

    monkeypatch.setitem(framework.REGISTRY, "unit-dummy", Dummy())
    ctx = object.__new__(framework.Context)   # only the store: no lab namespaces needed here
    ctx.state = state
    state.put_exercise(ExerciseRecord("unit-dummy", 3, {"node": "node-a"}, ("overlay.fdb/node-a",)))
    assert framework.next_hint(ctx) == (["look at node-a"], 2)
    assert framework.next_hint(ctx) == (["look at node-a", "the FDB"], 2)
    assert framework.next_hint(ctx) == (["look at node-a", "the FDB"], 2)   # no more: all of them again
    assert state.exercise().hints_shown == 2
    assert framework.solution_lines(ctx) == ["kube-netlab exec --node node-a -- true"]
    lines = framework.solution_lines(ctx, instructor=True)
    assert lines[-1] == "kube-netlab exec --node node-a -- true"
    assert all(line.startswith("#") for line in lines[:-1])          # sh runs the commands only
    assert "# paused repairs: overlay.fdb/node-a" in lines and "# broke node-a" in lines
    assert any("seed 3" in line for line in lines)


def test_commands_without_a_running_exercise_say_how_to_start_one(state):
    ctx = object.__new__(framework.Context)
    ctx.state, ctx.lab = state, state.lab()
    with pytest.raises(framework.ExerciseError, match="exercise start NAME"):
        framework.next_hint(ctx)

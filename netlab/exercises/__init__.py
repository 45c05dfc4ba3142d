"""Course exercises: break it, find it, fix it (`kube-netlab exercise ...`).

An exercise brings up a lab (or uses a running one), injects ONE fault into it, pauses
exactly the agents' repairs that would silently undo that fault, and grades the student's
fix with checks that pass only when the data path works again AND the lab's own state is
intact (the framework adds "collateral" checks to every exercise: each node's flannel.1
routes / FDB / neighbours, its iptables and nftables rule counts, ip_forward and every pod's
MTU equal what they were on the healthy lab before the fault, and every pod still reaches
a pod on each other node).

How to add an exercise
----------------------
1. Write a subclass of `framework.Exercise` in a module of this package (one per exercise or
   per family, e.g. overlay.py), decorated with `@register`:

       @register
       class HairpinOff(Exercise):
           name = "hairpin-off"                 # the CLI name: exercise start hairpin-off
           title = "A pod cannot reach itself through its Service"
           goal = "what the student learns (one or two sentences)"
           symptom = "what the student sees with ordinary tools (curl, ping, ...)"
           hints = ("generic first", "closer: look at {node}'s bridge", "almost the answer")
           explanation = "for the instructor: why it breaks, what the fix does"

           def choose(self, ctx, rng) -> dict:   # which node/pod; rng is random.Random(seed)
               return {"node": rng.choice(ctx.node_names)}
           def pauses(self, params) -> set[str]: # exactly what the agents must not repair
               return {pause_token("overlay.fdb", params["node"])}   # state.REPAIRS lists the repairs
           def inject(self, ctx, params) -> None: # break it (ctx.run / ctx.node_run / ctx.pod_run)
               ...
           def checks(self, ctx, params) -> list[Check]:  # the exercise's own; collateral ones are added
               return [Check("...", ok, "why, in words the student understands")]
           def solution(self, ctx, params) -> list[str]:  # shell lines, runnable with sh
               return [ctx.node_cmd(params["node"], "bridge link set dev ... hairpin on")]
           def undo(self, ctx, params) -> None:  # optional: what no agent repairs once resumed
               ...

   Hints and the instructor's explanation are str.format()ed with params ({node}, {pod}, ...).
   `lab_file` names the topology under topologies/ (two-node.yaml by default).
2. Import the module in `load()` below, add docs/exercises/<name>.md and a line in
   docs/exercises/README.md, and an integration test: check fails after start, passes after
   `sh` runs the solution, reset leaves a healthy lab. `exercise_cycle(lab, name, seed)` in
   tests/integration/test_exercises.py does all three (`from test_exercises import
   exercise_cycle, lab` in another module there; the unit tests' module has another name).

The framework checks every exercise's own checks pass on the healthy lab before it injects
anything (a check that cannot pass is a bug, and start says so).
"""
from __future__ import annotations


def load() -> None:
    """Import every exercise module (each registers its exercises)."""
    from . import dns, overlay, pod, service, vtep  # noqa: F401

"""kube-netlab exercise: list, start, check, hint, reset, solution."""
from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # where topologies/ is


def register(sub, lab_opt) -> None:
    sp = sub.add_parser("exercise", help="course exercises: break it, find it, fix it",
                        description="Start an exercise (a lab with one injected fault), get hints, check your "
                                    "fix, see the solution, reset the lab. docs/exercises/README.md lists them.")
    verbs = sp.add_subparsers(dest="verb", required=True, metavar="VERB")

    v = verbs.add_parser("list", help="the exercises")
    v.add_argument("-o", "--output", choices=["json"])
    v.set_defaults(func=cmd_list)

    v = verbs.add_parser("start", help="bring up the exercise's lab (or use --lab) and inject its fault")
    v.add_argument("name", metavar="NAME")
    v.add_argument("--seed", type=int, help="chooses which node or pod is broken (default: random, printed)")
    v.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the lab to come up")
    lab_opt(v)
    v.set_defaults(func=cmd_start)

    v = verbs.add_parser("check", help="grade the fix: each check, passed or not, and why (exit 0: all pass)")
    v.add_argument("-o", "--output", choices=["json"])
    lab_opt(v)
    v.set_defaults(func=cmd_check)

    v = verbs.add_parser("hint", help="one more hint each time")
    lab_opt(v)
    v.set_defaults(func=cmd_hint)

    v = verbs.add_parser("reset", help="resume the paused repairs, undo the fault, wait until the lab is healthy")
    v.add_argument("--timeout", type=float, default=30.0)
    lab_opt(v)
    v.set_defaults(func=cmd_reset)

    v = verbs.add_parser("solution", help="the fix as shell commands (runnable with sh)")
    v.add_argument("--instructor", action="store_true",
                   help="also the injected fault, the paused repairs and the explanation (as # comments)")
    lab_opt(v)
    v.set_defaults(func=cmd_solution)


def _local_root(a) -> None:
    from ..engine import LabError
    if a.store:
        raise LabError("exercises run on a lab on this machine; drop --store")
    if os.geteuid() != 0:
        raise LabError("run as root (exercises read and change the lab's namespaces)")


def _context(a):
    from ..engine import resolve_lab
    from .framework import Context
    _local_root(a)
    return Context(resolve_lab(a.lab))


def cmd_list(a) -> int:
    from .framework import exercises
    items = [e.summary() for e in exercises()]
    if a.output == "json":
        print(json.dumps({"kind": "ExerciseList", "items": items}, indent=2))
        return 0
    width = max(len(e["name"]) for e in items)
    print(f"{'NAME':<{width}}   LAB                        TITLE")
    for e in items:
        print(f"{e['name']:<{width}}   {e['lab']:<26} {e['title']}")
    return 0


def cmd_start(a) -> int:
    from .framework import start
    _local_root(a)
    ctx, ex, rec = start(a.name, lab_name=a.lab, seed=a.seed, root=ROOT, up_timeout=a.timeout)
    print(f"exercise {ex.name} started on lab {ctx.lab_name} (seed {rec.seed}): {ex.title}\n")
    print(f"goal:     {ex.goal}\nsymptom:  {ex.symptom}\n")
    print(f"next:     kube-netlab exercise hint --lab {ctx.lab_name}    (one more each time)\n"
          f"          kube-netlab exercise check --lab {ctx.lab_name}   (grades your fix)")
    return 0


def cmd_check(a) -> int:
    from .framework import run_checks
    ex, rec, checks = run_checks(_context(a))
    passed = all(c.passed for c in checks)
    if a.output == "json":
        print(json.dumps({"exercise": ex.name, "seed": rec.seed, "passed": passed,
                          "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"{'PASS' if c.passed else 'FAIL'}  {c.name}\n      {c.why}")
        print(f"\n{sum(c.passed for c in checks)}/{len(checks)} checks pass"
              + (": fixed" if passed else ""))
    return 0 if passed else 1


def cmd_hint(a) -> int:
    from .framework import next_hint
    shown, total = next_hint(_context(a))
    for i, text in enumerate(shown, 1):
        print(f"hint {i}/{total}: {text}")
    if len(shown) == total:
        print("(no more hints: kube-netlab exercise solution shows the fix)")
    return 0


def cmd_reset(a) -> int:
    from .framework import reset
    ctx = _context(a)
    failing = reset(ctx, timeout=a.timeout)
    if failing:
        print(f"lab {ctx.lab_name}: repairs resumed, but still unhealthy after {a.timeout:.0f} s:", file=sys.stderr)
        for c in failing:
            print(f"  {c.name}: {c.why}", file=sys.stderr)
        print(f"rebuild it with: kube-netlab down {ctx.lab_name} && kube-netlab up LAB.yaml", file=sys.stderr)
        return 1
    print(f"lab {ctx.lab_name} is healthy again; every repair runs")
    return 0


def cmd_solution(a) -> int:
    from .framework import solution_lines
    print("\n".join(solution_lines(_context(a), instructor=a.instructor)))
    return 0

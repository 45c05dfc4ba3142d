"""A namespace left behind shows up in the snapshot the session-wide check compares."""
import subprocess

import leaks
from conftest import unique_name


def test_snapshot_sees_a_leaked_namespace():
    before = leaks.snapshot()
    name = unique_name("leak")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        problems = leaks.diff(before, leaks.snapshot())
        assert f"netns: left behind: {name}" in problems
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
    assert leaks.diff(before, leaks.snapshot()) == []

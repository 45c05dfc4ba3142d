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


def test_snapshot_sees_a_leaked_container_shim(tmp_path):
    from netlab.shim import ShimClient
    before = leaks.snapshot()
    client = ShimClient(str(tmp_path / "shim.sock"), str(tmp_path / "shim.log"))
    try:
        client._connect()  # starts the shim, as an agent's first pod would
        assert any(p.startswith("container shims: left behind:") and str(tmp_path) in p
                   for p in leaks.diff(before, leaks.snapshot()))
    finally:
        client.close()
        client.proc.kill()
        client.proc.wait()
    assert leaks.diff(before, leaks.snapshot()) == []

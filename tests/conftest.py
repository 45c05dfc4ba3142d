"""Shared fixtures: uniquely named namespaces that are always removed, and a
session-wide leak check that fails the run when anything of ours remains."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import leaks  # noqa: E402

_counter = itertools.count()


def unique_name(kind: str = "ns") -> str:
    """A short name unique to this run (interface names must fit 15 characters)."""
    return f"{leaks.RUN_PREFIX}{kind}{next(_counter)}"


def pytest_collection_modifyitems(config, items):
    is_root = os.geteuid() == 0
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.root)
            if not is_root:
                item.add_marker(pytest.mark.skip(reason="integration tests need root"))


@pytest.fixture(scope="session", autouse=True)
def leak_check():
    """Fails the session if the suite left a namespace, link, rule, lease dir or process."""
    before = leaks.snapshot()
    yield
    problems = leaks.diff(before, leaks.snapshot())
    assert not problems, "the test suite leaked:\n  " + "\n  ".join(problems)


class Namespaces:
    """Creates network namespaces for one test and deletes them afterwards."""

    def __init__(self):
        self.names: list[str] = []

    def new(self, kind: str = "ns") -> str:
        name = unique_name(kind)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        # loopback up, as a runtime would
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def remove(self, name: str) -> None:
        if name in self.names:
            self.names.remove(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def cleanup(self):
        for name in reversed(self.names):
            # processes first, or the namespace lives on through them
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.names.clear()


@pytest.fixture
def namespaces():
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.cleanup()


class FakeClock:
    """A clock tests move by hand, for TTLs and expiry."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()

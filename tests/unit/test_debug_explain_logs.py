"""logs without a lab: which file kubectl's flags pick, its errors, --tail, and -f
ending when the container's log is rotated by a restart."""
from __future__ import annotations

import io
import os

import pytest

from netlab.debug.logs import LogError, follow, last_lines, log_files
from netlab.model import Container, Pod, PodSpec
from netlab.state import ContainerStatus, LabPaths, PodStatus

NETNS = "lab-default.web"


@pytest.fixture
def paths(tmp_path):
    p = LabPaths("lab", root=str(tmp_path))
    os.makedirs(p.pod_dir(NETNS))
    return p


def pod(*containers: str) -> Pod:
    return Pod("web", PodSpec(tuple(Container(c) for c in containers), node_name="node-a"))


def running(*containers: str) -> PodStatus:
    return PodStatus("node-a", NETNS, "Running", "10.244.1.2",
                     containers=tuple(ContainerStatus(c, 1, "running") for c in containers))


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def test_one_container_needs_no_c(paths):
    write(paths.container_log(NETNS, "app"), "hello\n")
    assert log_files(paths, pod("app"), running("app"), None) == [("app", paths.container_log(NETNS, "app"))]


def test_several_containers_need_c_as_kubectl_says(paths):
    with pytest.raises(LogError, match=r"a container name must be specified for pod web, choose one of: \[app side\]"):
        log_files(paths, pod("app", "side"), running("app", "side"), None)
    with pytest.raises(LogError, match='container "nope" is not valid for pod "web"'):
        log_files(paths, pod("app", "side"), running("app", "side"), "nope")


def test_previous_is_the_rotated_log(paths):
    write(paths.container_log(NETNS, "app"), "run 2\n")
    with pytest.raises(LogError, match='previous terminated container "app" in pod "web" not found'):
        log_files(paths, pod("app"), running("app"), "app", previous=True)
    write(paths.container_log(NETNS, "app", previous=True), "run 1\n")
    assert log_files(paths, pod("app"), running("app"), "app", previous=True)[0][1].endswith("app.previous.log")


def test_a_container_not_started_yet_is_waiting(paths):
    st = PodStatus("node-a", NETNS, "Pending", containers=(ContainerStatus("app", None, "waiting",
                                                                           reason="CrashLoopBackOff"),))
    with pytest.raises(LogError, match='container "app" in pod "web" is waiting to start: CrashLoopBackOff'):
        log_files(paths, pod("app"), st, "app")


def test_tail():
    assert last_lines("a\nb\nc\n", 2) == "b\nc\n"
    assert last_lines("a\nb\n", -1) == "a\nb\n" and last_lines("a\n", 0) == ""


def test_follow_prints_what_is_appended_and_ends_when_the_log_is_rotated(paths):
    path = paths.container_log(NETNS, "app")
    write(path, "run 1 starts\n")
    out = io.StringIO()
    rounds = []

    def stop():
        # the container writes once more, then restarts: its log becomes app.previous.log
        rounds.append(1)
        if len(rounds) == 2:
            with open(path, "a") as f:
                f.write("run 1 dies\n")
            os.replace(path, paths.container_log(NETNS, "app", previous=True))
            write(path, "run 2 starts\n")
        return len(rounds) > 50   # never reached: the rotation ends it

    follow(path, out, stop=stop, poll=0)
    assert out.getvalue() == "run 1 starts\nrun 1 dies\n"
    assert len(rounds) < 50

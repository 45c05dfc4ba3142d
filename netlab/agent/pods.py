"""The pods controller: the kubelet's part of a node agent.

Runs the pods the store schedules to this node (/netlab/pods/, spec.nodeName), reports
each one's PodStatus, and removes pods that are no longer wanted (also those a previous
run of the agent left). Like the kubelet:

  - a pod whose creation fails stays Pending with reason FailedCreatePodSandBox, its
    message and the number of attempts, and is tried again after a backoff (1 s doubling
    up to a cap); what the failed attempt left is removed first;
  - exited containers are restarted per restartPolicy after their own backoff
    (CrashLoopBackOff) and counted (restartCount);
  - process exits are noticed by polling the processes (the PLEG's relist), not the store,
    so a pod whose process dies is reported within a watcher round.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from ..pods import POD_CREATE_BACKOFF, Backoff, PodRuntime, cni_conf
from ..state import PAUSED_REPAIRS_KEY, PODS, PodStatus, event_records, repair_paused
from .controller import Controller

log = logging.getLogger("netlab.agent")
FAILED_CREATE = "FailedCreatePodSandBox"  # the kubelet's event reason for a sandbox that did not come up


@dataclass(frozen=True)
class CreateFailure:
    attempts: int
    retry_at: float     # wall clock
    message: str


class PodsController(Controller):
    name = "pods"
    prefixes = (PODS, PAUSED_REPAIRS_KEY)
    condition = "PodsFailing"
    component = "kubelet"
    repairs = ("pods.restart",)   # per pod: "pods.restart/<ns>/<pod>" holds its container restarts

    def __init__(self, agent, *, runtime: PodRuntime | None = None, create_backoff: Backoff = POD_CREATE_BACKOFF,
                 restart_backoff: Backoff | None = None):
        super().__init__(agent)
        self.runtime = runtime
        self.create_backoff = create_backoff
        self.restart_backoff = restart_backoff
        self.running: dict = {}                       # key -> Pod as created
        self.failures: dict[str, CreateFailure] = {}  # key -> the last failed creation
        self.history: dict[str, tuple[float, int]] = {}  # key -> (start time, failed attempts before it ran)
        self.reported: dict[str, PodStatus] = {}         # key -> the status last reported (events on changes)

    def setup(self) -> None:
        if self.runtime is None:
            subnet = str(self.agent.lease.subnet)
            kw = {"restart_backoff": self.restart_backoff} if self.restart_backoff else {}
            self.runtime = PodRuntime(self.lab, self.node.name, self.paths,
                                      cni_conf(self.lab, self.node.name, subnet, self.lab.overlay_mtu),
                                      clock=self.clock, **kw)

    def wants(self, event) -> bool:
        """A pod that is, or was, scheduled to this node; a pod's restarts held or released."""
        if event.key == PAUSED_REPAIRS_KEY:
            return self.pause_changed(event)
        return any(p is not None and p.node_name == self.node.name for p in event_records(event))

    def poll(self) -> bool:
        return self.runtime is not None and self.runtime.exited()

    def sync(self, full: bool) -> None:
        node = self.node.name
        desired = {k: p for k, p in self.state.pods().items() if p.node_name == node}
        statuses = {k: s for k, s in self.state.pod_statuses().items() if s.node == node}
        tokens = self.state.paused_repairs()
        held = frozenset(k for k in desired if repair_paused(tokens, "pods.restart", k))
        gone = sorted((set(self.running) | set(statuses) | set(self.failures)) - set(desired))
        if gone:
            self._delete(gone)
        for key, pod in desired.items():
            if key in self.running and self.running[key] != pod:  # spec changed: recreate, as a new pod
                self._delete([key], keep_status=True)
            if key not in self.running:
                self._start(pod, statuses.get(key))
            elif key in held:  # a course exercise stopped it: no restart until released
                self.runtime.supervise(pod, hold_restarts=True)
            else:
                self.runtime.supervise(pod)
            if key in self.running:
                self._report(pod)
        self.runtime.reap()
        for at in (self.runtime.next_restart(held) if held else self.runtime.next_restart(), *(f.retry_at for f in self.failures.values())):
            if at is not None and self.runner is not None:
                self.runner.retry_after(at - self.clock())

    def _start(self, pod, previous: PodStatus | None) -> None:
        key, now = pod.key, self.clock()
        failure = self.failures.get(key)
        if failure and now < failure.retry_at:
            return  # backing off; the runner comes back at retry_at
        adopt = previous if previous is not None and previous.pause_pid else None
        if adopt is None:
            self.state.put_pod_status(key, PodStatus(self.node.name, pod.netns(self.lab.name), "Pending",
                                                     attempts=failure.attempts if failure else 0,
                                                     reason=FAILED_CREATE if failure else None,
                                                     message=failure.message if failure else None))
        try:
            st = self.runtime.create(pod, adopt=adopt)
        except Exception as e:  # one broken pod must not stop the node: report it, try again later
            attempts = (failure.attempts if failure else 0) + 1
            delay = self.create_backoff.delay(attempts)
            log.error("pod %s: creation failed (attempt %d, next in %.1fs): %s", key, attempts, delay, e)
            self.failures[key] = CreateFailure(attempts, now + delay, str(e))
            self._clean_up(pod.namespace, pod.name)
            self.state.put_pod_status(key, PodStatus(self.node.name, pod.netns(self.lab.name), "Pending",
                                                     reason=FAILED_CREATE, message=str(e), attempts=attempts))
            self.record_event("Pod", pod.namespace, pod.name, FAILED_CREATE,
                              f"Failed to create pod sandbox: {e}", "Warning")
            return
        log.info("pod %s: %s %s%s", key, st.phase, st.pod_ip, " (adopted)" if adopt else "")
        if not adopt:
            self.record_event("Pod", pod.namespace, pod.name, "SandboxReady",
                              f"Pod sandbox {st.netns} up: eth0 {st.pod_ip} on {self.node.name}")
            for c in st.containers:
                self.record_event("Pod", pod.namespace, pod.name, "Created", f"Created container {c.name}")
                self.record_event("Pod", pod.namespace, pod.name, "Started", f"Started container {c.name}")
        self.running[key] = pod
        self.failures.pop(key, None)
        self.history[key] = ((adopt.start_time if adopt else None) or now,
                             failure.attempts if failure else (adopt.attempts if adopt else 0))

    def _report(self, pod) -> None:
        start_time, attempts = self.history[pod.key]
        st = replace(self.runtime.status(pod), start_time=start_time, attempts=attempts)
        self._record_container_changes(pod, self.reported.get(pod.key), st)
        self.reported[pod.key] = st
        self.state.put_pod_status(pod.key, st)

    def _record_container_changes(self, pod, old: PodStatus | None, new: PodStatus) -> None:
        """The kubelet's events for a container that exited (BackOff while it waits to restart)
        or was started again."""
        before = {c.name: c for c in old.containers} if old else {}
        for c in new.containers:
            prev = before.get(c.name)
            if prev is None:
                continue
            if c.reason == "CrashLoopBackOff" and prev.reason != "CrashLoopBackOff":
                self.record_event("Pod", pod.namespace, pod.name, "BackOff",
                                  f"Back-off restarting failed container {c.name} in pod {pod.name} "
                                  f"(exit code {c.exit_code})", "Warning")
            elif c.restart_count > prev.restart_count:
                self.record_event("Pod", pod.namespace, pod.name, "Started", f"Started container {c.name}")

    def _delete(self, keys: list[str], keep_status: bool = False) -> None:
        """Delete pods together (a Deployment's go at once: one grace period for all)."""
        pods = [tuple(key.split("/", 1)) for key in keys]
        for key, (ns, name) in zip(keys, pods):
            log.info("pod %s: deleting", key)
            for c in (self.reported.pop(key, None) or PodStatus("", "")).containers:
                self.record_event("Pod", ns, name, "Killing", f"Stopping container {c.name}")
        self.runtime.delete_many(pods)
        for key in keys:
            self.running.pop(key, None)
            self.failures.pop(key, None)
            self.history.pop(key, None)
            if not keep_status:
                self.state.delete_pod_status(key)

    def _clean_up(self, ns: str, name: str) -> None:
        """Remove what a failed creation left, so the next attempt starts from nothing."""
        try:
            self.runtime.delete(ns, name)
        except Exception as e:
            log.warning("pod %s/%s: cleaning up a failed creation: %s", ns, name, e)

"""The pod runtime a node agent drives, like the kubelet with a CRI runtime.

A pod is:
  - a named network namespace, <lab>-<ns>.<pod> (visible in `ip netns list`);
  - /etc/netns/<netns>/resolv.conf written like the kubelet's, which
    `ip netns exec` bind-mounts over /etc/resolv.conf;
  - eth0 from netlab-bridge, called in-process (the agent runs in the node's
    namespace, which is the CNI host side);
  - a "pause" process holding the pod's UTS namespace (its hostname) and the
    mount namespace with that resolv.conf, as Kubernetes' pause container does;
  - one process per container, entered into the pause process's namespaces:
    the container's command, or the built-in echo server on its ports.

The node's shim (netlab/shim.py) forks the pause process and the containers and
writes each one's exit code; the agent keeps pids and reads those files, so an
agent restart loses nothing.

Runs inside the node's network namespace.
"""
from __future__ import annotations

import os
import shutil
import select
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cni.main import bridge
from cni.spec import CniError

from .model import Lab, Pod, names, pod_resolv_conf
from .realize import ensure_netns, netns_exists, remove_netns
from .realize.namespace import pids_by_netns, process_alive
from .shim import ShimClient
from .state import NETNS_ETC, ContainerStatus, LabPaths, PodStatus

CNI_VERSION = "1.1.0"


def cni_conf(lab: Lab, node: str, subnet: str, mtu: int) -> dict:
    """The node's pod network, shaped like flannel's CNI config delegating to bridge
    (hairpinMode, isDefaultGateway, no ipMasq: the node's flannel rules masquerade)."""
    return {"cniVersion": CNI_VERSION, "name": names.cni_network(lab.name, node), "type": "netlab-bridge",
            "bridge": names.NODE_BRIDGE, "isGateway": True, "isDefaultGateway": True, "hairpinMode": True,
            "ipMasq": False, "mtu": mtu,
            "ipam": {"type": "netlab-ipam", "ranges": [[{"subnet": subnet}]]}}


def container_id(pod: Pod) -> str:
    return _container_id(pod.namespace, pod.name)


def _container_id(namespace: str, name: str) -> str:
    """CNI_CONTAINERID: <namespace>_<pod>, readable in `ls /var/lib/cni/networks/...`."""
    return f"{namespace}_{name}"


@dataclass(frozen=True)
class Backoff:
    """The kubelet's backoff: initial seconds, doubling per failure, up to cap."""

    initial: float = 1.0
    cap: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the failures-th failure in a row (1 = the first)."""
        return min(self.cap, self.initial * 2 ** max(0, failures - 1))


DELETE_THREADS = 8  # CNI DELs at once (each mostly waits in the kernel)
BACKOFF_RESET_SECONDS = 600.0  # the kubelet forgets a container's backoff after 10 min of running


def crashes_in_a_row(before: int, ran_seconds: float) -> int:
    """The exit just seen counted with those before it; a run longer than BACKOFF_RESET_SECONDS
    starts the count again, so a container that crashes once a day restarts after the initial delay."""
    return 1 if ran_seconds >= BACKOFF_RESET_SECONDS else before + 1


POD_CREATE_BACKOFF = Backoff(1.0, 30.0)        # a pod sandbox that failed to come up
CONTAINER_RESTART_BACKOFF = Backoff(1.0, 30.0)  # CrashLoopBackOff (the kubelet's is 10 s..5 min; a lab is impatient)


@dataclass
class Proc:
    """A pod process the node's shim forked; its exit code arrives in exit_file."""
    name: str
    pid: int
    argv: list[str]
    exit_file: str
    restarts: int = 0
    exit_code: int | None = None              # set when it stays exited (no restart)
    started_at: float | None = None           # wall clock
    restart_at: float | None = None           # wall clock: exited, restarting after a backoff
    crashes: int = 0                          # exits in a row without a long run: the backoff's exponent
    pidfd: int | None = field(default=None, repr=False)  # readable once it exits (polled, not /proc)
    dead_since: float | None = field(default=None, repr=False)  # monotonic: seen dead, no exit code yet

    def __post_init__(self):
        if self.pidfd is None and self.pid:
            try:
                self.pidfd = os.pidfd_open(self.pid)
            except OSError:  # gone already (or never ours)
                self.pidfd = None

    def alive(self) -> bool:
        if self.pidfd is None:
            return False
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def poll_exit(self) -> int | None:
        """Its exit code; None while it runs, or while the shim has not written it yet."""
        if self.alive():
            return None
        try:
            with open(self.exit_file) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    @property
    def settled(self) -> bool:
        """Its exit is known and handled (terminated for good, or waiting to restart)."""
        return self.exit_code is not None or self.restart_at is not None


UNKNOWN_EXIT = -1  # a process whose shim died with it unreaped: nobody knows how it ended
ORPHAN_EXIT_SECONDS = 2.0  # a dead process's code is written within milliseconds, or never


def _echo_args(container) -> dict | None:
    """The built-in echo server's ports, when the container runs it (the shim runs it in-process)."""
    if not container.runs_echo_server:
        return None
    return {"tcp": [p.container_port for p in container.ports if p.protocol == "TCP"],
            "udp": [p.container_port for p in container.ports if p.protocol == "UDP"]}


def _container_argv(pod: Pod, container) -> list[str]:
    if container.runs_echo_server:
        argv = [sys.executable, "-m", "netlab.workload.echo", "--pod", pod.name]
        for p in container.ports:
            argv += [f"--{p.protocol.lower()}", str(p.container_port)]
        return argv
    return list(container.argv)


def _field(pod: Pod, path: str, pod_ip: str | None, host_ip: str | None) -> str:
    """The downward API: valueFrom.fieldRef, as the kubelet fills it in."""
    values = {"metadata.name": pod.name, "metadata.namespace": pod.namespace,
              "metadata.uid": container_id(pod), "spec.nodeName": pod.node_name or "",
              "spec.serviceAccountName": "default", "status.podIP": pod_ip or "",
              "status.podIPs": pod_ip or "", "status.hostIP": host_ip or "", "status.hostIPs": host_ip or ""}
    if path.startswith("metadata.labels["):
        return pod.labels.get(path[len("metadata.labels["):].strip("]'\""), "")
    return values.get(path, "")


def container_path() -> str:
    """The venv's bin directory first, so a container command like `netlab-dns serve` runs the
    project's own tool (the cluster DNS pod), then the node's usual PATH."""
    system = os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    venv_bin = os.path.dirname(sys.executable)
    return os.pathsep.join([venv_bin, *(d for d in system.split(os.pathsep) if d and d != venv_bin)])


def _container_env(lab: Lab, pod: Pod, container, pod_ip: str | None = None, host_ip: str | None = None) -> dict:
    env = {"PATH": container_path(),
           "HOSTNAME": pod.hostname,
           "KUBERNETES_SERVICE_HOST": str(lab.kubernetes_service_ip), "KUBERNETES_SERVICE_PORT": "443",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    for e in container.env:
        env[e.name] = _field(pod, e.field_path, pod_ip, host_ip) if e.field_path else (e.value or "")
    return env


class PodRuntime:
    """Pods' kernel objects and processes on one node. Keeps no desired state: the pods
    controller (netlab.agent.pods) says what to create, supervise and delete."""

    def __init__(self, lab: Lab, node: str, paths: LabPaths, conf: dict, *,
                 restart_backoff: Backoff = CONTAINER_RESTART_BACKOFF, clock=time.time,
                 shim: ShimClient | None = None):
        self.lab, self.node, self.paths, self.conf = lab, node, paths, conf
        self.restart_backoff, self.clock = restart_backoff, clock
        self.shim = shim or ShimClient(paths.shim_socket(node), paths.shim_log(node))
        self._pool: ThreadPoolExecutor | None = None
        self.pause: dict[str, Proc] = {}
        self.containers: dict[str, list[Proc]] = {}
        self.pod_ips: dict[str, str | None] = {}

    # --- create ---------------------------------------------------------------------
    def create(self, pod: Pod, adopt: PodStatus | None = None) -> PodStatus:
        """Converge one pod; adopt is its last status (after an agent restart)."""
        netns = pod.netns(self.lab.name)
        if adopt and self._adopt(pod, adopt):
            return self.status(pod)
        ensure_netns(netns)
        self._write_resolv_conf(pod, netns)
        self.pod_ips[pod.key] = self._attach(pod, netns)
        pause = self._start_pause(pod, netns)
        self.pause[pod.key] = pause
        self.containers[pod.key] = [self._start_container(pod, c, pause.pid) for c in pod.containers]
        return self.status(pod)

    def _write_resolv_conf(self, pod: Pod, netns: str) -> None:
        d = os.path.join(NETNS_ETC, netns)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "resolv.conf"), "w") as f:
            f.write(pod_resolv_conf(pod, self.lab))

    def _attach(self, pod: Pod, netns: str) -> str:
        path = f"/run/netns/{netns}"
        cid = container_id(pod)
        try:
            result = bridge.add(self.conf, cid, path)
        except CniError as e:
            if "already exists" not in e.msg:
                raise
            # a restarted agent re-creating a pod whose network survived: take it from scratch
            bridge.delete(self.conf, cid, path)
            result = bridge.add(self.conf, cid, path)
        return result["ips"][0]["address"].split("/")[0]

    def _start_pause(self, pod: Pod, netns: str) -> Proc:
        exit_file = self.paths.exit_file(netns, "pause")
        pid = self.shim.sandbox(f"/run/netns/{netns}", pod.hostname, os.path.join(NETNS_ETC, netns),
                                os.path.join(self.paths.pod_dir(netns), "pause.log"), exit_file)
        return Proc("pause", pid, ["sleep", "infinity"], exit_file, started_at=self.clock())

    def _start_container(self, pod: Pod, container, pause_pid: int) -> Proc:
        netns = pod.netns(self.lab.name)
        argv, echo = _container_argv(pod, container), _echo_args(container)
        if echo is not None:
            echo["pod"] = pod.name
        env = _container_env(self.lab, pod, container, self.pod_ips.get(pod.key),
                             str(self.lab.node(self.node).underlay_ip))
        exit_file = self.paths.exit_file(netns, container.name)
        pid = self.shim.start(pause_pid, argv, env, container.working_dir,
                              self.paths.container_log(netns, container.name), exit_file, echo)
        return Proc(container.name, pid, argv, exit_file, started_at=self.clock())

    def _restart_container(self, pod: Pod, container, pause_pid: int, restarts: int, crashes: int = 0) -> Proc:
        """Start a container again, its last run's output kept as <container>.previous.log
        (`logs --previous`), as the kubelet keeps the previous container's log."""
        log_path = self.paths.container_log(pod.netns(self.lab.name), container.name)
        try:
            os.replace(log_path, self.paths.container_log(pod.netns(self.lab.name), container.name, previous=True))
        except FileNotFoundError:
            pass
        p = self._start_container(pod, container, pause_pid)
        p.restarts, p.crashes = restarts, crashes
        return p

    def _adopt(self, pod: Pod, st: PodStatus) -> bool:
        """Keep a pod that survived an agent restart: its namespace, eth0 and pause process live."""
        netns = pod.netns(self.lab.name)
        if not (st.pause_pid and process_alive(st.pause_pid) and netns_exists(netns)):
            return False
        self.pause[pod.key] = Proc("pause", st.pause_pid, [], self.paths.exit_file(netns, "pause"))
        procs = []
        for c in pod.containers:
            cs = next((x for x in st.containers if x.name == c.name), None)
            if cs and cs.pid and cs.running and process_alive(cs.pid):
                procs.append(Proc(c.name, cs.pid, [], self.paths.exit_file(netns, c.name),
                                  restarts=cs.restart_count, started_at=cs.started_at))
            else:
                procs.append(self._restart_container(pod, c, st.pause_pid, (cs.restart_count if cs else 0) + 1))
        self.containers[pod.key] = procs
        self.pod_ips[pod.key] = st.pod_ip
        return True

    # --- supervise ------------------------------------------------------------------
    def exited(self) -> bool:
        """A process of a pod exited and nobody has handled it yet (the kubelet's PLEG relist):
        one poll(2) over the processes' pidfds."""
        procs = [*list(self.pause.values()), *(p for ps in list(self.containers.values()) for p in ps)]
        poller = select.poll()
        for p in procs:
            if not p.settled:
                if p.pidfd is None:
                    return True
                poller.register(p.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def supervise(self, pod: Pod, hold_restarts: bool = False) -> bool:
        """Restart exited containers per restartPolicy, after a backoff that doubles with each
        restart (CrashLoopBackOff); True when something changed. hold_restarts: a course
        exercise stopped this pod on purpose; its containers wait (CrashLoopBackOff) until released."""
        changed = False
        pause = self.pause.get(pod.key)
        now = self.clock()
        if pause and not pause.settled and not pause.alive():
            code = self._exit_code(pause)
            if code is not None:
                pause.exit_code = code  # the sandbox is gone: the pod has failed, nothing restarts
                changed = True
        for i, p in enumerate(self.containers.get(pod.key, [])):
            if p.exit_code is not None:
                continue
            if p.restart_at is not None:
                if now >= p.restart_at and pause and pause.alive() and not hold_restarts:
                    container = next(c for c in pod.containers if c.name == p.name)
                    p.close()
                    self.containers[pod.key][i] = self._restart_container(pod, container, pause.pid, p.restarts + 1,
                                                                          p.crashes)
                    changed = True
                continue
            if p.alive():
                continue
            code = self._exit_code(p)
            if code is None:
                continue  # exited a moment ago; the shim is writing its code
            policy = pod.spec.restart_policy
            if pause and pause.alive() and (policy == "Always" or (policy == "OnFailure" and code != 0)):
                p.crashes = crashes_in_a_row(p.crashes, now - (p.started_at or now))
                p.restart_at = now + self.restart_backoff.delay(p.crashes)
            else:
                p.exit_code = code
            changed = True
        return changed

    def _exit_code(self, p: Proc) -> int | None:
        """Its exit code once the shim wrote it. A process dead for a while with none written
        was a child of a shim that died before it (orphans are reaped by init): unknown."""
        code = p.poll_exit()
        if code is None and not p.alive():
            now = time.monotonic()
            if p.dead_since is None:
                p.dead_since = now
            elif now - p.dead_since > ORPHAN_EXIT_SECONDS:
                return UNKNOWN_EXIT
        return code

    def next_restart(self, held: frozenset[str] = frozenset()) -> float | None:
        """Wall-clock time of the next container restart due, if any (pods in held: none)."""
        due = [p.restart_at for key, ps in self.containers.items() if key not in held
               for p in ps if p.restart_at is not None]
        return min(due) if due else None

    def status(self, pod: Pod) -> PodStatus:
        pause = self.pause.get(pod.key)
        containers = tuple(_container_status(p) for p in self.containers.get(pod.key, []))
        if pause is None or not pause.alive():
            phase = "Failed"
        elif all(c.state == "terminated" for c in containers) and containers:
            phase = "Succeeded" if all(c.exit_code == 0 for c in containers) else "Failed"
        else:
            phase = "Running"  # as the kubelet's: running while a container is (or will be again)
        return PodStatus(node=self.node, netns=pod.netns(self.lab.name), phase=phase,
                         pod_ip=self.pod_ips.get(pod.key), hostname=pod.hostname,
                         pause_pid=pause.pid if pause else None, containers=containers)

    # --- delete ---------------------------------------------------------------------
    def delete(self, namespace: str, name: str) -> None:
        self.delete_many([(namespace, name)])

    def delete_many(self, pods: list[tuple[str, str]]) -> None:
        """Stop the pods' processes, CNI DEL, remove their namespaces and files. Idempotent.
        Many at once, as a Deployment's pods go: one grace period and one look through /proc
        for them all, not one each."""
        procs = []
        for namespace, name in pods:
            key = names.pod_key(namespace, name)
            procs += [*self.containers.pop(key, []), *filter(None, [self.pause.pop(key, None)])]
            self.pod_ips.pop(key, None)
        _terminate(procs)
        netns = [names.pod_netns(self.lab.name, ns, name) for ns, name in pods]
        # anything else still in them (a `kube-netlab exec` session) would keep the namespace alive
        _kill_now([pid for pids in pids_by_netns(netns).values() for pid in pids if pid != os.getpid()])
        # CNI DEL waits in the kernel (a veth's unregistration ends in rcu_barrier()), not on
        # the CPU: several at once overlap those waits
        jobs = [self._del_pool().submit(self._remove_sandbox, namespace, name, ns)
                for (namespace, name), ns in zip(pods, netns)]
        errors = [e for e in (j.exception() for j in jobs) if e is not None]
        if errors:
            raise errors[0]

    def _del_pool(self) -> ThreadPoolExecutor:
        # long-lived threads: pyroute2 builds an event loop per thread
        if self._pool is None:
            self._pool = ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="pod-delete")
        return self._pool

    def _remove_sandbox(self, namespace: str, name: str, netns: str) -> None:
        try:
            bridge.delete(self.conf, _container_id(namespace, name), f"/run/netns/{netns}")
        finally:
            remove_netns(netns, kill=False)
            shutil.rmtree(os.path.join(NETNS_ETC, netns), ignore_errors=True)
            shutil.rmtree(self.paths.pod_dir(netns), ignore_errors=True)

    def reap(self) -> None:
        """Collect the shim this agent started, should it exit (pod processes are the shim's)."""
        self.shim.poll()


def _container_status(p: Proc) -> ContainerStatus:
    if p.restart_at is not None:
        return ContainerStatus(p.name, None, "waiting", p.poll_exit(), p.restarts, "CrashLoopBackOff", None)
    if p.exit_code is None:
        # running, or exited a moment ago and not yet handled by supervise() (which knows the
        # code and the restart policy): reported as the kubelet's last relist saw it
        return ContainerStatus(p.name, p.pid, "running", None, p.restarts, None, p.started_at)
    code = p.exit_code
    return ContainerStatus(p.name, p.pid, "terminated", code, p.restarts, "Completed" if code == 0 else "Error",
                           p.started_at)


def _terminate(procs: list[Proc], grace: float = 0.5) -> None:
    """SIGTERM every process's group (each runs in its own session), SIGKILL what is left
    after grace: one grace period for them all. Closes their pidfds."""
    live = [p for p in procs if p.alive()]
    for p in live:
        _signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        time.sleep(0.005)
        live = [p for p in live if p.alive()]
    for p in live:
        _signal_group(p.pid, signal.SIGKILL)
    for p in procs:
        p.close()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _kill_now(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

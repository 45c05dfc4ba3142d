"""The node's container shim: one small process per node that forks every pod process.

Like containerd-shim (here one per node, not one per pod), it is the parent of each pod's
pause process and containers, so it knows how each one ended: it writes the exit code
(the kubelet's convention: the status, or 128 + the signal) to the file the agent named
when it asked for the process, before reaping it. It outlives agent restarts, as
containerd-shim outlives the kubelet's.

Why a shim: a fork of this small, single-threaded process is about a millisecond. The
exec chain it replaces (`ip netns exec` + `unshare` + `sh` + `sleep` for the pause
process, `nsenter` + a Python interpreter for the echo server) cost tens of
milliseconds and ~12 MB per pod. The built-in echo container runs in the forked child
itself, already imported; every other container is exec'd, one exec.

What a child does before it runs, as `ip netns exec` and `nsenter` would:
  - pause: enter the pod's network namespace, unshare mount and UTS namespaces, make the
    mounts slaves, drop /run/netns (so other pods' namespace mounts do not propagate
    into every pod's mount namespace), remount /sys (so it shows the pod's links), bind
    /etc/netns/<pod>/* over /etc/* (resolv.conf), set the hostname, exec `sleep infinity`;
  - container: enter the pause process's network, UTS and mount namespaces, cd to its
    workingDir, take its env, its own session (so the agent stops it with its group).

Protocol: a unix stream socket, one JSON request a line, one JSON reply a line:
  {"op": "sandbox", "netns": path, "hostname": h, "etc": dir, "log": path, "exit": path}
  {"op": "start", "pause": pid, "argv": [...] | null, "echo": {...} | null, "env": {...},
   "cwd": dir | null, "log": path, "exit": path}
  -> {"pid": N} once the process runs (the pause process set up and exec'd, a container
     exec'd or, the echo server, listening), or {"error": "..."}

    python -m netlab.shim --socket /run/netlab/<lab>/nodes/<node>/shim.sock
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import gc
import json
import os
import select
import shutil
import signal
import socket
import sys
import traceback

from cni.netns import CLONE_NEWNET, MNT_DETACH, MS_BIND, MS_REC, check as _check, libc as _libc
from netlab.workload import echo

CLONE_NEWNS, CLONE_NEWUTS = 0x00020000, 0x04000000
MS_RDONLY, MS_SLAVE = 1, 1 << 19
CHILD_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}  # the ones the shim handles itself
SLEEP = shutil.which("sleep") or "/bin/sleep"

def exit_code(si_code: int, si_status: int) -> int:
    """The container's exit code as the kubelet reports it (from waitid's siginfo):
    the exit status, or 128 + the signal when killed."""
    return si_status if si_code == os.CLD_EXITED else 128 + si_status


# --- what a child does -----------------------------------------------------------------

def _enter_pod_sandbox(netns: str, hostname: str, etc_dir: str) -> None:
    """`ip netns exec` + `unshare --uts` + `hostname`, in this (forked) process."""
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    _check(_libc.setns(fd, CLONE_NEWNET), f"setns {netns}")
    os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare(mount, uts)")
    _check(_libc.mount(b"none", b"/", None, MS_SLAVE | MS_REC, None), "mount --make-rslave /")
    # the host's /run/netns is a shared mount: every pod namespace mounted there later would
    # propagate into this mount namespace too (a pod is O(pods) for the kernel); a pod needs none
    _libc.umount2(b"/run/netns", MNT_DETACH)
    # /sys shows the namespace that mounted it: mount it again from here (as ip netns exec does)
    _libc.umount2(b"/sys", MNT_DETACH)
    name = os.path.basename(netns).encode()
    if _libc.mount(name, b"/sys", b"sysfs", 0, None) != 0:
        _check(_libc.mount(name, b"/sys", b"sysfs", MS_RDONLY, None), "mount /sys")
    for entry in sorted(os.listdir(etc_dir)) if os.path.isdir(etc_dir) else []:
        src, dst = os.path.join(etc_dir, entry), os.path.join("/etc", entry)
        _check(_libc.mount(src.encode(), dst.encode(), b"none", MS_BIND, None), f"bind {src} on {dst}")
    host = hostname.encode()
    _check(_libc.sethostname(host, len(host)), "sethostname")


def _enter_pause(pause_pid: int) -> None:
    """`nsenter -t PAUSE -n -u -m`: open all three first (entering mnt changes what /proc shows)."""
    fds = [(os.open(f"/proc/{pause_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC), flag, ns)
           for ns, flag in (("net", CLONE_NEWNET), ("uts", CLONE_NEWUTS), ("mnt", CLONE_NEWNS))]
    for fd, flag, ns in fds:
        _check(_libc.setns(fd, flag), f"setns {ns} of pause process {pause_pid}")
        os.close(fd)


def _set_cmdline(argv: list[str]) -> None:
    """Show argv in /proc/self/cmdline (ps, top) for a forked child that runs code instead of
    exec'ing it, the way setproctitle(3) does: write over this process's own argument and
    environment strings (their addresses are in /proc/self/stat), as one line; the kernel reads
    an argument area whose last byte is not NUL up to the first NUL."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])  # stat fields 48-51
    end = env_end if env_start == arg_end else arg_end
    title = " ".join(argv).encode()[:end - arg_start - 1]
    ctypes.memset(arg_start, ord(" "), arg_end - arg_start)  # the last argument byte: not NUL
    ctypes.memmove(arg_start, title, len(title))
    ctypes.memset(arg_start + len(title), 0, 1 if len(title) < arg_end - arg_start - 1 else end - arg_start - len(title))


def _redirect(log_path: str) -> None:
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def _child_reset() -> None:
    """Leave the shim behind: default signals, no shim sockets, own session (the agent
    stops a pod process with its group)."""
    signal.set_wakeup_fd(-1)
    for sig in (*CHILD_SIGNALS, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_SIGNALS)
    os.setsid()


def _run_pause(req: dict, ready_w: int) -> None:
    _redirect(req["log"])
    _enter_pod_sandbox(req["netns"], req["hostname"], req["etc"])
    os.execv(SLEEP, ["sleep", "infinity"])  # ready_w is close-on-exec: EOF tells the shim it is set up


def _run_container(req: dict, ready_w: int) -> int:
    """Runs the container; the shim's reply waits until it has exec'd (ready_w closes on exec)
    or, for the echo server, listens on its ports with its name shown: "running" means running."""
    _redirect(req["log"])
    try:
        _enter_pause(req["pause"])
        os.chdir(req.get("cwd") or "/")
    except OSError as e:
        print(f"shim: cannot enter the pod: {e}", file=sys.stderr, flush=True)
        return 128  # the kubelet's StartError exit code
    os.environ.clear()
    os.environ.update(req.get("env") or {})
    if req.get("echo") is not None:
        _set_cmdline(req["argv"])  # what `ps` shows: the echo server's own command line
        return echo.run(**req["echo"], on_ready=lambda: os.close(ready_w))
    argv = req["argv"]
    try:
        os.execvpe(argv[0], argv, os.environ)
    except OSError as e:
        print(f"shim: exec {argv[0]}: {e.strerror}", file=sys.stderr, flush=True)
        return 127 if e.errno == errno.ENOENT else 126  # as a shell reports not found / not executable


# --- the shim -------------------------------------------------------------------------

class Shim:
    def __init__(self, sock_path: str):
        self.sock_path = sock_path
        self.exit_files: dict[int, str] = {}   # pid -> where its exit code goes
        self.conns: dict[int, tuple[socket.socket, bytearray]] = {}

    def serve(self) -> None:
        try:
            os.unlink(self.sock_path)  # a previous shim's, killed
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.sock_path)
        listener.listen(16)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so SIGCHLD wakes select
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        self.listener = listener
        while True:
            fds = [listener.fileno(), wake_r, *self.conns]
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                ready = []
            if wake_r in ready:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
            self.reap()
            for fd in ready:
                if fd == listener.fileno():
                    conn, _ = listener.accept()
                    conn.set_inheritable(False)
                    self.conns[conn.fileno()] = (conn, bytearray())
                elif fd in self.conns:
                    self._read(fd)

    def _read(self, fd: int) -> None:
        conn, buf = self.conns[fd]
        try:
            data = conn.recv(65536)
            buf += data
            while b"\n" in buf:
                line, _, rest = bytes(buf).partition(b"\n")
                buf[:] = rest
                try:
                    reply = self.handle(json.loads(line))
                except Exception as e:  # a bad request must not take the node's pods down
                    reply = {"error": f"{type(e).__name__}: {e}"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:  # the agent went away mid-request (killed): its pods stay ours
            data = b""
        if not data:
            del self.conns[fd]
            conn.close()

    def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op not in ("sandbox", "start"):
            return {"error": f"unknown op {op!r}: use sandbox or start"}
        try:
            os.unlink(req["exit"])  # the previous run's, if this is a restart
        except FileNotFoundError:
            pass
        if op == "sandbox":
            pid, failure = self._fork(lambda w: _run_pause(req, w), req["exit"], report_failure=True)
            if failure:
                return {"error": failure.strip().splitlines()[-1], "pid": pid}
            return {"pid": pid}
        # a container that cannot start exits with a code (127: not found), as with a runtime
        return {"pid": self._fork(lambda w: _run_container(req, w), req["exit"])[0]}

    def _fork(self, body, exit_file: str, report_failure: bool = False) -> tuple[int, str]:
        """Fork body(ready_w) and wait until the child closes ready_w (at exec, or when it says
        it is ready) or exits. Returns (pid, what it wrote there: a failure report)."""
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        # signals stay blocked across fork until the child has default handlers: a SIGTERM sent
        # to a new container must kill it, not run the shim's handler in it and be lost at exec
        signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_SIGNALS)
        gc.freeze()  # the child's collector leaves the shim's objects alone: their pages stay shared
        pid = os.fork()
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_SIGNALS)
        else:
            code = 1
            gc.enable()
            try:
                self.listener.close()
                for conn, _ in self.conns.values():
                    conn.close()
                _child_reset()
                code = body(ready_w)
            except BaseException:
                if report_failure:
                    os.write(ready_w, traceback.format_exc().encode())
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        self.exit_files[pid] = exit_file
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as r:
            return pid, r.read().decode(errors="replace")

    def reap(self) -> None:
        """Write each exited child's code to its exit file, then reap it: the agent sees the
        process gone only once the code is there to read."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            path = self.exit_files.pop(info.si_pid, None)
            if path:
                _write_exit(path, exit_code(info.si_code, info.si_status))
            os.waitpid(info.si_pid, 0)


def _write_exit(path: str, code: int) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{code}\n")
        os.replace(tmp, path)
    except OSError as e:  # the pod's directory is gone (deleted): nobody asks any more
        if e.errno != errno.ENOENT:
            raise


# --- the agent's side -----------------------------------------------------------------

class ShimError(RuntimeError):
    pass


class ShimClient:
    """The node agent's connection to its node's shim; starts the shim when none answers
    (first start, or it was killed). Not thread-safe: the pods controller alone uses it."""

    def __init__(self, sock_path: str, log_path: str):
        self.sock_path, self.log_path = sock_path, log_path
        self.sock: socket.socket | None = None
        self.rfile = None
        self.proc = None  # the shim, when this agent started it (reaped by poll)

    def sandbox(self, netns: str, hostname: str, etc_dir: str, log: str, exit_file: str) -> int:
        return self._call({"op": "sandbox", "netns": netns, "hostname": hostname, "etc": etc_dir,
                           "log": log, "exit": exit_file})

    def start(self, pause_pid: int, argv: list[str], env: dict, cwd: str | None, log: str, exit_file: str,
              echo_args: dict | None = None) -> int:
        return self._call({"op": "start", "pause": pause_pid, "argv": argv, "echo": echo_args, "env": env,
                           "cwd": cwd, "log": log, "exit": exit_file})

    def poll(self) -> None:
        if self.proc is not None:
            self.proc.poll()

    def _call(self, req: dict) -> int:
        for attempt in (1, 2):  # a shim that died between calls: start another, once
            try:
                if self.sock is None:
                    self._connect()
                self.sock.sendall(json.dumps(req).encode() + b"\n")
                line = self.rfile.readline()
                if not line:
                    raise ConnectionError("the shim closed the connection")
                break
            except OSError:
                self.close()
                if attempt == 2:
                    raise
        reply = json.loads(line)
        if "error" in reply:
            raise ShimError(reply["error"])
        return reply["pid"]

    def _connect(self) -> None:
        import subprocess
        import time
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.sock_path)
        except OSError:
            os.makedirs(os.path.dirname(self.sock_path), exist_ok=True)
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            with open(self.log_path, "ab") as log:
                # own session: it outlives an agent restart, as containerd-shim does the kubelet's
                self.proc = subprocess.Popen([sys.executable, "-m", "netlab.shim", "--socket", self.sock_path],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                                             start_new_session=True, close_fds=True)
            deadline = time.monotonic() + 10
            while True:
                try:
                    sock.connect(self.sock_path)
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        sock.close()
                        raise ShimError(f"the node's shim did not start (exit {self.proc.poll()}); "
                                        f"see {self.log_path}") from None
                    time.sleep(0.01)
        self.sock, self.rfile = sock, sock.makefile("rb")

    def close(self) -> None:
        if self.sock is not None:
            self.rfile.close()
            self.sock.close()
        self.sock = self.rfile = None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="kube-netlab's per-node container shim")
    p.add_argument("--socket", required=True, help="the unix socket the node agent talks to")
    a = p.parse_args(argv)
    gc.disable()  # the shim allocates little; no collection between forks to unshare pages (see _fork)
    Shim(a.socket).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

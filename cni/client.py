"""`netlab-bridge` as exec'd by a runtime: a thin client that hands the
request to the node's warm daemon (cni.daemon) and, when none answers,
runs the plugin in this process.

Every import here is a C builtin: a runtime pays this file's start-up on
every ADD and DEL, and `json`/`socket` alone cost ~10 ms (their `re` and
`enum`). The wire format is therefore plain bytes:
  request: KEY=VALUE\\0 ... \\0 followed by the stdin config
  reply:   <exit code>\\n followed by the plugin's stdout
"""
import os
import sys

import _socket

SOCKET_DIR_ENV = "NETLAB_CNI_SOCKET_DIR"
DEFAULT_SOCKET_DIR = "/run/netlab/cni"
ENV_KEYS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


def socket_path(socket_dir=None, inode=None):
    """The daemon serving a network namespace listens on a socket named after its inode."""
    if socket_dir is None:
        socket_dir = os.environ.get(SOCKET_DIR_ENV, DEFAULT_SOCKET_DIR)
    if inode is None:
        inode = os.stat("/proc/thread-self/ns/net").st_ino
    return f"{socket_dir}/netns-{inode}.sock"


def encode_request(env, stdin):
    fields = [f"{k}={env[k]}".encode() for k in ENV_KEYS if k in env]
    return b"\0".join(fields) + b"\0\0" + stdin


def decode_request(data):
    head, _, stdin = data.partition(b"\0\0")
    env = dict(f.decode().split("=", 1) for f in head.split(b"\0") if f)
    return env, stdin


def recv_all(sock):
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def request(env, stdin, socket_dir=None):
    """Send one invocation to this namespace's daemon: (exit code, stdout) or None if none answers."""
    path = socket_path(socket_dir)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.sendall(encode_request(env, stdin))
        s.shutdown(_socket.SHUT_WR)
        reply = recv_all(s)
    except OSError:
        return None  # no daemon, or a dead one's stale socket: run in-process
    finally:
        s.close()
    code, _, out = reply.partition(b"\n")
    if not code.isdigit():
        return None
    return int(code), out.decode()


LAUNCHER_NAME = "netlab-bridge"


def launcher_text(python=None, root=None):
    """The executable a runtime finds in its CNI bin directory. `-I -S`: no site (its .pth files and
    path scans are a third of this client's start-up; the plugin needs nothing from site-packages),
    no PYTHON* variables from the runtime's environment; the package is found at the absolute path
    of this checkout or install."""
    python = python or sys.executable
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for what, path in (("the Python interpreter", python), ("the package directory", root)):
        if any(c.isspace() for c in path) or len(path) > 200:
            raise ValueError(f"{what} {path!r} cannot go into a #! line (whitespace, or longer than 200 "
                             "characters): install kube-netlab under a shorter path without spaces")
    return (f"#!{python} -IS\n"
            "# Written by `netlab-bridge install-cni`: the exec'd CNI plugin, a thin client of the\n"
            "# node's warm daemon (`netlab-bridge serve`); run it again after moving kube-netlab.\n"
            f"import sys\nsys.path.insert(0, {root!r})\nfrom cni.client import main\nmain()\n")


def install_cni(directory="/opt/cni/bin"):
    """Write DIR/netlab-bridge (atomically: a runtime may be exec'ing the old one); returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = f"{directory}/{LAUNCHER_NAME}"
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(launcher_text())
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def main():
    command = sys.argv[1:2]
    if command == ["serve"]:
        from .daemon import serve_main
        sys.exit(serve_main(sys.argv[2:]))
    if command == ["install-cni"]:
        args = sys.argv[2:]
        if len(args) > 1 or (args and args[0].startswith("-")):
            sys.exit("usage: netlab-bridge install-cni [DIR]   (default /opt/cni/bin; put DIR in CNI_PATH)")
        print(install_cni(*args))
        sys.exit(0)
    stdin = sys.stdin.buffer.read()
    reply = request(os.environ, stdin)
    if reply is None:  # the plugin imports the standard library only: no site-packages needed under -S
        from . import skel
        from .main import bridge
        reply = skel.execute(bridge.HANDLERS, os.environ, stdin)
    code, out = reply
    if out:
        sys.stdout.write(out + "\n")
    sys.exit(code)

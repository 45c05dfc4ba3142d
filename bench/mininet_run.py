#!/usr/bin/python3
"""Mininet's side of bench/lab.py: one Linux bridge (LinuxBridge), no controller,
N hosts linked to it; times build+start ("up") and net.stop() ("delete").

Runs under the system python3 (Debian's `mininet` package), and ONLY inside a
throwaway network namespace that bench/lab.py creates and deletes: Mininet puts
its switch in the namespace it runs in, and its cleanup deletes by name
pattern. This script never calls that cleanup (`mn -c`).

Protocol on stdout/stdin (one JSON object a line):
  -> {"up": seconds, "hosts": [pid of each host's shell], "switch": pid, "driver": pid}
  <- any line (or end of input): stop now; the parent reads the hosts' memory in between
  -> {"delete": seconds}

    ip netns exec bm<pid> /usr/bin/python3 bench/mininet_run.py --hosts 200
"""
import argparse
import os
import json
import resource
import signal
import sys
import time


class Stop(Exception):
    pass


def _on_term(signum, frame):
    raise Stop(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description="Mininet 2.3, LinuxBridge, no controller: time up and stop of N hosts")
    ap.add_argument("--hosts", type=int, required=True)
    args = ap.parse_args()
    if not 1 <= args.hosts <= 4000:
        raise SystemExit(f"--hosts {args.hosts}: use 1-4000")
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)

    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from mininet.nodelib import LinuxBridge
    from mininet.topo import SingleSwitchTopo

    setLogLevel("warning")
    # Mininet.init() would run fixLimits(), which raises global sysctls (kernel.pty.max, ...) on the
    # machine: not ours to change. Its per-process part, the open file limit, is done here instead.
    Mininet.inited = True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(16384, hard)), hard))

    net = None
    try:
        t0 = time.perf_counter()
        net = Mininet(topo=SingleSwitchTopo(args.hosts), switch=LinuxBridge, controller=None,
                      autoSetMacs=False, autoStaticArp=False, waitConnected=False)
        net.start()
        up = time.perf_counter() - t0
        h1, hn = net.hosts[0], net.hosts[-1]
        if args.hosts > 1 and "1 received" not in h1.cmd("ping", "-c1", "-W2", hn.IP()):
            raise SystemExit(f"Mininet's {h1.name} does not reach {hn.name} ({hn.IP()}): the bench measured nothing")
        print(json.dumps({"up": up, "hosts": [h.shell.pid for h in net.hosts],
                          "switch": net.switches[0].shell.pid, "driver": os.getpid()}), flush=True)
        sys.stdin.readline()
        t0 = time.perf_counter()
        net.stop()
        delete = time.perf_counter() - t0
        net = None
        print(json.dumps({"delete": delete}), flush=True)
        return 0
    except Stop:
        return 130
    finally:
        if net is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            net.stop()


if __name__ == "__main__":
    sys.exit(main())

"""Runs INSIDE the qemu guest that bench/proxy.py --ipvs boots (Debian's kernel,
which has IP_VS and the dummy driver; tests/kernel/harness.py): the IPVS
proxier's full sync of N Services x 2 endpoints and one-Service changes in one
namespace, beside the tools alone building the same virtual servers in
another (`ip -batch`: kube-ipvs0 and its addresses; `ipvsadm -R`: virtual and
real servers). Prints one `RESULT {json}` line. One process on purpose:
Python starts slowly under TCG; both sides run under the same emulation.

    .venv/bin/python bench/ipvs_guest.py N CHANGES
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import NODE, fresh_netns, median, synthetic_state, timed, tool, with_service  # noqa: E402
from cni import netns  # noqa: E402
from proxy.ipvs import IpvsProxier  # noqa: E402


def tool_texts(state) -> tuple[str, str]:
    """(ip -batch, ipvsadm -R) input building what the proxier builds for state (rr, masquerade)."""
    ip = ["link add kube-ipvs0 type dummy"]
    ipvs = []
    for name, svc in sorted(state.services.items()):
        ip.append(f"addr add {svc.cluster_ip}/32 dev kube-ipvs0")
        vs = f"-t {svc.cluster_ip}:{svc.port}"
        ipvs.append(f"-A {vs} -s rr")
        ipvs += [f"-a {vs} -r {ep.ip}:{ep.port} -m -w 1" for ep in state.endpoints_of(name)]
    return "\n".join(ip) + "\n", "\n".join(ipvs) + "\n"


def main() -> int:
    n, changes = int(sys.argv[1]), int(sys.argv[2])
    state = synthetic_state(n)
    out = {"services": n, "ours_change": [], "tool_change": []}
    with fresh_netns("ours") as ours_ns, fresh_netns("tool") as tool_ns:
        with netns.entered(ours_ns):
            proxier = IpvsProxier(NODE)
            out["ours_full"], result = timed(lambda: proxier.sync(state))
            if result.error:
                raise SystemExit(f"IPVS full sync failed: {result.error}")
        ip_text, ipvs_text = tool_texts(state)
        out["tool_full"] = tool(tool_ns, ["ip", "-batch", "-"], ip_text) + tool(tool_ns, ["ipvsadm", "-R"], ipvs_text)
        for k in range(changes):
            new, name = with_service(state, n + k)
            with netns.entered(ours_ns):
                seconds, result = timed(lambda: proxier.sync(new, frozenset({name})))
            if result.error:
                raise SystemExit(f"IPVS change failed: {result.error}")
            out["ours_change"].append(seconds)
            svc = new.services[name]
            ip_one, ipvs_one = tool_texts(type(state)({name: svc}, {name: new.endpoints_of(name)}))
            out["tool_change"].append(tool(tool_ns, ["ip", "-batch", "-"], ip_one.split("\n", 1)[1])
                                      + tool(tool_ns, ["ipvsadm", "-R"], ipvs_one))
            state = new
        out["virtual_servers"] = subprocess.run(["ip", "netns", "exec", ours_ns, "ipvsadm", "-Ln"],
                                                capture_output=True, text=True).stdout.count("TCP ")
    out["median_change"] = [median(out["ours_change"]), median(out["tool_change"])]
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

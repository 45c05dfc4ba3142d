#!/usr/bin/env python3
"""Service proxy sync: a full sync of N ClusterIP Services x 2 endpoints, and a
one-Service change on top of it, for each proxy mode, layout and backend this
kernel runs, beside the tool alone loading the same text, in the same run.

For each size and variant, in two fresh namespaces of our own:
  ours   the proxier (proxy.iptables.IptablesProxier with backend legacy or nft,
         proxy.nftables.NftablesProxier with layout kube-proxy or maps), built
         for the namespace, then timed: sync(state) (full: it reads the tables,
         renders, applies); then --changes times: add one Service and
         sync(new, changed={that Service}) (partial, KEP-3453 / incremental).
  tool   the same text the proxier handed its tool (its `last_text` after each
         sync) given to that tool alone in the other namespace, as the proxier
         runs it (`iptables-legacy-restore -w --noflush`,
         `iptables-nft-restore -w --noflush`, `nft -f -`), forked from a thread
         already in the namespace: the floor of what a sync can cost.
Between measurements the bench waits until the kernel has freed the previous
namespaces (their rule sets are torn down in a workqueue).

iptables-nft-restore is slow at scale here (~79 s for 10k; shared/DESIGN.md),
so it runs only up to --nft-backend-max Services (default 5000); pass
--nft-backend-max 10000 to run it at 10k too. IPVS needs a kernel with IP_VS:
--ipvs N boots Debian's kernel under qemu (tests/kernel/harness.py, TCG, no
KVM) and runs bench/ipvs_guest.py there: the IPVS proxier beside `ip -batch` +
`ipvsadm -R` building the same virtual servers, both under the same emulation
(so only their ratio compares with the host's figures).

    sudo .venv/bin/python bench/proxy.py [--sizes 1000,5000,10000]
        [--modes iptables-legacy,iptables-nft,nftables,nftables-maps] [--changes 5] [--repeat 1]
        [--quick] [--ipvs 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (DATE, REPO, VARIANTS, fresh_netns, guarded, loadavg, machine, median, need_root,  # noqa: E402
                    parse_sizes, parse_variants, synthetic_state, timed, tool, with_service,
                    write_json)
from lab import settle  # noqa: E402

# issue 6's targets, for the nftables maps layout at 10k
TARGET_FULL_RATIO = 1.2
TARGET_CHANGE_S = 0.050
TARGET_SIZE = 10_000
# measured here by hand for shared/reference/kube-proxy-and-dns.md section 6 (seconds at 10k: full, change)
KNOWN = {"iptables-legacy": "legacy restore 10k: 1.5 s full, 0.57-0.69 s any change",
         "iptables-nft": "iptables-nft-restore 10k: ~79 s full",
         "nftables": "kube-proxy nftables layout via nft -f, 10k: 52.7 s full, 0.21 s a change",
         "nftables-maps": "slot-map layout via nft -f, 10k: 1.44 s full, under 10 ms a change"}


def measure(variant, n: int, changes: int) -> dict:
    """Full sync and `changes` one-Service changes, ours and the tool's, seconds."""
    state = synthetic_state(n)
    row = {"mode": variant.key, "services": n, "ours_change": [], "tool_change": []}
    with fresh_netns("ours") as ours_ns, fresh_netns("tool") as tool_ns:
        proxier = variant.proxier(ours_ns)
        row["ours_full"], result = timed(lambda: proxier.sync(state))
        if result.error or not result.full:
            raise RuntimeError(f"{variant.key} at {n}: full sync failed: {result.error or 'not full'}")
        row["lines"] = result.size
        row["tool_full"] = tool(tool_ns, variant.tool_argv, proxier.last_text)
        for k in range(changes):
            state, name = with_service(state, n + k)
            seconds, result = timed(lambda: proxier.sync(state, frozenset({name})))
            if result.error or result.full:
                raise RuntimeError(f"{variant.key} at {n}: change {k + 1} failed or went full: {result.error}")
            row["ours_change"].append(seconds)
            row["tool_change"].append(tool(tool_ns, variant.tool_argv, proxier.last_text))
    settle()
    return row


# what IpvsProxier needs loaded in Debian's kernel (as tests/kernel/test_ipvs.py boots it)
IPVS_MODULES = ["ip_vs", "ip_vs_rr", "dummy", "nf_conntrack", "nf_nat", "nf_tables", "nft_compat", "nft_chain_nat",
                "xt_mark", "xt_MASQUERADE", "xt_addrtype", "xt_comment", "xt_conntrack", "xt_tcpudp", "xt_set"]


def measure_repeated(variant, n: int, changes: int, repeat: int) -> dict:
    """measure() `repeat` times: the full syncs' medians (each run's pair kept), every change pooled."""
    runs = [measure(variant, n, changes) for _ in range(repeat)]
    row = {**runs[0], "full_runs": [(r["ours_full"], r["tool_full"]) for r in runs],
           "ours_change": [x for r in runs for x in r["ours_change"]],
           "tool_change": [x for r in runs for x in r["tool_change"]]}
    row["ours_full"], row["tool_full"] = (median([r[k] for r in runs]) for k in ("ours_full", "tool_full"))
    return row


def measure_ipvs(n: int, changes: int) -> dict | str:
    """The guest's figures, or why there are none."""
    sys.path.append(os.path.join(REPO, "tests", "kernel"))
    import harness
    try:
        run = harness.run_in_kernel(f".venv/bin/python bench/ipvs_guest.py {n} {changes}", IPVS_MODULES,
                                    timeout=1200)
    except harness.KernelUnavailable as e:
        return f"IPVS not measured: {e}"
    lines = [line for line in run.output.splitlines() if line.startswith("RESULT ")]
    if run.rc != 0 or not lines:
        return f"IPVS not measured: the guest failed:\n{run.explain()[-3000:]}"
    out = json.loads(lines[-1].removeprefix("RESULT "))
    out["boot_s"], out["vm_s"] = run.boot_seconds, run.seconds
    return out


def report(rows: list[dict], skipped: list[str], args, load0: str, ipvs: dict | str | None = None) -> None:
    print()
    print(f"Service proxy sync, {DATE}, {machine()}; load average at start / end: {load0} / {loadavg()}")
    print(f"N ClusterIP Services x 2 endpoints; full sync in a fresh namespace; change = add one Service, "
          f"partial sync; full: median of {args.repeat} run(s), change: median of {args.changes * args.repeat}; "
          "seconds")
    print(f"{'mode':<16} {'services':>8} {'lines':>7} | {'ours full':>9} {'tool full':>9} {'x tool':>6} | "
          f"{'ours change':>11} {'tool change':>11} {'x tool':>6}")
    for r in rows:
        oc, tc = median(r["ours_change"]), median(r["tool_change"])
        print(f"{r['mode']:<16} {r['services']:>8} {r['lines']:>7} | {r['ours_full']:9.3f} {r['tool_full']:9.3f} "
              f"{r['ours_full'] / r['tool_full']:6.2f} | {oc:11.4f} {tc:11.4f} {oc / tc:6.2f}")
        if len(r["full_runs"]) > 1:
            ratios = sorted(o / t for o, t in r["full_runs"])
            print(f"{'':>34}full ours / tool per run: {', '.join(f'{x:.2f}' for x in ratios)}")
    for r in rows:
        if r["mode"] == "nftables-maps" and r["services"] == TARGET_SIZE:
            ratio, change = r["ours_full"] / r["tool_full"], median(r["ours_change"])
            print(f"target (issue 6), nftables maps at {TARGET_SIZE}: full sync <= {TARGET_FULL_RATIO}x nft -f "
                  f"alone: {'met' if ratio <= TARGET_FULL_RATIO else 'NOT met'} ({ratio:.2f}x); one-Service "
                  f"change <= {TARGET_CHANGE_S * 1000:.0f} ms: {'met' if change <= TARGET_CHANGE_S else 'NOT met'} "
                  f"({change * 1000:.1f} ms)")
    for note in skipped:
        print(f"skipped: {note}")
    if isinstance(ipvs, dict):
        oc, tc = ipvs["median_change"]
        print(f"IPVS under qemu/TCG (Debian's kernel; both sides emulated, compare the ratio only): "
              f"{ipvs['services']} Services full sync ours {ipvs['ours_full']:.2f} s, ip -batch + ipvsadm -R "
              f"{ipvs['tool_full']:.2f} s ({ipvs['ours_full'] / ipvs['tool_full']:.2f}x); one change ours "
              f"{oc * 1000:.0f} ms, tools {tc * 1000:.0f} ms ({oc / tc:.2f}x); VM boot {ipvs['boot_s']:.0f} s")
    else:
        print(ipvs or "IPVS: this kernel has no IP_VS; --ipvs N measures it under Debian's kernel in qemu")
    print("known costs of the tools here at 10k (shared/reference/kube-proxy-and-dns.md section 6):")
    for key in dict.fromkeys(r["mode"] for r in rows):
        print(f"  {key}: {KNOWN[key]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--sizes", default="1000,5000,10000", help="Service counts (default: %(default)s)")
    ap.add_argument("--modes", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--changes", type=int, default=5, help="one-Service changes per size and mode; median shown")
    ap.add_argument("--nft-backend-max", type=int, default=5000,
                    help="largest size run with iptables-nft (~79 s for 10k here; default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size and mode (fresh namespaces each)")
    ap.add_argument("--quick", action="store_true", help="sizes 1000 only, 2 changes (a smoke run)")
    ap.add_argument("--ipvs", type=int, default=0, metavar="N",
                    help="also IPVS at N Services, under Debian's kernel in qemu (slow: minutes); 0: not")
    ap.add_argument("--json", metavar="FILE", help="also write the raw timings here")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.changes = "1000", 2
    sizes, variants = parse_sizes(args.sizes), parse_variants(args.modes)
    if args.changes < 1 or args.repeat < 1:
        raise SystemExit("--changes and --repeat: at least 1")
    need_root("bench/proxy.py")
    load0, rows, skipped, ipvs = loadavg(), [], [], []

    def body():
        settle()
        for n in sizes:
            for variant in variants:
                if variant.key == "iptables-nft" and n > args.nft_backend_max:
                    skipped.append(f"iptables-nft at {n} (above --nft-backend-max {args.nft_backend_max})")
                    continue
                rows.append(measure_repeated(variant, n, args.changes, args.repeat))
                r = rows[-1]
                print(f"  {variant.key:<16} {n:>6}: full ours {r['ours_full']:.3f} s, tool {r['tool_full']:.3f} s; "
                      f"change ours {median(r['ours_change']) * 1000:.1f} ms, "
                      f"tool {median(r['tool_change']) * 1000:.1f} ms", flush=True)
        if args.ipvs:
            ipvs.append(measure_ipvs(args.ipvs, args.changes))

    if guarded(body):
        return 130
    report(rows, skipped, args, load0, ipvs[0] if ipvs else None)
    write_json(args.json, rows=rows, skipped=skipped, ipvs=ipvs[0] if ipvs else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

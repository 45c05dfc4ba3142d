"""Which rule rewrote the probe: NAT seen on the hops, attributed to the rule
that did it and checked against the kernel.

- iptables (either backend): `iptables-save -c` before and after the probe; a
  NEW connection walks the nat table once, so the nat rules whose packet
  counters moved are the probe's path (KUBE-SERVICES -> KUBE-SVC-* ->
  KUBE-SEP-* -> DNAT, KUBE-POSTROUTING -> MASQUERADE), and a filter rule that
  moved with -j REJECT/DROP is what refused it.
- nftables (kube-proxy's table has no counters): the endpoint chain (layout
  kube-proxy) or the slot-map element (layout maps) that DNATs to the address
  the probe was seen going to, read from `nft list table ip kube-proxy`.
- conntrack: the entry the kernel made for the probe (`conntrack -L`), the
  translation as the kernel remembers it.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

_COUNTED = re.compile(r"^\[(\d+):(\d+)\] (-A (\S+) .*)$")
_JUMP = re.compile(r"-j (\S+)")
KUBE_PROXY_TABLE = ("ip", "kube-proxy")


@dataclass(frozen=True)
class CountedRule:
    table: str
    chain: str
    rule: str            # "-A KUBE-SEP-... -j DNAT --to-destination 10.244.2.2:8080", as iptables-save prints it
    packets: int         # how many packets it counted between the two snapshots

    @property
    def target(self) -> str | None:
        m = _JUMP.search(self.rule)
        return m.group(1) if m else None


def parse_counters(saved: str) -> dict[tuple[str, str, int], tuple[str, int]]:
    """`iptables-save -c` -> {(table, chain, position in chain): (rule, packets)}."""
    out: dict[tuple[str, str, int], tuple[str, int]] = {}
    table = ""
    position: dict[tuple[str, str], int] = {}
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        m = _COUNTED.match(line)
        if m:
            chain = m.group(4)
            n = position.get((table, chain), 0)
            position[(table, chain)] = n + 1
            out[(table, chain, n)] = (m.group(3), int(m.group(1)))
    return out


def counter_diff(before: dict, after: dict) -> list[CountedRule]:
    """Rules that counted packets between the snapshots, in table order. Keys end with
    (table, chain, position); anything before (a backend's name) only keeps snapshots apart."""
    moved = []
    for key, (rule, packets) in after.items():
        old = before.get(key)
        delta = packets - (old[1] if old and old[0] == rule else 0)
        if delta > 0:
            moved.append(CountedRule(key[-3], key[-2], rule, delta))
    return moved


def chain_path(counted: list[CountedRule], table: str, last_chain: str, entry: str | None = None) -> list[str]:
    """The chains that led to last_chain through counted jumps: PREROUTING, KUBE-SERVICES, KUBE-SVC-...,
    KUBE-SEP-... When two counted chains jump to the same one (PREROUTING and OUTPUT both to
    KUBE-SERVICES), entry names the hook the probe came through."""
    path = [last_chain]
    callers: dict[str, list[str]] = {}
    for r in counted:
        if r.table == table and r.target and r.chain not in callers.get(r.target, []):
            callers.setdefault(r.target, []).append(r.chain)
    while path[0] in callers and len(path) < 16:
        options = [c for c in callers[path[0]] if c not in path]
        if not options:
            break
        path.insert(0, entry if entry in options else options[0])
    return path


def dnat_rule(counted: list[CountedRule], to: str, entry: str | None = None) -> dict | None:
    """The counted DNAT rule that sent the probe to `to` (IP:port), with the chains that chose it."""
    for r in counted:
        if r.table == "nat" and r.target == "DNAT" and re.search(rf"--to-destination {re.escape(to)}(\s|$)", r.rule):
            return {"rule": r.rule, "chain": r.chain, "chains": chain_path(counted, "nat", r.chain, entry)}
    return None


def snat_rule(counted: list[CountedRule]) -> dict | None:
    for r in counted:
        if r.table == "nat" and r.target in ("MASQUERADE", "SNAT"):
            return {"rule": r.rule, "chain": r.chain, "chains": chain_path(counted, "nat", r.chain, "POSTROUTING")}
    return None


def refusing_rules(counted: list[CountedRule]) -> list[CountedRule]:
    """Counted rules that end a packet's life: REJECT or DROP (filter, or a raw/mangle drop)."""
    return [r for r in counted if r.target in ("REJECT", "DROP")]


# --- nftables (kube-proxy's table) --------------------------------------------------------

def nft_chains(listing: str) -> dict[str, list[str]]:
    """`nft list table` text -> {chain or map name: its lines}."""
    out: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        m = re.match(r"^\s*(chain|map|set) (\S+) \{", line)
        if m:
            current = m.group(2)
            out[current] = []
        elif current is not None:
            out[current].append(line.strip())
    return out


def nft_dnat_rule(listing: str, vip: str, to: str, service: str | None = None,
                  vip_port: str | None = None) -> dict | None:
    """The kube-proxy nftables chain (or map element) that DNATs vip's traffic to `to` (IP:port).
    service ("ns/name") picks among Services sharing the endpoint (echo and echo-nodeport)."""
    ip, _, port = to.partition(":")
    chains = nft_chains(listing)
    for name, lines in chains.items():
        dnat = next((ln for ln in lines if f"dnat to {to}" in ln), None)
        if name.startswith("endpoint-") and dnat and (service is None or f"-{service}/" in name):
            hints = (f"{vip} . ", f" . {vip_port} :") if vip_port else (f"{vip} . ",)
            return {"rule": f"chain {name}: {dnat}", "chain": name, "chains": _callers(chains, name, hints)}
    for name, lines in chains.items():   # layout maps: slot elements "VIP . tcp . 80 . 1 : IP . 8080"
        element = next((ln for ln in lines if ln.startswith(f"{vip} . ") and f": {ip} . {port}" in ln), None)
        if element is None:
            element = next((e.strip() for ln in lines for e in ln.split(",")
                            if e.strip().lstrip("elements = {").startswith(f"{vip} . ") and f": {ip} . {port}" in e),
                           None)
        if element:
            element = element.replace("elements = {", "").strip(" ,}")
            return {"rule": f"map {name}: {element}", "chain": name, "chains": ["services", name]}
    return None


def _callers(chains: dict[str, list[str]], name: str, hints: tuple[str, ...] = ()) -> list[str]:
    """name and the chains and verdict maps that lead to it (nat-prerouting, services, service-ips, ...).
    A Service chain has several ways in (service-ips, and its NodePort's external- chain): the way
    whose references mention a hint (the probe's original address or port) most wins."""
    def ways_in(target: str, seen: tuple[str, ...]) -> tuple[int, list[str]]:
        if len(seen) >= 8:
            return 0, [target]
        ref = re.compile(rf"(jump |goto |@){re.escape(target)}(\s|,|$|\}})")
        best = (0, [target])
        for c, body in chains.items():
            if c in seen:
                continue
            lines = [ln for ln in (re.sub(r'comment "[^"]*"', "", x) for x in body) if ref.search(ln)]
            if lines:
                score, path = ways_in(c, seen + (c,))
                score += any(h in ln for ln in lines for h in hints)
                if score > best[0] or len(best[1]) == 1:
                    best = (score, path + [target])
        return best
    return ways_in(name, (name,))[1]


def nft_masquerade_rule(listing: str) -> dict | None:
    for name, lines in nft_chains(listing).items():
        rule = next((ln for ln in lines if re.search(r"(^|\s)masquerade(\s|$)", ln)), None)
        if rule:
            return {"rule": f"chain {name}: {rule}", "chain": name, "chains": [name]}
    return None


# --- reading the kernel ------------------------------------------------------------------

def _run(netns: str, argv: list[str]) -> str:
    res = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else ""


def iptables_save(netns: str, backend: str = "nft") -> str:
    return _run(netns, [f"iptables-{backend}-save", "-c"])


def nft_table(netns: str) -> str:
    return _run(netns, ["nft", "list", "table", *KUBE_PROXY_TABLE])


def conntrack_entry(netns: str, proto: str, src: str, sport: int | None) -> str | None:
    """The conntrack entry of the probe's connection in netns (orig src and port), as conntrack -L prints it."""
    argv = ["conntrack", "-L", "-p", proto, "--orig-src", src]
    if sport is not None and proto != "icmp":
        argv += ["--orig-port-src", str(sport)]
    lines = [ln.strip() for ln in _run(netns, argv).splitlines() if ln.strip()]
    return lines[0] if lines else None

"""flannel's --ip-masq rules (and its FORWARD accept rules) in a node namespace.

The rule set mirrors flannel's pkg/trafficmngr/iptables `masqRules`, in
order, in chain FLANNEL-POSTRTG (nat) jumped to from POSTROUTING:

    RETURN      -m mark --mark 0x4000/0x4000      kube-proxy masquerades these itself
    RETURN      -s <pod /24> -d <cluster>         pod to pod keeps its source
    RETURN      -s <cluster> -d <pod /24>
    RETURN      ! -s <cluster> -d <pod /24>       outside to a local pod: no NAT
    MASQUERADE  -s <cluster> ! -d 224.0.0.0/4     pod to outside
    MASQUERADE  ! -s <cluster> -d <cluster>       host to a remote pod

and, like --iptables-forward-rules (on by default), FLANNEL-FWD (filter)
accepting -s/-d <cluster> from FORWARD.

Applying: one `iptables-save` to read, then, only if something differs, one
`iptables-restore --noflush -w`. Declaring a chain in restore input flushes
it, so our chains are rewritten whole while every other chain (kube-proxy's
in the same namespace) stays as it is. Both run inside the node namespace;
`iptables` here is whichever backend the host's binary uses (nft on
Debian 12), the same one kube-proxy's restore will use.
"""
from __future__ import annotations

import ipaddress
import re

from .namespace import netns_exists, run_in

POSTRTG_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
KUBE_PROXY_MARK = "0x4000/0x4000"
MASQ_COMMENT = "flanneld masq"
FWD_COMMENT = "flanneld forward"


def _c(comment: str) -> str:
    return f'-m comment --comment "{comment}"'


def masq_rules(cluster_cidr: str, pod_cidr: str, *, random_fully: bool = True) -> list[str]:
    """The FLANNEL-POSTRTG rules, written the way iptables-save prints them
    (so a saved ruleset compares equal line by line)."""
    cluster = str(ipaddress.ip_network(cluster_cidr, strict=False))
    pod = str(ipaddress.ip_network(pod_cidr, strict=False))
    c = _c(MASQ_COMMENT)
    masq = "MASQUERADE --random-fully" if random_fully else "MASQUERADE"
    a = f"-A {POSTRTG_CHAIN}"
    return [
        f"{a} -m mark --mark {KUBE_PROXY_MARK} {c} -j RETURN",
        f"{a} -s {pod} -d {cluster} {c} -j RETURN",
        f"{a} -s {cluster} -d {pod} {c} -j RETURN",
        f"{a} ! -s {cluster} -d {pod} {c} -j RETURN",
        f"{a} -s {cluster} ! -d 224.0.0.0/4 {c} -j {masq}",
        f"{a} ! -s {cluster} -d {cluster} {c} -j {masq}",
    ]


def forward_rules(cluster_cidr: str) -> list[str]:
    cluster = str(ipaddress.ip_network(cluster_cidr, strict=False))
    c = _c(FWD_COMMENT)
    return [f"-A {FWD_CHAIN} -s {cluster} {c} -j ACCEPT",
            f"-A {FWD_CHAIN} -d {cluster} {c} -j ACCEPT"]


# (table, builtin chain, our chain, jump rule)
_JUMPS = {
    POSTRTG_CHAIN: ("nat", "POSTROUTING", f"-A POSTROUTING {_c(MASQ_COMMENT)} -j {POSTRTG_CHAIN}"),
    FWD_CHAIN: ("filter", "FORWARD", f"-A FORWARD {_c(FWD_COMMENT)} -j {FWD_CHAIN}"),
}


def parse_save(text: str) -> dict[str, dict]:
    """iptables-save output -> {table: {"chains": set, "rules": [lines]}}."""
    tables: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), {"chains": set(), "rules": []})
        elif cur is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            cur["chains"].add(line[1:].split()[0])
        elif line.startswith("-A "):
            cur["rules"].append(line.strip())
    return tables


def _chain_rules(tables, table, chain):
    t = tables.get(table, {"chains": set(), "rules": []})
    return chain in t["chains"], [r for r in t["rules"] if r.startswith(f"-A {chain} ")]


def restore_text(saved: str, wanted: dict[str, list[str]]) -> str:
    """The iptables-restore --noflush input that turns `saved` into `wanted`
    ({our chain: rules}); empty when nothing differs. Pure, so tests pin it."""
    tables = parse_save(saved)
    out: dict[str, list[str]] = {}
    for chain, rules in wanted.items():
        table, _, jump = _JUMPS[chain]
        exists, have = _chain_rules(tables, table, chain)
        jumps = sum(1 for r in tables.get(table, {"rules": []})["rules"] if r == jump)
        lines = []
        if not exists or have != rules:
            lines.append(f":{chain} - [0:0]")  # declared = created or flushed
            lines.extend(rules)
        if jumps == 0:
            lines.append(jump)
        for _ in range(jumps - 1):  # duplicates from an interrupted older run
            lines.append("-D" + jump[2:])
        if lines:
            out.setdefault(table, []).extend(lines)
    return "".join(f"*{t}\n" + "\n".join(lines) + "\nCOMMIT\n" for t, lines in out.items())


def removal_text(saved: str, chains=(POSTRTG_CHAIN, FWD_CHAIN)) -> str:
    """Restore input deleting our jumps and chains; empty when none exist."""
    tables = parse_save(saved)
    out: dict[str, list[str]] = {}
    for chain in chains:
        table, builtin, _ = _JUMPS[chain]
        t = tables.get(table)
        if not t:
            continue
        lines = ["-D" + r[2:] for r in t["rules"]
                 if r.startswith(f"-A {builtin} ") and r.endswith(f"-j {chain}")]
        if chain in t["chains"]:
            # any other jump into it (e.g. added by hand) would make -X fail
            lines += ["-D" + r[2:] for r in t["rules"]
                      if r.endswith(f"-j {chain}") and not r.startswith(f"-A {builtin} ")]
            lines += [f":{chain} - [0:0]", f"-X {chain}"]
        if lines:
            out.setdefault(table, []).extend(lines)
    return "".join(f"*{t}\n" + "\n".join(lines) + "\nCOMMIT\n" for t, lines in out.items())


_random_fully: bool | None = None


def _supports_random_fully(node_ns: str) -> bool:
    # like go-iptables HasRandomFully: iptables >= 1.6.2; the binary is the
    # same for every namespace, so ask once (inside a lab namespace)
    global _random_fully
    if _random_fully is None:
        out = run_in(node_ns, ["iptables", "--version"]).stdout
        m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
        _random_fully = bool(m) and tuple(map(int, m.groups())) >= (1, 6, 2)
    return _random_fully


def _save(node_ns: str) -> str:
    return run_in(node_ns, ["iptables-save"]).stdout


def _restore(node_ns: str, text: str) -> None:
    run_in(node_ns, ["iptables-restore", "--noflush", "-w"], input=text)


def ensure_masquerade(node_ns: str, cluster_cidr: str, pod_cidr: str, *,
                      random_fully: bool | None = None, forward: bool = True) -> bool:
    """Converge flannel's masquerade (and, with forward=True, FORWARD accept)
    rules in node_ns. Returns True if iptables-restore had to run.

    random_fully: None means "if iptables supports it", as flannel does.
    """
    if random_fully is None:
        random_fully = _supports_random_fully(node_ns)
    wanted = {POSTRTG_CHAIN: masq_rules(cluster_cidr, pod_cidr, random_fully=random_fully)}
    if forward:
        wanted[FWD_CHAIN] = forward_rules(cluster_cidr)
    text = restore_text(_save(node_ns), wanted)
    if not text:
        return False
    _restore(node_ns, text)
    return True


def remove_masquerade(node_ns: str, *, forward: bool = True) -> bool:
    """Delete our jumps and chains from node_ns; absent rules or namespace are fine."""
    if not netns_exists(node_ns):
        return False
    chains = (POSTRTG_CHAIN, FWD_CHAIN) if forward else (POSTRTG_CHAIN,)
    text = removal_text(_save(node_ns), chains)
    if not text:
        return False
    _restore(node_ns, text)
    return True

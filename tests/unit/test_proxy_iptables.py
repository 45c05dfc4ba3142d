"""kube-proxy's iptables layout, rendered without a kernel: names and hashes
pinned to kube-proxy's fixtures, the rule text compared with the reference's
iptables-save example, and the policies, affinity and partial syncs."""
from __future__ import annotations

import os
import shlex
from collections import Counter

import pytest

from proxy.iptables import backend as be
from proxy.iptables import names as n
from proxy.iptables.proxier import cleanup_text
from proxy.types import check_node
from proxy.iptables.render import JUMP_RULES, RenderCache, render
from proxy.types import Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName

NODE = ProxyNode("node-a", ("192.168.56.11",), "10.244.0.0/16")
WEB = ServicePortName("default", "web", "http")
WEB_NP = ServicePortName("default", "web-np", "http")
DNS = ServicePortName("kube-system", "kube-dns", "dns")

# The reference file's synthesized `iptables-save -t nat` (section 1), verbatim.
REFERENCE_NAT = r'''
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web-np:http" -m tcp --dport 30080 -j KUBE-EXT-2262UYG6EQJDKK3I
-A KUBE-SERVICES -d 10.96.120.15/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-CDGGSHYLG3RE2FKL
-A KUBE-SERVICES -d 10.96.33.7/32 -p tcp -m comment --comment "default/web-np:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-2262UYG6EQJDKK3I
-A KUBE-SERVICES ! -d 127.0.0.0/8 -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-2262UYG6EQJDKK3I -m comment --comment "masquerade traffic for default/web-np:http external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-2262UYG6EQJDKK3I -j KUBE-SVC-2262UYG6EQJDKK3I
-A KUBE-SEP-AFGSLHOD2HFNCBX4 -s 10.244.1.5/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-AFGSLHOD2HFNCBX4 -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SEP-2RIJ5GIYXEFH6G4D -s 10.244.2.7/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-2RIJ5GIYXEFH6G4D -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.2.7:8080
-A KUBE-SEP-LQG4A4EIQFB4AGAG -s 10.244.1.9/32 -m comment --comment "default/web-np:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-LQG4A4EIQFB4AGAG -p tcp -m comment --comment "default/web-np:http" -m tcp -j DNAT --to-destination 10.244.1.9:8080
-A KUBE-SVC-CDGGSHYLG3RE2FKL ! -s 10.244.0.0/16 -d 10.96.120.15/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.1.5:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-AFGSLHOD2HFNCBX4
-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.2.7:8080" -j KUBE-SEP-2RIJ5GIYXEFH6G4D
-A KUBE-SVC-2262UYG6EQJDKK3I ! -s 10.244.0.0/16 -d 10.96.33.7/32 -p tcp -m comment --comment "default/web-np:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-2262UYG6EQJDKK3I -m comment --comment "default/web-np:http -> 10.244.1.9:8080" -j KUBE-SEP-LQG4A4EIQFB4AGAG
'''


def example_state() -> ProxyState:
    """The reference example's services and endpoints."""
    return ProxyState(
        {WEB: ServicePort(WEB, "TCP", "10.96.120.15", 80),
         WEB_NP: ServicePort(WEB_NP, "TCP", "10.96.33.7", 80, node_port=30080)},
        {WEB: (Endpoint("10.244.1.5", 8080, "node-a"), Endpoint("10.244.2.7", 8080, "node-b")),
         WEB_NP: (Endpoint("10.244.1.9", 8080, "node-a"),)})


def _groups(tokens: list[str]) -> Counter:
    """A rule's options as a multiset of (negated, option, values), normalized to what
    iptables-save prints: /32 on addresses, stored probabilities, --set-xmark."""
    groups, negate, i = [], False, 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            negate, i = True, i + 1
            continue
        values = []
        i += 1
        while i < len(tokens) and tokens[i] != "!" and not tokens[i].startswith("-"):
            values.append(tokens[i])
            i += 1
        if tok in ("-s", "-d") and "/" not in values[0]:
            values = [values[0] + "/32"]
        elif tok == "--probability":
            values = [n.saved_probability(values[0])]
        elif tok == "--or-mark":
            tok, values = "--set-xmark", [f"{values[0]}/{values[0]}"]
        elif tok == "--xor-mark":
            tok, values = "--set-xmark", [f"{values[0]}/0x0"]
        groups.append((negate, tok, tuple(values)))
        negate = False
    return Counter(groups)


def rules_by_chain(text: str, table: str | None = None) -> dict[str, list[Counter]]:
    """-A/-I rules of one table (or of bare rule text) by chain, in chain order."""
    out: dict[str, list[Counter]] = {}
    current = table is None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:] == table
        if not current or not line.startswith(("-A ", "-I ")):
            continue
        tokens = shlex.split(line)
        chain = tokens[1]
        if tokens[0] == "-I":   # -I CHAIN 1 ...: goes to the top
            out.setdefault(chain, []).insert(0, _groups(tokens[3:]))
        else:
            out.setdefault(chain, []).append(_groups(tokens[2:]))
    return out


def lines_of(text: str, chain: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"-A {chain} ")]


# --- names ------------------------------------------------------------------

def test_hashes_match_kube_proxy_fixtures():
    assert n.port_proto_hash("ns1/svc1:p80", "tcp") == "XPGD46QRK7WJZT7O"
    assert n.service_chain(ServicePortName("ns1", "svc1", "p80"), "TCP") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert n.endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert n.port_proto_hash(DNS, "udp") == "TCOU7JCQXEZGVUNU"


def test_hashes_of_the_reference_example():
    assert n.service_chain(WEB, "tcp") == "KUBE-SVC-CDGGSHYLG3RE2FKL"
    assert n.service_chain(WEB_NP, "tcp") == "KUBE-SVC-2262UYG6EQJDKK3I"
    assert n.external_chain(WEB_NP, "tcp") == "KUBE-EXT-2262UYG6EQJDKK3I"
    assert n.local_chain(WEB_NP, "tcp") == "KUBE-SVL-2262UYG6EQJDKK3I"
    assert n.endpoint_chain(WEB, "tcp", Endpoint("10.244.1.5", 8080)) == "KUBE-SEP-AFGSLHOD2HFNCBX4"
    assert n.endpoint_chain(WEB, "tcp", Endpoint("10.244.2.7", 8080)) == "KUBE-SEP-2RIJ5GIYXEFH6G4D"
    assert n.endpoint_chain(WEB_NP, "tcp", Endpoint("10.244.1.9", 8080)) == "KUBE-SEP-LQG4A4EIQFB4AGAG"


def test_chain_names_fit_iptables_limit():
    assert len(n.endpoint_chain("a-long-namespace/a-long-service-name:a-port", "udp", "10.244.200.200:65535")) <= 28


def test_probabilities_as_kube_proxy_writes_and_iptables_save_prints():
    assert [n.probability(k) for k in (2, 3, 5)] == ["0.5000000000", "0.3333333333", "0.2000000000"]
    assert [n.saved_probability(n.probability(k)) for k in (2, 3, 5)] == \
        ["0.50000000000", "0.33333333349", "0.20000000019"]


# --- the whole rule set -----------------------------------------------------

def test_full_render_matches_reference_iptables_save():
    text = render(example_state(), NODE, missing_jumps=JUMP_RULES, canary=True).text
    assert rules_by_chain(text, "nat") == rules_by_chain(REFERENCE_NAT)


def test_full_render_is_one_restore_input_for_three_tables():
    text = render(example_state(), NODE, missing_jumps=JUMP_RULES, canary=True).text
    assert [line for line in text.splitlines() if line.startswith("*")] == ["*mangle", "*filter", "*nat"]
    assert text.count("COMMIT") == 3
    assert text.count(":KUBE-PROXY-CANARY - [0:0]") == 3
    # KUBE-FORWARD: INVALID drop, then the mark and conntrack accepts
    forward = lines_of(text, "KUBE-FORWARD")
    assert [line.split(" -j ")[1] for line in forward] == ["DROP", "ACCEPT", "ACCEPT"]
    assert "--ctstate INVALID" in forward[0] and "--mark 0x4000/0x4000" in forward[1]


def test_nodeports_jump_is_the_last_kube_services_rule():
    services = lines_of(render(example_state(), NODE).text, "KUBE-SERVICES")
    assert services[-1].endswith("-j KUBE-NODEPORTS") and "! -d 127.0.0.0/8" in services[-1]
    assert all("KUBE-NODEPORTS" not in line for line in services[:-1])


def test_three_endpoints_get_one_third_then_one_half_then_the_rest():
    eps = tuple(Endpoint(f"10.244.1.{i}", 80, "node-a") for i in (2, 3, 4))
    state = ProxyState({WEB: ServicePort(WEB, "TCP", "10.96.0.20", 80)}, {WEB: eps})
    balance = [line for line in lines_of(render(state, NODE).text, n.service_chain(WEB, "tcp")) if "KUBE-SEP-" in line]
    assert ["--probability 0.3333333333" in balance[0], "--probability 0.5000000000" in balance[1],
            "statistic" not in balance[2]] == [True, True, True]


def test_client_ip_affinity_checks_recent_before_balancing_and_sets_it_in_each_sep():
    state = ProxyState({WEB: ServicePort(WEB, "TCP", "10.96.120.15", 80, affinity_timeout=10800)},
                       example_state().endpoints)
    text = render(state, NODE).text
    svc = lines_of(text, n.service_chain(WEB, "tcp"))
    sep = n.endpoint_chain(WEB, "tcp", "10.244.1.5:8080")
    assert f"-m recent --name {sep} --rcheck --seconds 10800 --reap -j {sep}" in svc[1]
    assert "recent" in svc[2] and all("statistic" not in line for line in svc[:3])
    assert "statistic" in svc[3]
    dnat = lines_of(text, sep)[1]
    assert f"-m recent --name {sep} --set" in dnat and dnat.endswith("DNAT --to-destination 10.244.1.5:8080")


def test_no_endpoints_rejects_in_filter_and_writes_no_nat_chain():
    state = ProxyState({WEB_NP: ServicePort(WEB_NP, "TCP", "10.96.33.7", 80, node_port=30080)}, {})
    rendered = render(state, NODE)
    filter_services = lines_of(rendered.text, "KUBE-SERVICES")
    assert any('"default/web-np:http has no endpoints"' in line and "-d 10.96.33.7" in line
               and line.endswith("-j REJECT") for line in filter_services)
    external = lines_of(rendered.text, "KUBE-EXTERNAL-SERVICES")
    assert len(external) == 1 and "--dst-type LOCAL" in external[0] and "--dport 30080" in external[0]
    assert external[0].endswith("-j REJECT")
    assert rendered.active_chains == frozenset()
    assert lines_of(rendered.text, "KUBE-NODEPORTS") == []


def _local_state(**policy) -> ProxyState:
    svc = ServicePort(WEB_NP, "TCP", "10.96.33.7", 80, node_port=30080, **policy)
    return ProxyState({WEB_NP: svc}, {WEB_NP: (Endpoint("10.244.1.9", 8080, "node-a"),
                                               Endpoint("10.244.2.9", 8080, "node-b"))})


def test_external_policy_local_keeps_client_ip_and_sends_pods_cluster_wide():
    text = render(_local_state(external_policy_local=True), NODE).text
    ext, svl, svc = (f(WEB_NP, "tcp") for f in (n.external_chain, n.local_chain, n.service_chain))
    ext_rules = lines_of(text, ext)
    assert "pod traffic for default/web-np:http external destinations" in ext_rules[0]
    assert "-s 10.244.0.0/16" in ext_rules[0] and ext_rules[0].endswith(f"-j {svc}")
    assert "--src-type LOCAL" in ext_rules[1] and ext_rules[1].endswith("-j KUBE-MARK-MASQ")
    assert "--src-type LOCAL" in ext_rules[2] and ext_rules[2].endswith(f"-j {svc}")
    assert ext_rules[3] == f"-A {ext} -j {svl}"
    assert not any("masquerade traffic for" in line for line in ext_rules)
    assert [line.split()[-1] for line in lines_of(text, svl)] == [n.endpoint_chain(WEB_NP, "tcp", "10.244.1.9:8080")]
    assert len([line for line in lines_of(text, svc) if "KUBE-SEP-" in line]) == 2


def test_external_policy_local_without_local_endpoint_drops_outside_traffic():
    node_c = ProxyNode("node-c", ("192.168.56.13",), "10.244.0.0/16")
    text = render(_local_state(external_policy_local=True), node_c).text
    ext = n.external_chain(WEB_NP, "tcp")
    assert not any(line.endswith(f"-j {n.local_chain(WEB_NP, 'tcp')}") for line in lines_of(text, ext))
    external = lines_of(text, "KUBE-EXTERNAL-SERVICES")
    assert len(external) == 1 and '"default/web-np:http has no local endpoints"' in external[0]
    assert external[0].endswith("-j DROP")


def test_internal_policy_local_dispatches_to_svl_or_drops():
    state = ProxyState({WEB: ServicePort(WEB, "TCP", "10.96.120.15", 80, internal_policy_local=True)},
                       example_state().endpoints)
    text = render(state, NODE).text
    svl = n.local_chain(WEB, "tcp")
    assert any(line.endswith(f"-j {svl}") for line in lines_of(text, "KUBE-SERVICES"))
    assert len([line for line in lines_of(text, svl) if "KUBE-SEP-" in line]) == 1
    assert n.service_chain(WEB, "tcp") not in text
    elsewhere = render(state, ProxyNode("node-c", (), "10.244.0.0/16")).text
    assert any('"default/web:http has no local endpoints"' in line and line.endswith("-j DROP")
               for line in lines_of(elsewhere, "KUBE-SERVICES"))


def test_external_ips_go_through_the_ext_chain():
    svc = ServicePort(WEB, "TCP", "10.96.120.15", 80, external_ips=("192.168.56.200",))
    text = render(ProxyState({WEB: svc}, example_state().endpoints), NODE).text
    assert any('"default/web:http external IP"' in line and "-d 192.168.56.200" in line
               and line.endswith(f"-j {n.external_chain(WEB, 'tcp')}") for line in lines_of(text, "KUBE-SERVICES"))


def test_large_cluster_mode_drops_per_endpoint_comments():
    eps = tuple(Endpoint(f"10.244.{i // 250}.{i % 250 + 2}", 80, "node-a") for i in range(1001))
    text = render(ProxyState({WEB: ServicePort(WEB, "TCP", "10.96.0.20", 80)}, {WEB: eps}), NODE).text
    sep = n.endpoint_chain(WEB, "tcp", eps[0])
    assert lines_of(text, sep) == [f"-A {sep} -s 10.244.0.2 -j KUBE-MARK-MASQ",
                                   f"-A {sep} -m tcp -p tcp -j DNAT --to-destination 10.244.0.2:80"]


# --- partial syncs ----------------------------------------------------------

def test_partial_sync_writes_only_changed_chains_dispatch_chains_and_deletes_stale():
    api = ServicePortName("default", "api", "")
    before = ProxyState({**example_state().services, api: ServicePort(api, "TCP", "10.96.0.50", 443)},
                        {**example_state().endpoints, api: (Endpoint("10.244.1.20", 8443, "node-a"),)})
    full = render(before, NODE)
    # web loses an endpoint, web-np goes away, api is untouched
    after = ProxyState({WEB: before.services[WEB], api: before.services[api]},
                       {WEB: (Endpoint("10.244.1.5", 8080, "node-a"),), api: before.endpoints[api]})
    partial = render(after, NODE, changed=frozenset({WEB, WEB_NP}), existing_chains=full.active_chains)
    declared = {line[1:].split()[0] for line in partial.text.splitlines() if line.startswith(":")}
    gone = {n.endpoint_chain(WEB, "tcp", "10.244.2.7:8080"), n.service_chain(WEB_NP, "tcp"),
            n.external_chain(WEB_NP, "tcp"), n.endpoint_chain(WEB_NP, "tcp", "10.244.1.9:8080")}
    kept = {n.service_chain(WEB, "tcp"), n.endpoint_chain(WEB, "tcp", "10.244.1.5:8080")}
    dispatch = {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
                "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL"}
    assert declared == dispatch | kept | gone
    assert sorted(line for line in partial.text.splitlines() if line.startswith("-X")) == \
        sorted(f"-X {c}" for c in gone)
    assert partial.deleted_chains == tuple(sorted(gone))
    # the untouched service: still dispatched, its own chains not rewritten
    api_svc = n.service_chain(api, "tcp")
    assert any(line.endswith(f"-j {api_svc}") for line in lines_of(partial.text, "KUBE-SERVICES"))
    assert lines_of(partial.text, api_svc) == [] and partial.written == frozenset({WEB})
    assert api_svc in partial.active_chains and not partial.active_chains & gone


def test_partial_sync_rewrites_a_service_whose_chains_are_not_known():
    full = render(example_state(), NODE)
    missing = full.active_chains - {n.service_chain(WEB_NP, "tcp")}
    partial = render(example_state(), NODE, changed=frozenset(), existing_chains=missing)
    assert partial.written == frozenset({WEB_NP})


# --- the proxier's cache across syncs (kube-proxy's servicePortInfo) --------

API = ServicePortName("default", "api", "")


def _with_api(state: ProxyState, *eps: Endpoint) -> ProxyState:
    return ProxyState({**state.services, API: ServicePort(API, "TCP", "10.96.0.50", 443)},
                      {**state.endpoints, API: eps})


def test_partial_sync_plans_only_the_changed_service_port():
    cache = RenderCache()
    full = render(example_state(), NODE, cache=cache)
    assert cache.planned == {WEB, WEB_NP}
    web_np_info = cache.infos[WEB_NP]
    partial = render(_with_api(example_state(), Endpoint("10.244.1.20", 8443, "node-a")), NODE,
                     changed=frozenset({API}), existing_chains=full.active_chains, cache=cache)
    assert cache.planned == {API} and partial.written == {API}
    assert cache.infos[WEB_NP] is web_np_info          # the others' infos are reused as they are
    # the dispatch chains still list every service, in ServicePortName order
    targets = [line.split(" -j ")[-1] for line in lines_of(partial.text, "KUBE-SERVICES")]
    assert targets == [n.service_chain(API, "tcp"), n.service_chain(WEB, "tcp"), n.service_chain(WEB_NP, "tcp"),
                       "KUBE-NODEPORTS"]


def test_cached_partial_sync_writes_what_an_uncached_one_writes():
    cache = RenderCache()
    before = _with_api(example_state(), Endpoint("10.244.1.20", 8443, "node-a"))
    full = render(before, NODE, cache=cache)
    after = ProxyState({WEB: before.services[WEB], API: before.services[API]},
                       {WEB: (Endpoint("10.244.1.5", 8080, "node-a"), Endpoint("10.244.3.3", 8080, "node-c")),
                        API: before.endpoints[API]})
    changed = frozenset({WEB, WEB_NP})
    cached = render(after, NODE, changed=changed, existing_chains=full.active_chains, cache=cache)
    fresh = render(after, NODE, changed=changed, existing_chains=full.active_chains)
    assert cached.text == fresh.text
    assert (cached.active_chains, cached.written, cached.deleted_chains) == \
        (fresh.active_chains, fresh.written, fresh.deleted_chains)
    assert render(after, NODE, cache=cache).text == render(after, NODE).text   # and a full one too


def test_cached_chain_names_equal_freshly_computed_ones_after_endpoint_changes():
    cache = RenderCache()
    render(example_state(), NODE, cache=cache)
    moved = ProxyState(example_state().services,
                       {**example_state().endpoints, WEB: (Endpoint("10.244.1.5", 8080, "node-a"),
                                                           Endpoint("10.244.2.8", 8080, "node-b"))})
    render(moved, NODE, changed=frozenset({WEB}), cache=cache)
    for name, info in cache.infos.items():
        proto = info.svc.protocol
        assert (info.svc_chain, info.svl_chain, info.ext_chain) == \
            (n.service_chain(name, proto), n.local_chain(name, proto), n.external_chain(name, proto))
        assert info.seps == {str(ep): n.endpoint_chain(name, proto, ep) for ep in moved.endpoints_of(name)}
    # the reference file's names, pinned
    assert cache.infos[WEB].svc_chain == "KUBE-SVC-CDGGSHYLG3RE2FKL"
    assert cache.infos[WEB].seps["10.244.1.5:8080"] == "KUBE-SEP-AFGSLHOD2HFNCBX4"


def test_a_service_whose_endpoints_changed_gets_its_chains_rewritten():
    cache = RenderCache()
    full = render(example_state(), NODE, cache=cache)
    moved = ProxyState(example_state().services,
                       {**example_state().endpoints, WEB: (Endpoint("10.244.1.5", 8080, "node-a"),
                                                           Endpoint("10.244.2.8", 8080, "node-b"))})
    partial = render(moved, NODE, changed=frozenset({WEB}), existing_chains=full.active_chains, cache=cache)
    old_sep, new_sep = n.endpoint_chain(WEB, "tcp", "10.244.2.7:8080"), n.endpoint_chain(WEB, "tcp", "10.244.2.8:8080")
    svc_chain = n.service_chain(WEB, "tcp")
    assert partial.written == {WEB}
    assert [line.split(" -j ")[-1] for line in lines_of(partial.text, svc_chain)] == \
        ["KUBE-MARK-MASQ", n.endpoint_chain(WEB, "tcp", "10.244.1.5:8080"), new_sep]
    assert lines_of(partial.text, new_sep)[-1].endswith("--to-destination 10.244.2.8:8080")
    assert partial.deleted_chains == (old_sep,)
    assert lines_of(partial.text, n.service_chain(WEB_NP, "tcp")) == []     # untouched: not rewritten


def test_service_ports_left_out_of_changed_are_noticed_when_the_count_disagrees():
    cache = RenderCache()
    full = render(example_state(), NODE, cache=cache)
    # web-np went and web's endpoints moved, but changed names neither
    moved = ProxyState({WEB: example_state().services[WEB]}, {WEB: (Endpoint("10.244.1.5", 8080, "node-a"),)})
    partial = render(moved, NODE, changed=frozenset(), existing_chains=full.active_chains, cache=cache)
    assert set(cache.infos) == {WEB} and partial.written == {WEB}
    assert n.service_chain(WEB_NP, "tcp") in partial.deleted_chains
    assert n.endpoint_chain(WEB, "tcp", "10.244.2.7:8080") in partial.deleted_chains
    assert not any("web-np" in line for line in lines_of(partial.text, "KUBE-SERVICES"))


def test_cached_lines_follow_large_cluster_mode_when_it_flips():
    eps = tuple(Endpoint(f"10.244.{i // 250}.{i % 250 + 2}", 80, "node-a") for i in range(1000))
    cache = RenderCache()
    small = ProxyState({WEB: ServicePort(WEB, "TCP", "10.96.0.20", 80)}, {WEB: eps})
    first = render(small, NODE, cache=cache)
    sep = n.endpoint_chain(WEB, "tcp", eps[0])
    assert all("-m comment" in line for line in lines_of(first.text, sep))     # 1000 endpoints: not yet large
    grown = _with_api(small, Endpoint("10.244.9.9", 8443, "node-a"))
    render(grown, NODE, changed=frozenset({API}), existing_chains=first.active_chains, cache=cache)
    assert render(grown, NODE, cache=cache).text == render(grown, NODE).text   # 1001: every SEP line uncommented
    assert lines_of(render(grown, NODE, cache=cache).text, sep)[0] == f"-A {sep} -s 10.244.0.2 -j KUBE-MARK-MASQ"


def test_cache_for_another_node_starts_over():
    cache = RenderCache()
    render(_local_state(external_policy_local=True), NODE, cache=cache)
    other = ProxyNode("node-c", (), "10.244.0.0/16")
    assert render(_local_state(external_policy_local=True), other, cache=cache).text == \
        render(_local_state(external_policy_local=True), other).text


# --- cleanup, jumps, backend, node ------------------------------------------

SAVED = """# Generated by iptables-nft-save
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-CDGGSHYLG3RE2FKL - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A KUBE-SERVICES -d 10.96.120.15/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-CDGGSHYLG3RE2FKL
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -s 10.0.0.1/32 -j ACCEPT
COMMIT
"""


def test_cleanup_text_removes_kube_chains_and_jumps_only():
    text = cleanup_text(SAVED)
    assert text.splitlines() == [
        "*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-SVC-CDGGSHYLG3RE2FKL - [0:0]",
        '-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-X KUBE-SERVICES", "-X KUBE-SVC-CDGGSHYLG3RE2FKL", "COMMIT"]
    assert cleanup_text("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n") == ""


def test_jump_rules_are_found_in_iptables_save_order():
    nat = SAVED.splitlines()
    found = {(j.src, j.dst) for j in JUMP_RULES if j.table == "nat" and j.found_in(nat)}
    assert found == {("PREROUTING", "KUBE-SERVICES")}


def test_backend_tools_and_binary(tmp_path):
    assert be.tool("nft", "iptables-restore") == "iptables-nft-restore"
    assert be.tool("legacy", "iptables") == "iptables-legacy"
    for target, want in (("xtables-nft-multi", "nft"), ("xtables-legacy-multi", "legacy")):
        (tmp_path / target).touch()
        link = tmp_path / f"iptables-{want}"
        os.symlink(tmp_path / target, link)
        assert be.binary_backend(str(link)) == want
    with pytest.raises(ValueError, match="backend='nftables'.*nft, legacy"):
        be.check_backend("nftables")


def test_bad_node_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="cluster_cidr.*10.244.0.0/16"):
        check_node(ProxyNode("a", (), "10.244.0.0/33"))
    with pytest.raises(ValueError, match="node_ips"):
        check_node(ProxyNode("a", ("node-a",), "10.244.0.0/16"))

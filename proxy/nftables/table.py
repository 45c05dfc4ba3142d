"""The table as text, and the record of what a proxier wrote into it.

A full sync renders every service port in one pass: the common case of the
maps layout (Cluster policy, no affinity, every endpoint ready, no external
IPs) straight to element text with no Piece in between; everything else
through render_piece. The record (Written) is compact: the inputs it was
rendered from, and for each element the service port(s) that want it. It
keeps no Piece of a common-case service: a partial sync renders the old
piece again from the remembered inputs (rendering is pure), so the record
costs a dict entry per element, not a dict per element.

The record is finished in two steps: render() makes the text and whatever
the text needs; settle() makes the element owners, which only a later
partial sync reads, so the proxier runs it while nft loads the batch.
"""
from __future__ import annotations

from bisect import insort
from collections import Counter
from operator import attrgetter
from typing import Iterable, Mapping

from ..types import Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName
from .render import (CLUSTER_IPS, DEFAULT_LAYOUT, HAIRPIN_ENDPOINTS, LB, NODEPORT_ENDPOINTS, NODEPORT_IPS, NODEPORT_LB,
                     PROTOCOLS, SERVICE_ENDPOINTS, SERVICE_IPS, SERVICE_NODEPORTS, T, Piece, check_layout,
                     containers, endpoints_map, quote, render_piece, shared_chain_rules, skeleton_chains)

# ServicePortName's own order (dataclass order=True: namespace, name, port),
# as a C-level key: sorting 10k names by their Python __lt__ costs ~70 ms
NAME_ORDER = attrgetter("namespace", "name", "port")
ENDPOINT_ORDER = attrgetter("ip", "port")       # categorize()'s order
_READY = attrgetter("ready")

PROTO = {"TCP": "tcp", "UDP": "udp"}
_SETS = {c for c, (kind, _) in containers("maps").items() if kind == "set"}

Owners = dict[str, "ServicePortName | list[ServicePortName]"]   # key -> its owner, or its owners sorted


def _co_own(owners: Owners, key: str, name: ServicePortName) -> None:
    """A second service port wants an element (a ClusterIP with two ports,
    a pod behind two Services): remember both, sorted; the first one's value
    is the one written."""
    held = owners[key]
    if isinstance(held, list):
        if name not in held:
            insort(held, name)
    elif held != name:
        owners[key] = sorted((held, name))


def _disown(owners: Owners, key: str, name: ServicePortName) -> None:
    held = owners[key]
    if isinstance(held, list):
        held.remove(name)
        if len(held) == 1:
            owners[key] = held[0]
    else:
        del owners[key]


def _owner_list(owners: Owners, key: str) -> list[ServicePortName]:
    held = owners.get(key)
    return [] if held is None else list(held) if isinstance(held, list) else [held]


def _element_lines(verb: str, items: Mapping[str, list[str]]) -> list[str]:
    return [f"{verb} element {T} {c} {{ {', '.join(items[c])} }}" for c in sorted(items) if items[c]]


class _Claims:
    """The elements a full sync's service ports want in one container, as
    parallel lists: key, its text (key + value; the key itself in a set), who.
    runs: slots of the common case, whose texts are in texts but whose keys
    ("K . 0" .. "K . n-1") are made only when settled."""

    def __init__(self, is_set: bool):
        self.keys: list[str] = []
        self.names: list[ServicePortName] = []
        self.texts = self.keys if is_set else []
        self.runs: list[tuple[str, int, ServicePortName]] = []      # (K, n, who)

    def claim(self, key: str, value: str, name: ServicePortName) -> None:
        self.keys.append(key)
        if self.texts is not self.keys:
            self.texts.append(key + value)
        self.names.append(name)

    def texts_if_unclaimed_twice(self) -> list[str] | None:
        """The texts to write, or None when two service ports claim one map key
        (then only settle() knows whose value wins). A set's element has no
        value: any owner writes the same."""
        if self.texts is self.keys:
            return list(dict.fromkeys(self.keys))
        return self.texts if len(set(self.keys)) == len(self.keys) else None

    def settle(self) -> tuple[Owners, list[str]]:
        """The owners of each key and the texts to write: one per key, the
        first (smallest) owner's."""
        keys, names = self.keys, self.names
        if self.runs:
            keys = keys + [f"{key} . {i}" for key, n, _ in self.runs for i in range(n)]
            names = names + [name for _, n, name in self.runs for _ in range(n)]
        owners: Owners = dict(zip(keys, names))
        if len(owners) == len(keys):
            return owners, self.texts          # no key claimed twice: the common case
        # runs are made only when no map key is claimed twice (Written.render),
        # so here keys and texts are parallel
        owners, texts = {}, {}
        for key, text, name in zip(keys, self.texts, names):
            held = owners.get(key)
            if held is None:
                owners[key], texts[key] = name, text
            else:
                first = held[0] if isinstance(held, list) else held
                _co_own(owners, key, name)
                if name < first:
                    texts[key] = text
        return owners, list(texts.values())


class Written:
    """What this proxier wrote into the kernel, so that a partial sync writes
    only the difference and never lists the table.

    services/endpoints: the inputs of the last sync per service port.
    owners: container -> element key -> the service port(s) that want it.
    shared: how many service ports use each shared chain (lb-N, ...).
    kept: the pieces that have chains or sets of their own (the chains to
    delete on a full resync); every other piece is rendered again on demand.
    """

    def __init__(self, node: ProxyNode, layout: str):
        self.node, self.layout = node, check_layout(layout)
        self.services: dict[ServicePortName, ServicePort] = {}
        self.endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}
        self.owners: dict[str, Owners] = {c: {} for c in containers(layout)}
        self.shared: Counter[str] = Counter()
        self.kept: dict[ServicePortName, Piece] = {}
        self._claims: dict[str, _Claims] | None = None      # rendered, owners not yet settled

    # ---- bookkeeping ----------------------------------------------------------

    def piece(self, name: ServicePortName) -> Piece:
        """What name's service port wrote (rendered again from its inputs)."""
        kept = self.kept.get(name)
        if kept is not None:
            return kept
        return render_piece(self.node, self.services[name], self.endpoints.get(name, ()), self.layout)

    def chains(self) -> set[str]:
        return {c for p in self.kept.values() for c in p.chains} | set(self.shared)

    def sets(self) -> dict[str, str]:
        return {s: d for p in self.kept.values() for s, d in p.sets.items()}

    def _add(self, name: ServicePortName, piece: Piece) -> None:
        """Record piece as name's (a partial sync)."""
        self.services[name], self.endpoints[name] = piece.service, piece.endpoints
        self._keep(name, piece)
        for (container, key), value in piece.elements.items():
            owners = self.owners[container]
            if key not in owners:
                owners[key] = name
            else:
                _co_own(owners, key, name)

    def _keep(self, name: ServicePortName, piece: Piece) -> None:
        if piece.chains or piece.sets:
            self.kept[name] = piece
        self.shared.update(piece.shared)

    def _remove(self, name: ServicePortName) -> None:
        piece = self.piece(name)
        del self.services[name]
        self.endpoints.pop(name, None)
        self.kept.pop(name, None)
        for container, key in piece.elements:
            _disown(self.owners[container], key, name)
        self.shared.subtract(piece.shared)
        self.shared = +self.shared       # drops the chains no piece uses

    def apply(self, updates: Mapping[ServicePortName, Piece | None]) -> None:
        """Record that partial_text(updates) is in the kernel."""
        for name, piece in updates.items():
            if name in self.services:
                self._remove(name)
            if piece is not None:
                self._add(name, piece)

    # ---- full sync ------------------------------------------------------------

    def render(self, state: ProxyState) -> dict[str, list[str]]:
        """Record every service port of state (self must be empty) but for the
        element owners, which settle() adds (the proxier calls it while nft
        loads the batch); the element texts of the table, per container."""
        claims = self._claim(state, runs=True)
        items = {c: claimed.texts_if_unclaimed_twice() for c, claimed in claims.items()}
        if None not in items.values():
            self._claims = claims
            return items
        # two service ports claim one ClusterIP:port (a misconfiguration):
        # whose slots win needs every key, now
        self._claims = self._claim(state, runs=False)
        return self.settle()

    def settle(self) -> dict[str, list[str]]:
        """Complete the record: the owners of every element. Returns the texts."""
        items = {}
        for container, claimed in (self._claims or {}).items():
            self.owners[container], items[container] = claimed.settle()
        self._claims = None
        return items

    def _claim(self, state: ProxyState, runs: bool) -> dict[str, _Claims]:
        """What every service port of state claims, per container. runs: the
        common case's slots as runs (their keys made in settle()).

        The loop only appends to flat lists; who owns what is settled after
        it, in C (dict(zip(...))), and by a loop only for a container where
        two service ports claim one key."""
        claims = {c: _Claims(c in _SETS) for c in self.owners}
        self.kept, self.shared = {}, Counter()
        endpoints = state.endpoints
        # copies, not comprehensions: a dict copy reuses the keys' hashes
        # (ServicePortName's __hash__ is Python code, ~1 us a call)
        self.services, self.endpoints = dict(state.services), dict(endpoints)
        fast = self.layout == "maps"
        cluster_ips, cluster_ip_names = claims[CLUSTER_IPS].keys, claims[CLUSTER_IPS].names
        if fast:
            hairpin, hairpin_names = claims[HAIRPIN_ENDPOINTS].keys, claims[HAIRPIN_ENDPOINTS].names
        lb_users: dict[str, Counter[int]] = {LB: Counter(), NODEPORT_LB: Counter()}  # chain -> N -> users
        # per protocol, where a ClusterIP and a NodePort are written: the
        # dispatch map, the shared chain (prefix, users), the slot map
        routes = {proto: tuple((claims[dispatch], chain, lb_users[chain], claims[endpoints_map(slots, proto)])
                               for dispatch, chain, slots in ((SERVICE_IPS, LB, SERVICE_ENDPOINTS),
                                                              (SERVICE_NODEPORTS, NODEPORT_LB, NODEPORT_ENDPOINTS)))
                  for proto in PROTOCOLS} if fast else {}
        for name, svc in state.services.items():
            eps = endpoints.get(name, ())
            if not (fast and eps and svc.protocol in PROTO and not svc.affinity_timeout
                    and not svc.internal_policy_local and not svc.external_ips
                    and not (svc.node_port and svc.external_policy_local)
                    and all(map(_READY, eps))):
                piece = render_piece(self.node, svc, eps, self.layout)
                self._keep(name, piece)
                for (container, key), value in piece.elements.items():
                    claims[container].claim(key, value, name)
                continue
            # the common case, as maps_piece renders it (a unit test holds them equal)
            n = len(eps)
            if n > 1:
                eps = sorted(eps, key=ENDPOINT_ORDER)
            proto = PROTO[svc.protocol]
            cluster_ips.append(svc.cluster_ip)
            cluster_ip_names.append(name)
            cluster_ip, node_port = routes[proto]
            keys = ((f"{svc.cluster_ip} . {proto} . {svc.port}", cluster_ip),)
            if svc.node_port:
                keys += ((f"{proto} . {svc.node_port}", node_port),)
            for key, (dispatch, chain, users, slots) in keys:
                dispatch.claim(key, f" : goto {chain}{n}", name)
                users[n] += 1
                if not runs:
                    for i, ep in enumerate(eps):
                        slots.claim(f"{key} . {i}", f" : {ep.ip} . {ep.port}", name)
                    continue
                slots.runs.append((key, n, name))
                for i, ep in enumerate(eps):
                    slots.texts.append(f"{key} . {i} : {ep.ip} . {ep.port}")
            for ep in eps:
                hairpin.append(f"{ep.ip} . {ep.ip}")
                hairpin_names.append(name)
        self.shared.update({f"{chain}{n}": k for chain, users in lb_users.items() for n, k in users.items()})
        return claims

    def full_text(self, items: Mapping[str, list[str]], previous: "Written | None") -> tuple[str, int]:
        """The whole table: recreated (previous None: a first sync or one
        after a failure), or flushed and refilled, which keeps the affinity
        sets that are still wanted (their entries are the clients' pins)."""
        kinds = containers(self.layout)
        sets = self.sets()
        lines = [f"add table {T}"]
        if previous is None:
            lines.append(f"delete table {T}")
        else:
            lines.append(f"flush table {T}")
            lines += [f"flush {kind} {T} {c}" for c, (kind, _) in kinds.items()]
            lines += [f"delete chain {T} {c}" for c in sorted(previous.chains() - self.chains())]
            old_sets = previous.sets()
            lines += [f"delete set {T} {s}" for s in sorted(old_sets) if sets.get(s) != old_sets[s]]
        lines.append(f"table {T} {{")
        lines.append(f"\tcomment {quote('rules for kube-proxy')}")
        if previous is None:
            # typeof maps cannot be declared again over an existing one (nft 1.0.6)
            lines += [f"\t{kind} {c} {{ {decl} }}" for c, (kind, decl) in kinds.items()]
        lines += [f"\tset {s} {{ {d} }}" for s, d in sorted(sets.items())]
        chains = skeleton_chains(self.node, self.layout)
        for c in sorted(self.shared):
            chains[c] = shared_chain_rules(c)
        for name in sorted(self.kept, key=NAME_ORDER):
            chains.update(self.kept[name].chains)
        size = 0
        for c, rules in chains.items():
            lines.append(f"\tchain {c} {{")
            lines += [f"\t\t{r}" for r in rules]
            lines.append("\t}")
            size += len(rules)
        lines.append("}")
        all_items = {**items, NODEPORT_IPS: list(self.node.node_ips)}     # no service port owns these
        lines += _element_lines("add", all_items)
        return "\n".join(lines) + "\n", size + sum(map(len, all_items.values()))

    # ---- partial sync ---------------------------------------------------------

    def partial_text(self, updates: Mapping[ServicePortName, Piece | None]) -> tuple[str, int]:
        """Only what the updated service ports change: their elements, chains
        and sets. Costs what changed, never what exists. self is unchanged
        until apply()."""
        old = {n: self.piece(n) for n in updates if n in self.services}
        new = {n: p for n, p in updates.items() if p is not None}
        unchanged: dict[ServicePortName, Piece] = {}     # co-owners rendered again, once each

        def value(owner: ServicePortName, ck: tuple[str, str], pieces: Mapping[ServicePortName, Piece]) -> str:
            if owner in updates:
                return pieces[owner].elements[ck]
            if owner not in unchanged:
                unchanged[owner] = self.piece(owner)
            return unchanged[owner].elements[ck]

        deleted: dict[str, list[str]] = {}
        added: dict[str, list[str]] = {}
        for ck in sorted({ck for p in (*old.values(), *new.values()) for ck in p.elements}):
            container, key = ck
            owners = _owner_list(self.owners[container], key)
            after = sorted([o for o in owners if o not in updates] + [n for n, p in new.items() if ck in p.elements])
            if owners and after and owners[0] == after[0] and owners[0] not in updates:
                continue        # another service port's element, and it stays so
            before_value = value(owners[0], ck, old) if owners else None
            now_value = value(after[0], ck, new) if after else None
            if before_value is not None and before_value != now_value:
                deleted.setdefault(container, []).append(key)
            if now_value is not None and now_value != before_value:
                added.setdefault(container, []).append(key + now_value)

        delta: Counter[str] = Counter()
        for p in old.values():
            delta.subtract(p.shared)
        for p in new.values():
            delta.update(p.shared)
        gone_shared = {c for c, d in delta.items() if d and self.shared[c] and not self.shared[c] + d}
        born_shared = {c for c, d in delta.items() if d and not self.shared[c] and self.shared[c] + d}

        old_chains = {c for p in old.values() for c in p.chains}
        new_chains = {c: r for p in new.values() for c, r in p.chains.items()}
        old_sets = {s: d for p in old.values() for s, d in p.sets.items()}
        new_sets = {s: d for p in new.values() for s, d in p.sets.items()}

        # order matters: nothing may point at a chain or set being deleted
        lines = _element_lines("delete", deleted)
        lines += [f"flush chain {T} {c}" for c in sorted(old_chains | gone_shared)]
        lines += [f"delete chain {T} {c}" for c in sorted((old_chains - new_chains.keys()) | gone_shared)]
        lines += [f"delete set {T} {s}" for s in sorted(old_sets) if new_sets.get(s) != old_sets[s]]
        lines += [f"add set {T} {s} {{ {d} }}" for s, d in sorted(new_sets.items()) if old_sets.get(s) != d]
        born = sorted((new_chains.keys() - old_chains) | born_shared)
        lines += [f"add chain {T} {c}" for c in born]
        rules = {**{c: shared_chain_rules(c) for c in sorted(born_shared)}, **new_chains}
        lines += [f"add rule {T} {c} {r}" for c, rs in rules.items() for r in rs]
        lines += _element_lines("add", added)
        size = sum(len(rs) for rs in rules.values()) + sum(map(len, deleted.values())) + \
            sum(map(len, added.values()))
        return ("\n".join(lines) + "\n" if lines else ""), size


def full_sync(node: ProxyNode, state: ProxyState, layout: str,
              previous: Written | None = None) -> tuple[Written, str, int]:
    """The record of state and the batch that replaces the table with it
    (recreating it when previous is None); the size counts rules and elements."""
    written = Written(node, layout)
    text, size = written.full_text(written.render(state), previous)
    written.settle()
    return written, text, size


def render_full(node: ProxyNode, state: ProxyState, layout: str = DEFAULT_LAYOUT) -> str:
    """The whole table for state, as one `nft -f` batch that replaces it."""
    return full_sync(node, state, layout)[1]


def render_pieces(node: ProxyNode, state: ProxyState, layout: str,
                  only: Iterable[ServicePortName] | None = None) -> dict[ServicePortName, Piece | None]:
    """Pieces of the given service ports (all when only is None); None for a removed one."""
    wanted = state.services.keys() if only is None else only
    return {n: (render_piece(node, state.services[n], state.endpoints_of(n), layout)
                if n in state.services else None) for n in sorted(wanted, key=NAME_ORDER)}

"""The shape every controller of a node agent has, and the watcher that feeds them.

A controller owns one concern of the node (flannel's overlay, the kubelet's pods, the
node's EndpointSlices, kube-proxy's rules...). It names the store key prefixes it
watches; the agent's one watcher loop reads the store's events and asks each controller
whose prefixes match whether it wants that event (e.g. the pods controller ignores other
nodes' pods). A wanted event asks the controller's BoundedFrequencyRunner for a sync; the
runner also syncs every resync_seconds with full=True, which repairs what was changed
behind the agent's back (a deleted route, a killed process).

A sync that raises marks the controller failing: the node reports the controller's
condition (e.g. NetworkUnavailable) with the error and is not Ready until a sync succeeds.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable

from ..state import PAUSED_REPAIRS_KEY, event_records, paused_for
from ..store.base import CompactedError, Event

if TYPE_CHECKING:
    from .core import Agent
    from .runner import BoundedFrequencyRunner

log = logging.getLogger("netlab.agent")


class Controller:
    name: str = ""
    prefixes: tuple[str, ...] = ()  # store key prefixes whose events may concern it
    condition: str = ""             # the NodeCondition type reported while its sync fails
    resync_seconds: float = 5.0     # a full sync at least this often (kube-proxy's syncPeriod)
    min_interval: float = 0.05      # and no more often than this (burst of 2)
    retry_seconds: float = 1.0      # after a failed sync, a full one this much later
    component: str = "netlab-agent" # the source.component of its events (kubelet, kube-proxy, flanneld...)
    repairs: tuple[str, ...] = ()   # what of its work a course exercise may pause (state.REPAIRS); such a
                                    # controller also lists state.PAUSED_REPAIRS_KEY in its prefixes

    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.runner: "BoundedFrequencyRunner | None" = None  # set by the agent
        # what the agent gives every controller (fixed for the agent's life)
        self.lab, self.node, self.netns = agent.lab, agent.node, agent.netns
        self.paths, self.store, self.state, self.clock = agent.paths, agent.store, agent.state, agent.clock
        self._paused_before: frozenset[str] = frozenset()

    # what a controller does
    def setup(self) -> None:
        """Once, before the first sync, in the order of build_controllers. Raising stops the agent."""

    def sync(self, full: bool) -> None:
        raise NotImplementedError

    def wants(self, event: Event) -> bool:
        """Whether an event under one of its prefixes concerns it."""
        return True

    def poll(self) -> bool:
        """Changes the store does not announce (a process exited): True asks for a sync.
        Called by the watcher on every round, so it must be cheap."""
        return False

    def record_event(self, kind: str, namespace: str | None, name: str, reason: str, message: str,
                     type_: str = "Normal") -> None:
        """An event about kind/name (namespace None: this Node); best effort, never raises."""
        recorder = getattr(self.agent, "recorder", None)
        if recorder is not None:
            recorder.record(self.component, kind, namespace, name, reason, message, type_)

    def node_event(self, reason: str, message: str, type_: str = "Normal") -> None:
        self.record_event("Node", None, self.node.name, reason, message, type_)

    # course exercises: nothing silently repairs an injected fault while the exercise runs
    def paused(self, target: str | None = None) -> frozenset[str]:
        """This controller's repairs paused for target (default: this node); one store get."""
        if not self.repairs:
            return frozenset()
        return paused_for(self.state.paused_repairs(), target or self.node.name) & frozenset(self.repairs)

    def resumed(self, paused_now: frozenset[str]) -> bool:
        """True once after a repair of this controller's was un-paused: that sync should be full."""
        lifted = bool(self._paused_before - paused_now)
        self._paused_before = paused_now
        return lifted

    def pause_changed(self, event: Event) -> bool:
        """Whether an event on the paused-repairs key pauses or resumes one of this controller's repairs."""
        if event.key != PAUSED_REPAIRS_KEY:
            return False
        new, old = (frozenset(t for t in (r or ()) if t.split("/", 1)[0] in self.repairs)
                    for r in event_records(event))
        return new != old

    def request(self, full: bool = False) -> None:
        if self.runner is not None:
            self.runner.run(full)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def dispatch(controllers: Iterable[Controller], events: Iterable[Event]) -> list[Controller]:
    """The controllers some event concerns (each asked once), in their order."""
    events = list(events)
    chosen = []
    for c in controllers:
        for e in events:
            if any(e.key.startswith(p) for p in c.prefixes) and _wants(c, e):
                chosen.append(c)
                break
    return chosen


def _wants(c: Controller, e: Event) -> bool:
    try:
        return c.wants(e)
    except Exception as exc:  # a record we cannot read: let the controller look for itself
        log.warning("%s: cannot classify %s (%s): syncing", c.name, e.key, exc)
        return True


class Watcher:
    """One reader of the store's events for all controllers of an agent (one poll of
    events_since per prefix and round; etcd would give one watch stream per prefix)."""

    PREFIXES = ("/netlab/", "/coreos.com/network/")

    def __init__(self, store, controllers: list[Controller], revision: int | None = None):
        self.store, self.controllers = store, controllers
        self.revision = store.revision() if revision is None else revision

    def step(self) -> list[Controller]:
        """Read what happened since the last step, ask the controllers concerned to sync;
        returns them (a controller whose poll() says so included)."""
        head = self.store.revision()
        try:
            events = sorted((e for p in self.PREFIXES for e in self.store.events_since(p, self.revision)
                             if e.revision <= head), key=lambda e: e.revision)
        except CompactedError:
            # history we missed: nothing is known, so everything syncs fully (a re-list)
            self.revision = head
            for c in self.controllers:
                c.request(full=True)
            return list(self.controllers)
        self.revision = head
        chosen = dispatch(self.controllers, events)
        chosen += [c for c in self.controllers if c not in chosen and c.poll()]
        for c in chosen:
            c.request()
        return chosen

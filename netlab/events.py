"""Writing events: what the agents did and when, as Kubernetes' event recorder writes them.

An agent's controllers call EventRecorder.record(); the event goes to the store under
/netlab/events/ (state.LabState.put_event) with the API server's one-hour TTL. As in
client-go's EventCorrelator, the same event again (same object, type, reason, message
and source) raises the count of the one already written instead of adding another.

Recording is best effort: it never raises into a sync (a store that is busy loses the
event, and says so in the agent's log), and it costs one store write.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import replace

from .state import EVENT_TTL, EventRecord

log = logging.getLogger("netlab.events")
NORMAL, WARNING = "Normal", "Warning"
CACHE_SIZE = 4096          # client-go's maxLruCacheEntries
NODE_EVENT_NAMESPACE = "default"   # the kubelet records node events there


def event_name(object_name: str, nanos: int) -> str:
    """The kubelet's event names: <object>.<hex of the Unix time in nanoseconds>."""
    return f"{object_name}.{nanos:x}"


class EventRecorder:
    """One per agent (thread-safe): controllers record with their own component."""

    def __init__(self, state, host: str, *, clock=time.time):
        self.state, self.host, self.clock = state, host, clock
        self._seen: OrderedDict[tuple, EventRecord] = OrderedDict()
        self._last_nanos = 0   # names stay unique when the clock does not move between two events
        self._lock = threading.Lock()

    def record(self, component: str, kind: str, namespace: str | None, name: str, reason: str, message: str,
               type_: str = NORMAL) -> EventRecord | None:
        """Write one event about kind/name (namespace None: a cluster-scoped object such as a
        Node). Returns what was written, None when it could not be."""
        try:
            with self._lock:
                ev = self._next(component, kind, namespace or NODE_EVENT_NAMESPACE, name, reason, message, type_)
                self.state.put_event(ev)
            return ev
        except Exception as e:  # an event must never fail the sync that records it
            log.warning("event %s %s/%s not recorded: %s", reason, kind, name, e)
            return None

    def _next(self, component, kind, namespace, name, reason, message, type_) -> EventRecord:
        now = self.clock()
        key = (component, kind, namespace, name, reason, message, type_)
        prev = self._seen.pop(key, None)
        if prev is not None and now - prev.last < EVENT_TTL:   # still stored: count it again
            ev = replace(prev, last=now, count=prev.count + 1)
        else:
            self._last_nanos = max(int(now * 1e9), self._last_nanos + 1)
            ev = EventRecord(namespace, event_name(name, self._last_nanos), kind, name, reason, message,
                             type_, component, self.host, now, now, 1)
        self._seen[key] = ev
        while len(self._seen) > CACHE_SIZE:
            self._seen.popitem(last=False)
        return ev

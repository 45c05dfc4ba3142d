"""BoundedFrequencyRunner, as kube-proxy's (pkg/util/async): runs a function when asked,
but no more often than min_interval (with a small burst allowed), and at least every
max_interval even when nobody asks (the periodic full resync, kube-proxy's syncPeriod).

    runner = BoundedFrequencyRunner("pods", sync, min_interval=0.05, max_interval=5.0)
    threading.Thread(target=runner.loop).start()
    runner.run()          # "something changed": a sync soon
    runner.run(full=True) # the next sync repairs everything, not only what changed
    runner.retry_after(2) # a sync no later than 2 s from now (a backoff ends, a lease is due)
    runner.stop()

fn(full) gets full=True for the periodic runs, after run(full=True) and retry_after(..., full=True).
The clock is injectable; step() does one round without threads, for tests.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class BoundedFrequencyRunner:
    def __init__(self, name: str, fn: Callable[[bool], None], *, min_interval: float, max_interval: float,
                 burst: int = 2, clock: Callable[[], float] = time.monotonic):
        if not 0 <= min_interval <= max_interval:
            raise ValueError(f"runner {name}: need 0 <= min_interval ({min_interval}) <= max_interval ({max_interval})")
        if burst < 1:
            raise ValueError(f"runner {name}: burst must be at least 1, not {burst}")
        self.name, self.fn = name, fn
        self.min_interval, self.max_interval, self.burst = min_interval, max_interval, burst
        self.clock = clock
        self.runs = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        now = clock()
        self._tokens = float(burst)        # token bucket: one run per min_interval, burst at once
        self._refilled = now
        self._pending = False
        self._pending_full = False
        self._retry_at: float | None = None
        self._retry_full = False
        self._next_periodic = now + max_interval

    # --- asking --------------------------------------------------------------------------
    def run(self, full: bool = False) -> None:
        with self._lock:
            self._pending = True
            self._pending_full |= full
        self._wake.set()

    def retry_after(self, seconds: float, full: bool = False) -> None:
        at = self.clock() + max(0.0, seconds)
        with self._lock:
            if self._retry_at is None or at < self._retry_at:
                self._retry_at = at
            self._retry_full |= full
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    @property
    def pending(self) -> bool:
        return self._pending

    # --- running -------------------------------------------------------------------------
    def step(self) -> float:
        """Run fn if it is due and allowed now; the seconds until something may be due."""
        with self._lock:
            now = self.clock()
            if self.min_interval > 0:
                self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) / self.min_interval)
            else:
                self._tokens = float(self.burst)
            self._refilled = now
            periodic = now >= self._next_periodic
            retry = self._retry_at is not None and now >= self._retry_at
            due = self._pending or periodic or retry
            if due and self._tokens < 1:
                return (1 - self._tokens) * self.min_interval
            if due:
                self._tokens -= 1
                full = periodic or self._pending_full or (retry and self._retry_full)
                self._pending = self._pending_full = False
                if retry:
                    self._retry_at, self._retry_full = None, False
                self._next_periodic = now + self.max_interval
        if due:
            self.runs += 1
            self.fn(full)
        with self._lock:
            now = self.clock()
            waits = [self._next_periodic - now]
            if self._retry_at is not None:
                waits.append(self._retry_at - now)
            if self._pending:
                waits.append(0.0)
            return max(0.0, min(waits))

    def loop(self, stop: threading.Event | None = None) -> None:
        """The runner's thread: step, then sleep until due or woken by run()/retry_after()/stop()."""
        while not self._stopped and not (stop is not None and stop.is_set()):
            self._wake.clear()
            wait = self.step()
            if wait > 0:
                self._wake.wait(wait)

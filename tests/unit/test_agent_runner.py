"""BoundedFrequencyRunner with a fake clock: bounded frequency, burst, periodic full
resync, retry_after."""
from __future__ import annotations

import pytest

from netlab.agent.runner import BoundedFrequencyRunner


def make(clock, **kw):
    calls = []
    opts = dict(min_interval=1.0, max_interval=10.0, burst=2, clock=clock)
    opts.update(kw)
    return BoundedFrequencyRunner("t", calls.append, **opts), calls


def test_nothing_runs_until_asked_or_the_period_ends(clock):
    r, calls = make(clock)
    assert r.step() == pytest.approx(10.0) and calls == []
    clock.now += 10
    r.step()
    assert calls == [True]  # the periodic run is a full one


def test_asked_runs_are_partial_and_bounded_by_the_burst_then_the_min_interval(clock):
    r, calls = make(clock)
    for _ in range(3):
        r.run()
        r.step()
    assert calls == [False, False]          # a burst of 2, the third waits for a token
    assert r.pending and r.step() == pytest.approx(1.0)
    clock.now += 1.0
    r.step()
    assert calls == [False, False, False] and not r.pending


def test_many_requests_between_runs_make_one_run(clock):
    r, calls = make(clock)
    for _ in range(50):
        r.run()
    r.step()
    r.step()
    assert calls == [False]


def test_run_full_and_retry_after(clock):
    r, calls = make(clock)
    r.run(full=True)
    r.step()
    r.retry_after(3.0, full=True)
    assert r.step() == pytest.approx(3.0)
    clock.now += 3.0
    r.step()
    assert calls == [True, True]


def test_a_run_postpones_the_periodic_one(clock):
    r, calls = make(clock)
    clock.now += 6
    r.run()
    r.step()
    clock.now += 6
    assert r.step() == pytest.approx(4.0) and calls == [False]


@pytest.mark.parametrize("kw", [dict(min_interval=5.0, max_interval=1.0), dict(burst=0)])
def test_bad_settings_are_refused(clock, kw):
    with pytest.raises(ValueError):
        make(clock, **kw)

"""Fixtures for the pure-logic tests."""
import pytest


class FakeClock:
    """A clock tests move by hand, for TTLs and expiry."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()

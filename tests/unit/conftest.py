"""Fixtures of the fast tier: the fakes of `fakes.py`, a clock tests move by hand."""

from __future__ import annotations

import pytest

from .fakes import FakeProvider, FakeRouter


class Clock:
    """A monotonic clock that moves only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
def clock() -> Clock:
    return Clock()

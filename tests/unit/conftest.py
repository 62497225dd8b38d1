"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from tests.unit.logcapture import captured_log


@pytest.fixture
def log_lines():
    """The lines gmta logs at info level or above during the test."""
    with captured_log() as lines:
        yield lines

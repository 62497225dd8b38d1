"""The retry schedule: initial_retry_time × retry_time_scale^(n−1), exactly (DESIGN §1.3)."""

from __future__ import annotations

import pytest

from gmta.queue.schedule import next_attempt_time, retry_delay


def test_default_schedule_is_15_minutes_times_1_2_to_the_n_minus_1():
    minutes = [retry_delay(n) / 60 for n in range(1, 8)]
    assert minutes == pytest.approx([15, 18, 21.6, 25.92, 31.104, 37.3248, 44.78976])


def test_no_integer_truncation_of_the_power():
    """maddy HEAD truncated the power and gave 15, 15, 15, 15, 30 … (#678)."""
    delays = [retry_delay(n, 900, 1.25) for n in (1, 2, 3, 4, 5)]
    assert delays == pytest.approx([900, 1125, 1406.25, 1757.8125, 2197.265625])
    assert len(set(delays)) == 5


def test_custom_values_and_scale_one():
    assert retry_delay(1, 1.0, 2.0) == 1.0
    assert retry_delay(4, 1.0, 2.0) == 8.0
    assert [retry_delay(n, 0.05, 1.0) for n in (1, 10)] == [0.05, 0.05]


def test_first_attempt_has_no_retry_delay():
    with pytest.raises(ValueError):
        retry_delay(0)


def test_next_attempt_follows_the_least_tried_pending_recipient():
    assert next_attempt_time(1000.0, [3, 1, 2], 900, 1.2) == 1000.0 + 900
    assert next_attempt_time(1000.0, [2, 3], 900, 1.2) == pytest.approx(1000.0 + 1080)

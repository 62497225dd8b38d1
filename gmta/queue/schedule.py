"""When the next attempt of a queued message is due.

The delay after the n-th failed attempt is ``initial_retry_time ×
retry_time_scale^(n−1)``, exactly, as maddy's documentation promises
(DESIGN §1.3): with the defaults 15 min × 1.2^(n−1) = 15, 18, 21.6, 25.9 …
minutes. maddy's code used 1.25 and truncated the power to an integer, which
gave the "bogus" 15, 15, 15, 15, 30 … of maddy issue #678.
"""

from __future__ import annotations

DEFAULT_INITIAL_RETRY_TIME = 15 * 60.0
DEFAULT_RETRY_TIME_SCALE = 1.2


def retry_delay(tries: int, initial: float = DEFAULT_INITIAL_RETRY_TIME,
                scale: float = DEFAULT_RETRY_TIME_SCALE) -> float:
    """Seconds to wait after attempt number *tries* (1 for the first attempt) failed."""
    if tries < 1:
        raise ValueError("retry_delay is for a message that was tried at least once")
    return initial * scale ** (tries - 1)


def next_attempt_time(last_attempt: float, pending_tries: list[int], initial: float,
                      scale: float) -> float:
    """The time of the next attempt after *last_attempt*.

    All temporarily failed recipients of a message are retried together, on the
    schedule of the one tried the fewest times (maddy-behaviour §2.3).
    """
    return last_attempt + retry_delay(min(pending_tries), initial, scale)

"""The queue's gauges: entries in the spool and the age of the oldest one.

Read at scrape time from the spool itself (``Spool.census``: one read of
``msg/`` in the threadpool), so they count what every process sharing the
queue directory (workers, ``gmta queue``) left there, not what this process
thinks. Both gauges of one scrape share one read: the result is kept for
``CENSUS_TTL`` seconds.
"""

from __future__ import annotations

import time

from gmta import metrics
from gmta.durable import in_threadpool

CENSUS_TTL = 0.25


class QueueGauges:
    def __init__(self, name: str, spool):
        self.name = name
        self.spool = spool
        self._taken = -CENSUS_TTL
        self._value: tuple[int, float | None] = (0, None)

    def _census(self) -> tuple[int, float | None]:
        now = time.monotonic()
        if now - self._taken >= CENSUS_TTL:
            self._value = in_threadpool(self.spool.census)
            self._taken = time.monotonic()
        return self._value

    def entries(self) -> int:
        return self._census()[0]

    def oldest_age(self) -> float:
        oldest = self._census()[1]
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def track(self) -> None:
        metrics.QUEUE_ENTRIES.track((self.name,), self.entries)
        metrics.QUEUE_OLDEST_AGE.track((self.name,), self.oldest_age)

    def untrack(self) -> None:
        metrics.QUEUE_ENTRIES.untrack((self.name,), self.entries)
        metrics.QUEUE_OLDEST_AGE.untrack((self.name,), self.oldest_age)

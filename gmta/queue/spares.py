"""Spare files: the inodes of finished queue entries, kept for the next messages.

Creating a file per message and deleting it after delivery costs the file
system an inode allocation and an inode release per message. On ext4 without
a journal the allocation gets slower the more files were deleted in the last
minutes: it skips every inode freed recently (``recently_deleted()`` in
ext4's ``ialloc.c``), so a relay that deletes thousands of queue files a
minute slows down as it runs, and so does every other program creating files
on that disk (bench/README.md). Instead, a finished ``msg/ID.msg`` is renamed
into ``spare/`` and a later message is written over it (``Spool.stage``):
no allocation, no release, and a small message's data block is rewritten in
place.

The rules that keep this as safe as creating a new file
(``docs/reference/queue.md`` has the crash cases):

- **A spare is always locked** (``flock``, exclusive) by the process that
  owns it, through the descriptor it keeps: it is the lock the delivery held
  on the entry, carried on. A spare whose lock is free was left by a process
  that is gone, and recovery (``Spool.clean_spares``) deletes exactly those.
- **A spare joins the pool only after an fsync of ``msg/`` that followed its
  rename out of ``msg/``.** Before that a crash could bring the old entry's
  name back; if the file then held a new message's bytes, that would read as
  a damaged entry.
- **Its name is the old entry's id**, which no other file ever gets, so a
  reader that opened ``msg/ID.msg`` before it was retired can tell: the name
  no longer leads to the inode it read (``Spool._read_head``).
- **The pool is bounded** (``SPARE_LIMIT`` files, each of at most
  ``SPARE_MAX_SIZE`` bytes, whose blocks would sit unused), and emptied, the
  files deleted, when the queue stops.

Attempts keep spares on the hub; staging takes them in pool threads.
``deque.append`` and ``popleft`` are atomic, so no lock is needed; the count
of reservations is only changed on the hub.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

#: Spares kept per queue and process: about the messages in flight at once
#: (sessions receiving plus deliveries running), beyond which a finished
#: entry's file is deleted as before.
SPARE_LIMIT = 64
#: A bigger finished file is deleted: its blocks would sit unused in the pool.
SPARE_MAX_SIZE = 256 << 10


@dataclass(slots=True)
class Spare:
    """A file in ``spare/`` and the descriptor that holds its lock (read-write)."""

    path: str
    fd: int


class SparePool:
    def __init__(self, limit: int = SPARE_LIMIT, max_size: int = SPARE_MAX_SIZE):
        self.limit = limit
        self.max_size = max_size
        self._spares: collections.deque[Spare] = collections.deque()
        #: Files being retired: renamed, waiting for the fsync of msg/ (on the hub).
        self._reserved = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._spares)

    def reserve(self, size: int) -> bool:
        """Whether a finished file of *size* bytes is to be kept (then :meth:`keep` or
        :meth:`cancel` follows). On the hub."""
        if self.closed or size > self.max_size or \
                len(self._spares) + self._reserved >= self.limit:
            return False
        self._reserved += 1
        return True

    def keep(self, spare: Spare) -> bool:
        """After the fsync of ``msg/`` that made the rename out of it durable. On the hub.
        False when the pool was closed meanwhile: the caller deletes the file."""
        self._reserved -= 1
        if self.closed:
            return False
        self._spares.append(spare)
        return True

    def cancel(self) -> None:
        self._reserved -= 1

    def close(self) -> None:
        """Keep no more spares (the queue stops); those kept are still to be taken."""
        self.closed = True

    def take(self) -> Spare | None:
        """A spare to write a new message into, or None (create a file). Any thread."""
        try:
            return self._spares.popleft()
        except IndexError:
            return None

"""Random identifiers from the kernel's generator, a system call per 512 of them.

``secrets.token_hex`` makes a ``getrandom`` call each time, and CPython gives
the GIL up around it: on the hub, that lets a threadpool thread take the GIL,
and the hub waits to get it back (bench/README.md, futex wake-ups). Message
ids, queue ids, Maildir file names and session ids need one each per message
or session, so the bytes come from a pool that ``os.urandom`` refills: the
same generator, fewer calls. None of them is a secret (DSN boundaries and
password salts are not made here either way).
"""

from __future__ import annotations

import os

import gevent.monkey

_POOL_SIZE = 4096
# A native lock: the pool is shared by the hub and the threadpool's threads
# (uncontended, it costs no system call and keeps the GIL).
_lock = gevent.monkey.get_original("_thread", "allocate_lock")()
_pool = b""
_offset = 0


def token_hex(nbytes: int) -> str:
    """Like ``secrets.token_hex``: *nbytes* random bytes as 2 × *nbytes* hex digits."""
    global _pool, _offset
    with _lock:
        if _offset + nbytes > len(_pool):
            _pool = os.urandom(max(_POOL_SIZE, nbytes))
            _offset = 0
        start = _offset
        _offset += nbytes
        return _pool[start:_offset].hex()


def _forget() -> None:
    """In a forked child: the parent's unused bytes must not be used twice."""
    global _pool, _offset
    _pool, _offset = b"", 0


os.register_at_fork(after_in_child=_forget)

"""Counters shared by the worker processes of ``workers N``, in one small file per worker.

With ``workers N`` every worker counts in its own process, and the one
``openmetrics`` port is served by whichever worker the kernel gives the
connection to. So that every scrape shows the whole server, each worker keeps
the values of its shared families (counters, and gauges such as open
sessions) not in its own memory but in a memory-mapped file,
``runtime_dir/metrics/worker-I.metrics``; the worker answering a scrape reads
every worker's file and sums them per label set. (prometheus_client's
multiprocess mode works the same way.)

Why files that are written at every update, not snapshots or questions over
a socket:

- nothing is lost when a worker dies, even by SIGKILL: an update is a store
  into the shared page, which the kernel keeps after the process is gone;
- a restarted worker opens its predecessor's file and counts on from its
  values, so counters stay monotonic across worker restarts within one run
  of the supervisor (the supervisor empties the directory when it starts,
  which is when ``gmta_process_start_time_seconds`` says the counters began);
- a scrape needs no other process to answer, so a worker that is busy,
  stopped or restarting cannot hold it up.

A gauge says what is true now: the gauges in the file of a worker that is no
longer running (its pid, in the header, is gone) are left out of the sum, and
its successor sets them to zero when it takes the file over.

**Format** (native byte order; only processes on one machine read it)::

    header   8 bytes  magic  b"gmtamx01"
             4 bytes  used   bytes of the file in use, header included
             4 bytes  pid    the process writing the file now
    entries, each starting at a multiple of 8:
             4 bytes  length of the key
             key      UTF-8 JSON ["metric_name", ["label value", ...]]
             padding  to a multiple of 8
             8 bytes  value, a double

An entry is written whole, value zero, before ``used`` grows over it, so a
reader never sees a half-written entry, and a process killed in between
leaves only unused bytes. Values are aligned 8-byte stores, which a reader
sees whole in practice (as prometheus_client relies on too). A worker that
finds its predecessor's file malformed replaces it with a new file rather
than truncating it, so no reader sees it shrink. The file is bounded (``MAX_FILE_SIZE``, ``MAX_KEY_LENGTH``):
a label set that does not fit is dropped like one over a family's bound.
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import struct

MAGIC = b"gmtamx01"
_HEADER = struct.Struct("=8sII")
HEADER_SIZE = _HEADER.size  # 16
_LENGTH = struct.Struct("=I")
_VALUE = struct.Struct("=d")
_USED_OFFSET = 8
_PID_OFFSET = 12

INITIAL_FILE_SIZE = 64 * 1024
#: 15 families × 1000 label sets × ~100 bytes is 1.5 MiB; beyond this, new
#: label sets are dropped (counted in gmta_metrics_label_sets_dropped_total).
MAX_FILE_SIZE = 8 * 1024 * 1024
MAX_KEY_LENGTH = 2048
#: The last bytes below MAX_FILE_SIZE are kept for the registry's own counters
#: (label sets dropped, reads failed), so that a full file can still say so.
RESERVED_SIZE = 16 * 1024

DIRECTORY_NAME = "metrics"
_SUFFIX = ".metrics"

Key = tuple[str, tuple[str, ...]]


def directory(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, DIRECTORY_NAME)


def worker_path(metrics_dir: str, index: int) -> str:
    return os.path.join(metrics_dir, f"worker-{index}{_SUFFIX}")


def clear(metrics_dir: str) -> None:
    """Create *metrics_dir*, without the files of an earlier run (the supervisor, at start)."""
    os.makedirs(metrics_dir, mode=0o750, exist_ok=True)
    for path in glob.glob(os.path.join(glob.escape(metrics_dir), "worker-*" + _SUFFIX)):
        os.unlink(path)


def _align(n: int) -> int:
    return (n + 7) & ~7


def _encode_key(key: Key) -> bytes:
    return json.dumps([key[0], list(key[1])], ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def _entries(buffer, used: int):
    """(key, value offset) of each entry in *buffer* up to *used*; ValueError if malformed."""
    offset = HEADER_SIZE
    # Bounded: each entry moves the offset forward by at least 16 bytes.
    while offset < used:
        if offset + 4 > used:
            raise ValueError(f"entry header past the end at {offset}")
        (length,) = _LENGTH.unpack_from(buffer, offset)
        value_offset = offset + _align(4 + length)
        if length == 0 or length > MAX_KEY_LENGTH or value_offset + 8 > used:
            raise ValueError(f"bad entry at {offset}")
        try:
            name, labels = json.loads(bytes(buffer[offset + 4:offset + 4 + length]))
        except ValueError:
            raise ValueError(f"bad key at {offset}") from None
        if not isinstance(name, str) or not isinstance(labels, list):
            raise ValueError(f"bad key at {offset}")
        yield (name, tuple(str(v) for v in labels)), value_offset
        offset = value_offset + 8


class WorkerFile:
    """The file this worker writes: a slot per label set, updated in place."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.slots: dict[Key, int] = {}
        #: Why an existing file was not taken over, for the caller to log.
        self.discarded: str | None = None
        size = os.fstat(self.fd).st_size
        self.map: mmap.mmap | None = None
        if size >= HEADER_SIZE:
            self.map = mmap.mmap(self.fd, size)
            try:
                self._adopt()
            except ValueError as e:
                self.discarded = str(e)
                self.map.close()
                self.map = None
        elif size:
            self.discarded = "shorter than its header"
        if self.map is None:
            if self.discarded:
                # A new file, not the old one truncated: no byte of the discarded
                # one may look like an entry.
                os.close(self.fd)
                os.unlink(path)
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                  0o640)
            os.ftruncate(self.fd, INITIAL_FILE_SIZE)
            self.map = mmap.mmap(self.fd, INITIAL_FILE_SIZE)
            self.slots = {}
            _HEADER.pack_into(self.map, 0, MAGIC, HEADER_SIZE, os.getpid())
        _LENGTH.pack_into(self.map, _PID_OFFSET, os.getpid())

    def _adopt(self) -> None:
        """Take over a predecessor's file: index its entries and keep their values."""
        magic, used, _pid = _HEADER.unpack_from(self.map, 0)
        if magic != MAGIC:
            raise ValueError("not a gmta metrics file")
        if not HEADER_SIZE <= used <= len(self.map):
            raise ValueError("its length field is out of range")
        self.slots = dict(_entries(self.map, used))

    @property
    def used(self) -> int:
        return _LENGTH.unpack_from(self.map, _USED_OFFSET)[0]

    def slot(self, key: Key, reserved: bool = False) -> int | None:
        """The offset of *key*'s value, allocated (zero) if new; None when it does not
        fit. Only a *reserved* key may use the last RESERVED_SIZE bytes."""
        offset = self.slots.get(key)
        if offset is not None:
            return offset
        encoded = _encode_key(key)
        if len(encoded) > MAX_KEY_LENGTH:
            return None
        start = self.used
        value_offset = start + _align(4 + len(encoded))
        end = value_offset + 8
        if end > MAX_FILE_SIZE - (0 if reserved else RESERVED_SIZE):
            return None
        if end > len(self.map) and not self._grow(end):
            return None
        _LENGTH.pack_into(self.map, start, len(encoded))
        self.map[start + 4:start + 4 + len(encoded)] = encoded
        _VALUE.pack_into(self.map, value_offset, 0.0)
        # Only now is the entry part of the file for readers.
        _LENGTH.pack_into(self.map, _USED_OFFSET, end)
        self.slots[key] = value_offset
        return value_offset

    def _grow(self, needed: int) -> bool:
        size = len(self.map)
        # Bounded: the size doubles each pass.
        while size < needed:
            size *= 2
        size = min(size, MAX_FILE_SIZE)
        if size < needed:
            return False
        os.ftruncate(self.fd, size)
        self.map.close()
        self.map = mmap.mmap(self.fd, size)
        return True

    def get(self, offset: int) -> float:
        return _VALUE.unpack_from(self.map, offset)[0]

    def set(self, offset: int, value: float) -> None:
        _VALUE.pack_into(self.map, offset, value)

    def add(self, offset: int, amount: float) -> None:
        _VALUE.pack_into(self.map, offset, _VALUE.unpack_from(self.map, offset)[0] + amount)

    def zero(self, names: set[str]) -> None:
        """Set every entry of the families *names* to zero (a predecessor's gauges)."""
        for (name, _labels), offset in self.slots.items():
            if name in names:
                self.set(offset, 0.0)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def read(path: str) -> tuple[bool, dict[Key, float]]:
    """Whether the writer of *path* still runs, and its values. FileNotFoundError
    when the worker has not created it yet; ValueError when it is malformed.

    A copy with pread, not a mapping: a mapped file that shrank would kill the
    reader with SIGBUS. The header is read first; the writer makes the file
    long enough before ``used`` grows, so the bytes up to ``used`` are there."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header = os.pread(fd, HEADER_SIZE, 0)
        if len(header) < HEADER_SIZE:
            raise ValueError("shorter than its header")
        magic, used, pid = _HEADER.unpack(header)
        if magic != MAGIC or not HEADER_SIZE <= used <= MAX_FILE_SIZE:
            raise ValueError("not a gmta metrics file")
        data = os.pread(fd, used, 0)
    finally:
        os.close(fd)
    if len(data) < used:
        raise ValueError("shorter than its length field")
    values = {key: _VALUE.unpack_from(data, offset)[0] for key, offset in _entries(data, used)}
    return _running(pid), values


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True

"""Message body buffers: small bodies in memory, large ones in a file.

The session driver writes the body through a :class:`BufferWriter` as it
arrives and gets a :class:`Buffer` at the end of data. Targets read it with
:meth:`Buffer.open` as often as they need (once per recipient for Maildir),
so a 50 MiB message is never held in memory when it spills to a file.

The endpoint's ``buffer`` directive picks the policy (maddy's names):
``ram``, ``fs [DIR]``, ``auto [MAX] [DIR]`` — ``auto`` keeps bodies up to MAX
(default 1M) in memory and spills bigger ones to DIR.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

#: Chunk size when a body is copied from a file.
COPY_CHUNK = 1 << 16


@dataclass(frozen=True)
class BufferPolicy:
    """``mode`` is ``ram``, ``fs`` or ``auto``; ``memory_limit`` applies to ``auto``."""

    mode: str = "auto"
    memory_limit: int = 1 << 20
    directory: str | None = None

    def writer(self) -> "BufferWriter":
        limit = {"ram": None, "fs": 0, "auto": self.memory_limit}[self.mode]
        return BufferWriter(limit, self.directory)


class Buffer:
    """A finished body: ``open()`` returns a new reader positioned at the start."""

    size: int

    def open(self) -> BinaryIO:  # pragma: no cover - interface
        raise NotImplementedError

    def remove(self) -> None:
        """Free the storage; the buffer must not be opened afterwards."""

    def write_to(self, fd: int, prefix: bytes = b"") -> None:
        """Write *prefix* and then the body to the file descriptor *fd* (blocking)."""
        with os.fdopen(fd, "wb", buffering=COPY_CHUNK, closefd=False) as out:
            out.write(prefix)
            with self.open() as src:
                while chunk := src.read(COPY_CHUNK):
                    out.write(chunk)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of *data* is written (a regular file may take less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class MemoryBuffer(Buffer):
    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)

    def remove(self) -> None:
        self.data = b""

    def write_to(self, fd: int, prefix: bytes = b"") -> None:
        # One system call for a small message: in a pool thread each call
        # gives up the GIL and takes it back, a futex round trip when the hub
        # is busy (bench/README.md).
        write_all(fd, prefix + self.data)


class FileBuffer(Buffer):
    def __init__(self, path: str, size: int):
        self.path = path
        self.size = size

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class BufferWriter:
    """Collects body chunks; spills to a temporary file past *memory_limit* bytes.

    ``memory_limit=None`` never spills (``buffer ram``); ``0`` always writes a
    file (``buffer fs``).
    """

    def __init__(self, memory_limit: int | None, directory: str | None = None):
        self.memory_limit = memory_limit
        self.directory = directory
        self.size = 0
        self._memory: list[bytes] = []
        self._file: BinaryIO | None = None
        self._path: str | None = None

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        if self._file is None and self.memory_limit is not None and self.size > self.memory_limit:
            self._spill()
        if self._file is not None:
            self._file.write(chunk)
        else:
            self._memory.append(chunk)

    def _spill(self) -> None:
        if self.directory:
            os.makedirs(self.directory, exist_ok=True)
        fd, self._path = tempfile.mkstemp(prefix="body-", dir=self.directory)
        self._file = os.fdopen(fd, "wb", buffering=1 << 16)
        for chunk in self._memory:
            self._file.write(chunk)
        self._memory = []

    def finish(self) -> Buffer:
        """The finished buffer; the writer must not be used afterwards."""
        if self.memory_limit == 0 and self._file is None:
            self._spill()
        if self._file is not None:
            self._file.close()
            path, self._file, self._path = self._path, None, None
            return FileBuffer(path, self.size)
        data = b"".join(self._memory)
        self._memory = []
        return MemoryBuffer(data)

    def discard(self) -> None:
        """Drop what was written (the client went away or the message was refused)."""
        self._memory = []
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None

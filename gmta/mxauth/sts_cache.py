"""The MTA-STS policy cache: in memory (``cache ram``) or in a directory (``cache fs``).

RFC 8461 §5.1: a policy is used until its ``max_age`` runs out, also when the
TXT record has disappeared or a new fetch fails; that is what protects
against an attacker who strips the TXT record or blocks the HTTPS fetch. A
cache that forgot everything on restart would give that protection away, so
``cache fs`` (the default) keeps one JSON file per domain, written atomically
(temporary file, fsync, rename, directory fsync) in gevent's threadpool.

Both caches are bounded: ``MAX_ENTRIES`` domains in memory (least recently
used first out) and on disk (the least recently written files first out).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass

import gmta.log
from gmta.durable import fsync_dir, in_threadpool
from gmta.mxauth.sts_policy import PolicyError, STSPolicy, parse_policy

log = gmta.log.get("mx_auth.mtasts")

MAX_ENTRIES = 10000
#: Version of the file format, checked when reading.
FORMAT = 1
#: A cache file larger than this is not one we wrote.
MAX_FILE_SIZE = 128 * 1024
_FILE_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}\Z")


@dataclass(frozen=True)
class CachedPolicy:
    domain: str
    policy_id: str
    policy: STSPolicy
    #: Wall-clock seconds (they must survive a restart): when fetched, when it expires.
    fetched_at: float
    expires_at: float

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "domain": self.domain, "id": self.policy_id,
                           "fetched_at": self.fetched_at, "expires_at": self.expires_at,
                           "policy": self.policy.to_text()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CachedPolicy":
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        return cls(str(data["domain"]), str(data["id"]),
                   parse_policy(data["policy"].encode()),
                   float(data["fetched_at"]), float(data["expires_at"]))


class RAMCache:
    """Policies in memory, least recently used dropped first."""

    def __init__(self, max_entries: int = MAX_ENTRIES, clock=time.time):
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, CachedPolicy] = OrderedDict()

    def get(self, domain: str) -> CachedPolicy | None:
        entry = self._entries.get(domain)
        if entry is None:
            return None
        if entry.expired(self.clock()):
            del self._entries[domain]
            return None
        self._entries.move_to_end(domain)
        return entry

    def put(self, entry: CachedPolicy) -> None:
        self._entries[entry.domain] = entry
        self._entries.move_to_end(entry.domain)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class FSCache(RAMCache):
    """Policies in files ``<dir>/<domain>.json``, with the RAM cache in front."""

    def __init__(self, directory: str, max_entries: int = MAX_ENTRIES, clock=time.time):
        super().__init__(max_entries, clock)
        self.directory = directory

    def _path(self, domain: str) -> str | None:
        # Only A-label names become file names; anything else stays in RAM.
        return os.path.join(self.directory, domain + ".json") if _FILE_NAME.match(domain) \
            and ".." not in domain else None

    def get(self, domain: str) -> CachedPolicy | None:
        entry = super().get(domain)
        if entry is not None:
            return entry
        path = self._path(domain)
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cache_unreadable", path=path, error=e.strerror or str(e))
            return None
        try:
            if len(text) > MAX_FILE_SIZE:
                raise ValueError("file too large")
            entry = CachedPolicy.from_json(text)
            if entry.domain != domain:
                raise ValueError(f"the file is for {entry.domain}")
        except (ValueError, KeyError, TypeError, PolicyError) as e:
            log.warning("cache_file_ignored", path=path, error=str(e))
            return None
        if entry.expired(self.clock()):
            in_threadpool(_remove, path)
            return None
        super().put(entry)
        return entry

    def put(self, entry: CachedPolicy) -> None:
        super().put(entry)
        path = self._path(entry.domain)
        if path is None:
            return
        try:
            in_threadpool(_write_atomically, self.directory, path, entry.to_json(),
                          self.max_entries, self.clock())
        except OSError as e:
            # The policy still works from memory; the next put tries again.
            log.warning("cache_write_failed", path=path, error=e.strerror or str(e))


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_atomically(directory: str, path: str, text: str, max_entries: int, now: float) -> None:
    """Write *path* so that a crash leaves the old file or the new one, never a mix."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _prune(directory, max_entries - 1, now, keep=os.path.basename(path))
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # A crash before the rename leaves a .tmp- file, removed by the next _prune.
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    fsync_dir(directory)


def _prune(directory: str, limit: int, now: float, keep: str) -> None:
    """Keep at most *limit* cache files besides *keep*, dropping the oldest and stale temporaries."""
    names = [n for n in os.listdir(directory) if n != keep]
    for name in names:
        if name.startswith(".tmp-"):
            full = os.path.join(directory, name)
            try:
                if os.stat(full).st_mtime < now - 3600:
                    _remove(full)
            except FileNotFoundError:
                pass
    files = [n for n in names if n.endswith(".json")]
    if len(files) <= limit:
        return
    aged = []
    for name in files:
        full = os.path.join(directory, name)
        try:
            aged.append((os.stat(full).st_mtime, full))
        except FileNotFoundError:
            continue
    aged.sort()
    for _mtime, full in aged[:len(aged) - limit]:
        _remove(full)

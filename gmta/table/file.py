"""``table.file``: a table read from a text file of ``key: value`` lines (maddy-behaviour §2.2).

The format is maddy's:

* ``key: value`` — one entry; the first colon separates key and value, so a
  value may contain colons (``alice: argon2id:v=19:...``);
* ``key: a, b`` or the key repeated on several lines — several values, in
  file order;
* ``key`` alone (or ``key:``) — the key with one empty value;
* a line whose first non-blank character is ``#`` is a comment; blank lines
  are ignored; spaces around keys and values are ignored;
* a line with nothing before its colon is an error, reported as
  ``FILE:LINE: ...``.

The file is read once when the configuration is loaded (a blocking read:
loading happens before any session runs). Afterwards, a lookup checks at
most once per ``reload_interval`` whether the file changed (``stat``: inode,
size, mtime and ctime), and if so re-reads it in gevent's threadpool. A file
that fails to parse at that point is reported once (``table_reload_failed``)
and the previous entries stay in use; a file that was removed makes the table
empty, as in maddy.

``set()`` and ``remove()`` edit the file for ``gmta creds``: under an
exclusive ``flock`` on a lock file beside it, they re-read the file, change
only the lines of the key, and replace the file atomically (temporary file,
fsync, rename, fsync of the directory). They block and are meant for the
command line, not for the daemon's hub.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence

import gmta.log
from gmta.config.module import register
from gmta.config.reader import Bool, Directive, Duration, Path
from gmta.durable import fsync_dir, in_threadpool
from gmta.errors import ConfigError
from gmta.table import KeyExistsError, KeyNotFoundError, Table, TableError, fold_key

DEFAULT_RELOAD_INTERVAL = 15.0
#: Mode of a table file that ``set()`` creates (it may hold password hashes).
NEW_FILE_MODE = 0o600

# The file's identity and version; a change of any field means "re-read".
Signature = tuple[int, int, int, int, int]
_MISSING = ("missing",)         # the signature of a file that does not exist
_UNKNOWN = ("unknown",)         # nothing read yet, or a forced reload


def _signature(st: os.stat_result) -> Signature:
    # ctime too: a chmod that makes an unreadable file readable changes only it.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Entries:
    """The parsed content of a table file: keys as written, and their folded forms."""

    def __init__(self, values: dict[str, list[str]] | None = None):
        self.values: dict[str, list[str]] = values or {}
        self.folded: dict[str, str] = {}
        for key in self.values:
            # The first key written wins among keys that differ only in case.
            self.folded.setdefault(fold_key(key), key)

    def resolve(self, key: str) -> str | None:
        """The key as written in the file that *key* finds: exact first, then folded."""
        if key in self.values:
            return key
        return self.folded.get(fold_key(key))

    def __len__(self) -> int:
        return len(self.values)


def line_key(line: str) -> str | None:
    """The key of one line of a table file, or None for a blank or comment line.

    Raises ValueError for a line with nothing before its colon.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    key = text.partition(":")[0].strip()
    if not key:
        raise ValueError("empty key before colon")
    return key


def parse_lines(lines: Sequence[str], path: str) -> dict[str, list[str]]:
    """The entries of a table file's lines; a bad line raises ConfigError(path, line)."""
    values: dict[str, list[str]] = {}
    for number, line in enumerate(lines, 1):
        try:
            key = line_key(line)
        except ValueError as e:
            raise ConfigError(str(e), path, number,
                              hint="write 'key: value', 'key: value1, value2' or 'key'") from None
        if key is None:
            continue
        rest = line.strip().partition(":")[2]
        values.setdefault(key, []).extend(v.strip() for v in rest.split(","))
    return values


def split_lines(data: bytes, path: str) -> list[str]:
    """*data* as lines (newline removed, ``\\r`` kept); not UTF-8 is a ConfigError with the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError("the file is not valid UTF-8", path, line) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()           # the final newline ends the last line
    return lines


def read_table(path: str) -> tuple[Signature, Entries]:
    """Read and parse *path*: (its signature, its entries). Blocking."""
    with open(path, "rb") as f:
        # The signature is taken before reading: a write during the read
        # changes the file's mtime, and the next check reads it again.
        signature = _signature(os.fstat(f.fileno()))
        data = f.read()
    return signature, Entries(parse_lines(split_lines(data, path), path))


@register
class FileTable(Table):
    name = "table.file"
    max_inline_args = 1
    directives = (
        Directive("file", Path(), doc="the table file; relative to state_dir"),
        Directive("reload_interval", Duration(), DEFAULT_RELOAD_INTERVAL,
                  doc="how often a lookup may check whether the file changed"),
        Directive("debug", Bool(), False, inherit_global=True, doc="log reloads at debug level"),
    )

    def configure(self, cfg, ctx) -> None:
        if self.inline_args:
            if cfg.given("file"):
                raise cfg.error("file", "file path specified both in directive and in "
                                        "argument, do it once")
            path = ctx.state_path(self.inline_args[0])
        elif cfg.file is not None:
            path = cfg.file
        else:
            raise self.node.error("missing required directive: file",
                                  hint="write 'file PATH' in the block, or the path after "
                                       "the module name")
        self.path = path
        self.reload_interval = cfg.reload_interval
        self.log = gmta.log.get("table.file", debug=cfg.debug)
        self._next_check = time.monotonic() + self.reload_interval
        where = cfg.nodes.get("file") or self.node
        # A blocking read: the configuration is loaded before anything is served.
        try:
            self._signature, self._entries = read_table(path)
        except FileNotFoundError:
            ctx.warn(where, f"table file {path} does not exist; the table is empty "
                            "until it is created")
            self._signature, self._entries = _MISSING, Entries()
        except ConfigError as e:
            raise ConfigError(e.message, e.file, e.line,
                              hint="; ".join(filter(None, (
                                  e.hint, f"table.file used at {where.location}")))) from None
        except OSError as e:
            raise where.error(f"cannot read table file {path}: {e.strerror or e}") from None

    # -- lookups ------------------------------------------------------------------

    def lookup_multi(self, key: str) -> list[str]:
        """The values of *key* (the key as written, else case-insensitively), or []."""
        self.check_reload()
        entries = self._entries
        found = entries.resolve(key)
        return list(entries.values[found]) if found is not None else []

    def keys(self) -> list[str]:
        """Every key, as written in the file, in file order."""
        self.check_reload()
        return list(self._entries.values)

    # -- reloading --------------------------------------------------------------------

    def check_reload(self) -> None:
        """Re-read the file if it changed; checks at most once per ``reload_interval``."""
        now = time.monotonic()
        if now < self._next_check:
            return
        # Set first: lookups by other greenlets meanwhile use the current entries.
        self._next_check = now + self.reload_interval
        try:
            signature = _signature(os.stat(self.path))
        except FileNotFoundError:
            self._set_missing()
            return
        except OSError as e:
            self._reload_failed(_UNKNOWN, e.strerror or str(e))
            return
        if signature == self._signature:
            return
        try:
            signature, entries = in_threadpool(read_table, self.path)
        except FileNotFoundError:
            self._set_missing()
            return
        except ConfigError as e:
            self._reload_failed(signature, str(e))
            return
        except OSError as e:
            self._reload_failed(signature, e.strerror or str(e))
            return
        self._signature, self._entries = signature, entries
        self.log.info("table_reloaded", table=self.instance_name, file=self.path,
                      keys=len(entries))

    def reload(self) -> None:
        """Re-read the file now (the daemon's reload signal)."""
        self._signature = _UNKNOWN
        self._next_check = 0.0
        self.check_reload()

    def _set_missing(self) -> None:
        if self._signature is not _MISSING:
            self.log.warning("table_file_missing", table=self.instance_name, file=self.path)
        self._signature, self._entries = _MISSING, Entries()

    def _reload_failed(self, signature, error: str) -> None:
        self.log.error("table_reload_failed", table=self.instance_name, file=self.path,
                       error=error, action="keeping the previous entries")
        # Remember the bad version: it is reported once, and read again only
        # after it changes. An unknown signature (stat failed) is retried at
        # the next check.
        if signature is not _UNKNOWN:
            self._signature = signature

    # -- editing (gmta creds) -------------------------------------------------------------

    def set(self, key: str, value: str | Sequence[str], *, create: bool = True,
            replace: bool = True) -> None:
        """Make *value* (one value or several) the values of *key*, rewriting the file.

        The first line of the key (as :meth:`lookup` finds it) is replaced and its
        other lines dropped; a new key is appended. Raises KeyExistsError if the
        key exists and not *replace*, KeyNotFoundError if it does not and not
        *create*, ValueError for a key or value the format cannot hold.
        """
        check_key(key)
        values = [value] if isinstance(value, str) else list(value)
        if not values:
            raise ValueError("at least one value is needed")
        for v in values:
            check_value(v)
        text = f"{key}: {', '.join(values)}".rstrip()

        def change(lines: list[str], found: str | None) -> list[str]:
            if found is None:
                if not create:
                    raise KeyNotFoundError(f"{key} is not in {self.path}")
                return lines + [text]
            if not replace:
                raise KeyExistsError(f"{found} is already in {self.path}")
            out: list[str] = []
            done = False
            for line in lines:
                if line_key(line) != found:
                    out.append(line)
                elif not done:
                    out.append(text)
                    done = True
            return out

        self._edit(key, change)

    def remove(self, key: str) -> None:
        """Remove every line of *key* (as :meth:`lookup` finds it); KeyNotFoundError if none."""
        def change(lines: list[str], found: str | None) -> list[str]:
            if found is None:
                raise KeyNotFoundError(f"{key} is not in {self.path}")
            return [line for line in lines if line_key(line) != found]

        self._edit(key, change)

    def _edit(self, key: str, change) -> None:
        # Symbolic links are followed: the file they point to is replaced.
        path = os.path.realpath(self.path)
        directory, base = os.path.split(path)
        with _locked(os.path.join(directory, f".{base}.lock")):
            try:
                with open(path, "rb") as f:
                    old_stat = os.fstat(f.fileno())
                    data = f.read()
            except FileNotFoundError:
                old_stat, data = None, b""
            lines = split_lines(data, path)
            # A broken file is not edited: its error is reported as at load.
            current = Entries(parse_lines(lines, path))
            # A file with Windows line ends keeps them (all of its lines get them).
            eol = "\r\n" if b"\r\n" in data else "\n"
            new_lines = change(lines, current.resolve(key))
            new_text = "".join(line.removesuffix("\r") + eol for line in new_lines)
            write_atomically(path, new_text.encode("utf-8"), old_stat)
            entries = Entries(parse_lines(new_lines, path))
            signature = _signature(os.stat(path))
        self._signature, self._entries = signature, entries


def check_key(key: str) -> None:
    """Refuse a key that would not read back as itself from a table file."""
    if not key or key != key.strip():
        raise ValueError("a key cannot be empty or start or end with spaces")
    if ":" in key or "\n" in key or "\r" in key:
        raise ValueError(f"a key cannot contain ':' or a line break: {key!r}")
    if key.startswith("#"):
        raise ValueError(f"a key cannot start with '#': {key!r}")


def check_value(value: str) -> None:
    """Refuse a value that would not read back as itself from a table file."""
    if value != value.strip():
        raise ValueError("a value cannot start or end with spaces")
    if "," in value or "\n" in value or "\r" in value:
        raise ValueError("a value cannot contain ',' or a line break")


@contextlib.contextmanager
def _locked(lock_path: str) -> Iterator[None]:
    """An exclusive ``flock`` on *lock_path*, serialising edits of one table file.

    The lock is on a separate file because the table file itself is replaced
    by each edit: a lock on it would be a lock on the old inode.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)          # releases the lock


def write_atomically(path: str, data: bytes, old_stat: os.stat_result | None) -> None:
    """Replace *path* with *data* so that a crash leaves the old or the new file, never a mix."""
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
    try:
        # A crash from here to the rename leaves this temporary file beside
        # the table (named .BASE.XXXX.tmp) and the old table untouched.
        with os.fdopen(fd, "wb") as f:
            if old_stat is None:
                os.fchmod(f.fileno(), NEW_FILE_MODE)
            else:
                os.fchmod(f.fileno(), stat.S_IMODE(old_stat.st_mode))
                if (old_stat.st_uid, old_stat.st_gid) != (os.geteuid(), os.getegid()):
                    with contextlib.suppress(PermissionError):
                        os.fchown(f.fileno(), old_stat.st_uid, old_stat.st_gid)
            f.write(data)
            f.flush()
            # The data is on disk before the name points to it.
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Until the directory is fsynced, a crash may bring back the old file
    # (complete): the rename itself is atomic.
    fsync_dir(directory)


__all__ = ["FileTable", "KeyExistsError", "KeyNotFoundError", "TableError", "read_table",
           "parse_lines", "write_atomically"]

"""Logs are data: one event per line, ``key=value`` (DESIGN §4.7).

Use :func:`get` for a logger and pass fields as keywords::

    log = gmta.log.get("endpoint")
    log.info("listening", endpoint="tcp://127.0.0.1:2525")
    # -> level=info module=endpoint event=listening endpoint=tcp://127.0.0.1:2525

Values with spaces, quotes or ``=`` are quoted. Callers never pass secrets.
Output goes through the standard ``logging`` package, configured once by
:func:`setup` from the global ``log`` and ``debug`` directives.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time

import gevent
import gevent.monkey

_ROOT = "gmta"
_BARE = re.compile(r"[^\s\"=\\]+\Z")


def format_value(value: object) -> str:
    text = str(value)
    if _BARE.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def format_fields(fields: dict) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in fields.items() if v is not None)


class EventLogger:
    """A thin front for ``logging.Logger`` that takes an event name and fields."""

    def __init__(self, module: str, debug: bool = False):
        self.module = module
        #: A module's own ``debug yes``: its debug events pass whatever the global level.
        self.force_debug = debug
        self._logger = logging.getLogger(f"{_ROOT}.{module}")

    def _log(self, level: int, event: str, fields: dict) -> None:
        forced = self.force_debug and level == logging.DEBUG
        if forced or self._logger.isEnabledFor(level):
            line = format_fields({"module": self.module, "event": event, **fields})
            # handle() skips the logger's level check (handlers have none).
            self._logger.handle(self._logger.makeRecord(
                self._logger.name, level, "", 0, line, None, None))

    def debug(self, event: str, **fields) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields) -> None:
        self._log(logging.ERROR, event, fields)

    @property
    def debug_enabled(self) -> bool:
        return self.force_debug or self._logger.isEnabledFor(logging.DEBUG)


def get(module: str, debug: bool = False) -> EventLogger:
    return EventLogger(module, debug)


#: Fields every line of this process carries (``worker=N`` in a worker process).
_process_fields = ""


def set_process_fields(**fields) -> None:
    """Add *fields* to every line this process logs from now on (after ``level=``)."""
    global _process_fields
    _process_fields = format_fields(fields) + " " if fields else ""


class _Formatter(logging.Formatter):
    def __init__(self, timestamps: bool):
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        level = "warn" if record.levelno == logging.WARNING else record.levelname.lower()
        line = f"level={level} {_process_fields}{record.getMessage()}"
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            line = f"ts={stamp}.{int(record.msecs):03d}Z {line}"
        return line


#: A buffer holds at most this many lines before it is written (a burst of
#: lines inside one turn of the hub loop, such as a reload, stays bounded).
BUFFER_LINES = 256
# The thread's real identity: monkey-patching makes threading.get_ident a greenlet's.
_thread_ident = gevent.monkey.get_original("_thread", "get_ident")


class _LineBuffer:
    """Hold a stream handler's lines and write them once per turn of the hub loop.

    Two lines per message, each its own ``write`` to stderr from the hub, cost
    more than the message's other system calls (bench/README.md). Here a line
    waits for a callback that runs when the hub next turns, before it polls,
    so every line logged in that turn goes out in one ``write``. Nothing waits
    longer than the greenlets that run in one turn: a line that says something
    went wrong (warning and above) is written at once with those before it; so
    is a line logged from another thread (the hub's callbacks are not thread
    safe) and a full buffer; and ``flush()`` (called by ``logging.shutdown`` at
    exit, before a reopen and when the handler is closed) writes what is left.
    """

    def _init_buffer(self) -> None:
        self._lines: list[str] = []
        self._scheduled = False
        self._hub_thread = _thread_ident()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if (record.levelno >= logging.WARNING or len(self._lines) >= BUFFER_LINES
                or _thread_ident() != self._hub_thread):
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            gevent.get_hub().loop.run_callback(self._flush_from_hub)

    def _flush_from_hub(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self, reopen_if_moved: bool = True) -> None:
        self.acquire()
        try:
            if self._lines:
                text = "\n".join(self._lines) + "\n"
                self._lines = []
                self._write(text, reopen_if_moved)
            if self.stream is not None and hasattr(self.stream, "flush"):
                self.stream.flush()
        except (OSError, ValueError):
            # A closed or broken stream (ValueError: I/O on a closed file):
            # as with logging's own handlers, a log that cannot be written
            # must not break what logged it, and there is nowhere to say so.
            pass
        finally:
            self.release()

    def _write(self, text: str, reopen_if_moved: bool) -> None:
        self.stream.write(text)

    def close(self) -> None:
        self.flush()
        super().close()


class BufferedStreamHandler(_LineBuffer, logging.StreamHandler):
    """``stderr``/``stderr_ts``, written once per turn of the hub loop."""

    def __init__(self, stream=None):
        logging.StreamHandler.__init__(self, stream)
        self._init_buffer()


class BufferedFileHandler(_LineBuffer, logging.handlers.WatchedFileHandler):
    """``log file``, written once per turn of the hub loop; the check whether
    logrotate moved the file runs once per write, not once per line."""

    def __init__(self, path: str):
        logging.handlers.WatchedFileHandler.__init__(self, path)
        self._init_buffer()

    def _write(self, text: str, reopen_if_moved: bool) -> None:
        if reopen_if_moved:
            self.reopenIfNeeded()
        if self.stream is None:
            # FileHandler.emit's rule: a stream closed by a failed reopen is
            # opened again by the next write.
            self.stream = self._open()
        self.stream.write(text)


def reopen_files() -> int:
    """Close and reopen every log file (SIGUSR1, after logrotate); returns how many."""
    count = 0
    for handler in logging.getLogger(_ROOT).handlers:
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            # Unconditionally, unlike WatchedFileHandler's own check: a file
            # truncated or replaced in place keeps its inode and would be missed.
            if isinstance(handler, BufferedFileHandler):
                # Lines logged before the signal belong to the old file.
                handler.flush(reopen_if_moved=False)
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                    # None, not a closed file, if the open below fails:
                    # FileHandler.emit then tries to open it again.
                    handler.stream = None
                handler.stream = handler._open()
                handler._statstream()
            finally:
                handler.release()
            count += 1
    return count


def flush() -> None:
    """Write every buffered line now.

    For a line that must reach the log before something another process
    logs: a worker's ``listening`` lines go out before it tells the
    supervisor it is ready, so the supervisor's ``started`` line (on the same
    stderr) never comes before them.
    """
    for handler in logging.getLogger(_ROOT).handlers:
        handler.flush()


def file_paths() -> list[str]:
    """The files gmta currently logs to."""
    return [handler.baseFilename for handler in logging.getLogger(_ROOT).handlers
            if isinstance(handler, logging.handlers.WatchedFileHandler)]


#: Whether stream and file handlers buffer lines per turn of the hub loop
#: (``gmta run``; a command without a running hub writes each line at once).
_buffered = False


def setup(targets, debug: bool = False, stream=None, buffered: bool | None = None) -> None:
    """Route gmta's logs to *targets* (``LogTarget`` values); an empty list is ``log off``.

    *buffered* (kept for later calls when None, as on a reload) makes stderr
    and file targets write once per turn of the hub loop (:class:`_LineBuffer`).
    """
    global _buffered
    if buffered is not None:
        _buffered = buffered
    root = logging.getLogger(_ROOT)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    # No line shows the thread or the process (a worker says worker=N), and
    # filling them in costs more than formatting the line: current_thread()
    # makes a new dummy Thread for every greenlet that logs.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for target in targets:
        if target.kind in ("stderr", "stderr_ts"):
            handler = (BufferedStreamHandler if _buffered else logging.StreamHandler)(
                stream or sys.stderr)
            handler.setFormatter(_Formatter(timestamps=target.kind == "stderr_ts"))
        elif target.kind == "syslog":
            handler = logging.handlers.SysLogHandler(address="/dev/log",
                                                     facility=logging.handlers.SysLogHandler.LOG_MAIL)
            handler.setFormatter(_Formatter(timestamps=False))
        else:
            # gmta run sets logging up before it creates state_dir, where a
            # relative log path lives.
            directory = os.path.dirname(target.path)
            if directory:
                os.makedirs(directory, mode=0o750, exist_ok=True)
            # WatchedFileHandler reopens the file when logrotate moves it.
            handler = (BufferedFileHandler if _buffered
                       else logging.handlers.WatchedFileHandler)(target.path)
            handler.setFormatter(_Formatter(timestamps=True))
        root.addHandler(handler)
    if not targets:
        root.addHandler(logging.NullHandler())

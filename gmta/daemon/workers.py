"""``workers N``: a supervisor and N receiving processes on the same ports.

One gmta process is one core (gevent runs Python on one thread). With
``workers N`` (N > 1) ``gmta run`` becomes a small supervisor that

1. binds every listener once, while it may still be root: on each TCP address
   one ``SO_REUSEPORT`` socket per worker, so the kernel spreads connections
   over the workers' accept queues (:func:`gmta.net.listen.bind_group`); a
   unix socket is bound once and shared — every worker accepts on it, and
   whichever wins a connection serves it (the others see EAGAIN);
2. drops root for ``run_as``, then starts each worker as a new process,
   ``gmta run -c FILE --worker-index I`` (a re-exec, not a fork: a fork of a
   process with a gevent hub and threadpool copies their state, a fresh
   interpreter has none). A worker gets its sockets as inherited descriptors
   (``GMTA_WORKER_FDS``) and one end of a socketpair to the supervisor;
3. tells systemd ``READY=1`` when every worker has written ``ready`` on its
   socketpair — that is, when every worker listens;
4. forwards SIGTERM/SIGINT (drain), SIGUSR1 (reopen logs) and SIGHUP/SIGUSR2
   (reload: :func:`_forward_reload` is the one place that decides what a
   reload means for the workers) to every worker;
5. restarts a worker that exits unexpectedly after a delay that doubles from
   ``RESTART_DELAY`` up to ``RESTART_DELAY_MAX``, and gives up — stopping the
   others and exiting 1 with ``event=workers_crash_loop`` — after
   ``CRASH_LIMIT`` exits within ``CRASH_WINDOW`` seconds, or when a worker
   fails before the first start completed (a port in use, a bad directory).

The supervisor keeps every listening socket open for the whole run, so a
worker restarts without root and the connections queued on a dead worker's
socket wait for its successor instead of being refused.

**The queue's full scheduler runs in worker 0 only** (scans, retries, DSN
timing): attempts, retries and DSNs are module code, which the supervisor
never runs, so a crash in delivery code takes down one worker that is
restarted like any other, and the supervisor stays small. Worker 0 also
receives mail. Every worker commits into the same spool (the locks of
``gmta.queue.store`` keep them apart) and makes the first attempt of what it
committed, so delivery spreads over the workers; what another worker does not
finish it hands to worker 0 by datagram (``gmta.queue.wakeup``).

A worker whose supervisor disappears (SIGKILL) sees EOF on its socketpair and
drains and stops as on SIGTERM, so no orphan keeps serving the ports.

**Metrics**: every worker counts into its own file under
``runtime_dir/metrics/``, and whichever worker answers a scrape of the shared
``openmetrics`` port sums all of them (:mod:`gmta.metrics.shared`). The
supervisor empties that directory when it starts, and a restarted worker
counts on from its predecessor's file, so counters only go up within one run
of the supervisor; ``gmta_process_start_time_seconds`` is the supervisor's.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket as _stdlib_socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import gevent
from gevent import socket
from gevent.queue import Queue

import gmta.log
from gmta import __version__, metrics
from gmta.config.loader import LoadedConfig
from gmta.daemon import privileges
from gmta.daemon.notify import Notifier
from gmta.daemon.process import (HANDLED_SIGNALS, REOPEN_LOGS_SIGNAL,
                                 STOP_SIGNALS, give_log_files, prepare_directories,
                                 reopen_logs, run_as)
from gmta.metrics import shared as shared_metrics
from gmta.net import listen

log = gmta.log.get("daemon")

FDS_ENVIRONMENT = "GMTA_WORKER_FDS"
READY_LINE = b"ready\n"

RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
#: How long the first start of all workers may take (each loads the config).
START_DEADLINE = 60.0
#: Beyond the endpoints' shutdown_timeout and the queue's grace: then SIGKILL.
STOP_MARGIN = 30.0
#: After a second stop signal the workers stop at once; this long, then SIGKILL.
FORCED_STOP_DEADLINE = 10.0
EXIT_START_FAILED = 1
EXIT_GAVE_UP = 1


# -- the worker's side -----------------------------------------------------------------

@dataclass
class WorkerRole:
    """What a worker process knows of its place: its index and its line to the supervisor."""

    index: int
    count: int
    control: socket.socket

    @classmethod
    def from_environment(cls, index: int) -> "WorkerRole":
        """Adopt the inherited sockets; the variable is removed so children never see it.

        Raises LookupError when this process was not started by a supervisor."""
        if FDS_ENVIRONMENT not in os.environ:
            raise LookupError("--worker-index is set by the supervisor of 'workers N' only")
        spec = json.loads(os.environ.pop(FDS_ENVIRONMENT))
        for key, fd in spec["listen"].items():
            listen.adopt(key, fd)
        control = socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM,
                                fileno=spec["control"])
        # Before any module runs, so that nothing is counted outside the file.
        discarded = metrics.share_with_workers(spec["metrics"], index, spec["count"],
                                               spec["started"])
        if discarded:
            log.warning("metrics_file_discarded", worker=index, reason=discarded,
                        hint="this worker's counts start again from zero")
        return cls(index, spec["count"], control)

    def prepare(self, config: LoadedConfig) -> None:
        """Before modules start: tag the logs, give the queues' full schedulers to worker 0."""
        from gmta.queue.target import QueueTarget

        gmta.log.set_process_fields(worker=self.index)
        for endpoint in config.endpoints:
            for address in getattr(endpoint, "addresses", ()):
                if not listen.is_adopted(address, endpoint.instance_name):
                    # Bound here, a TCP address would get one socket without
                    # SO_REUSEPORT, in whichever worker binds first; the others
                    # would fail. The supervisor binds listeners, at start only.
                    raise OSError(errno.EADDRNOTAVAIL,
                                  f"{address} is not among the addresses the supervisor of "
                                  f"'workers {self.count}' listens on; restart gmta to add "
                                  "a listening address")
        for instance in config.instances:
            if isinstance(instance, QueueTarget):
                instance.share_with_workers(schedules=self.index == 0)

    def ready(self, signals: Queue) -> None:
        """Every module runs: tell the supervisor, and stop when it goes away."""
        # This worker's lines first: the supervisor logs ``started`` when
        # every worker is ready, and a reader of the log (or a test waiting
        # for that line) expects each worker's ``listening`` lines before it.
        gmta.log.flush()
        self.control.sendall(READY_LINE)
        gevent.spawn(self._watch_supervisor, signals)

    def _watch_supervisor(self, signals: Queue) -> None:
        # The supervisor never writes after the start; EOF (or an error) means
        # it is gone, and the ports must not stay served by an orphan.
        try:
            while self.control.recv(64):
                pass
        except OSError:
            pass
        log.warning("supervisor_gone", pid=os.getpid(), hint="stopping this worker")
        signals.put_nowait(signal.SIGTERM)


# -- the supervisor's side -------------------------------------------------------------

@dataclass
class Worker:
    """One worker process as the supervisor sees it."""

    index: int
    sockets: dict[str, socket.socket]
    process: subprocess.Popen | None = None
    control: socket.socket | None = None
    ready: bool = False
    #: Monotonic times of its unexpected exits, for the crash-loop limit.
    crashes: list[float] = field(default_factory=list)
    restart_pending: bool = False
    #: The supervisor has handled the exit of ``process`` (its "exit" event). Not
    #: ``alive``: gevent sets a child's returncode before that event is queued.
    exit_handled: bool = False
    #: The run's metrics directory and start time, handed to each of its processes.
    metrics_dir: str = ""
    started: float = 0.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass


def supervise(config: LoadedConfig) -> int:
    """Bind, drop root, run ``workers`` worker processes until a stop signal; exit status."""
    count = config.globals.workers
    events: Queue = Queue()
    handlers = [gevent.signal_handler(sig, events.put_nowait, ("signal", sig))
                for sig in HANDLED_SIGNALS]
    notifier = Notifier()
    workers: list[Worker] = []
    try:
        try:
            workers = _bind(config, count)
            _drop_privileges(config)
        except OSError as e:
            log.error("start_failed", error=e.strerror or str(e),
                      path=getattr(e, "filename", None))
            return EXIT_START_FAILED
        except KeyError as e:
            log.error("start_failed", error=str(e).strip("'\""))
            return EXIT_START_FAILED
        for worker in workers:
            _spawn(config, worker, count, events)
        return _run(config, workers, events, notifier)
    finally:
        for worker in workers:
            if worker.alive:
                worker.process.kill()
                worker.process.wait()
        for handler in handlers:
            handler.cancel()


def _bind(config: LoadedConfig, count: int) -> list[Worker]:

    owner = run_as(config)
    drop_to = owner if owner is not None and not owner.is_current else None
    prepare_directories(config, drop_to)
    # A new run counts from zero: the files of an earlier run go.
    metrics_dir = shared_metrics.directory(config.runtime_dir)
    shared_metrics.clear(metrics_dir)
    if drop_to is not None:
        privileges.give_directory(metrics_dir, drop_to)
    # The supervisor's start: when this run's counters began.
    started = metrics.PROCESS_START_TIME.value()
    workers = [Worker(index, {}, metrics_dir=metrics_dir, started=started)
               for index in range(count)]
    try:
        for endpoint in config.endpoints:
            for address in getattr(endpoint, "addresses", ()):
                group = listen.bind_group(address, count)
                for worker, sock in zip(workers, group, strict=True):
                    worker.sockets[listen.adoption_key(address, endpoint.instance_name)] = sock
    except OSError:
        for worker in workers:
            for sock in worker.sockets.values():
                sock.close()
        raise
    return workers


def _drop_privileges(config: LoadedConfig) -> None:

    owner = run_as(config)
    if owner is None or owner.is_current:
        return
    give_log_files(owner)
    privileges.drop(owner)
    log.info("privileges_dropped", user=owner.user, uid=owner.uid, gid=owner.gid)


def _spawn(config: LoadedConfig, worker: Worker, count: int, events: Queue) -> None:
    ours, theirs = socket.socketpair(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    listen_fds = {key: sock.fileno() for key, sock in worker.sockets.items()}
    env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    # Only the supervisor speaks to systemd (NotifyAccess=main would drop the
    # workers' messages anyway).
    env[FDS_ENVIRONMENT] = json.dumps({"listen": listen_fds, "control": theirs.fileno(),
                                       "count": count, "metrics": worker.metrics_dir,
                                       "started": worker.started})
    # The worker imports the same gmta as this process, wherever it came from.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(gmta.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_parent, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "gmta.cli", "run", "-c", os.path.abspath(config.file),
               "--worker-index", str(worker.index)]
    try:
        worker.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, env=env,
            pass_fds=(*{fd for fd in listen_fds.values()}, theirs.fileno()))
        worker.exit_handled = False
    finally:
        theirs.close()
    worker.control = ours
    worker.ready = False
    log.info("worker_started", worker=worker.index, pid=worker.process.pid)
    gevent.spawn(_watch_worker, worker, worker.process, ours, events)


def _watch_worker(worker: Worker, process: subprocess.Popen, control: socket.socket,
                  events: Queue) -> None:
    """Report the worker's ``ready`` line, then its exit (both bounded by its lifetime)."""
    try:
        line = b""
        while len(line) < len(READY_LINE) and (chunk := control.recv(64)):
            line += chunk
        if line.startswith(READY_LINE):
            events.put_nowait(("ready", worker, process))
    except OSError:
        pass
    process.wait()
    control.close()
    events.put_nowait(("exit", worker, process))


def _run(config: LoadedConfig, workers: list[Worker], events: Queue, notifier: Notifier) -> int:
    started = False
    start_deadline = time.monotonic() + START_DEADLINE
    while True:
        timeout = None if started else max(0.0, start_deadline - time.monotonic())
        try:
            event = events.get(timeout=timeout)
        except gevent.queue.Empty:
            log.error("start_failed", error="workers did not become ready in time",
                      ready=sum(w.ready for w in workers), workers=len(workers))
            _stop(config, workers, events, notifier, signal.SIGTERM)
            return EXIT_START_FAILED
        kind = event[0]
        if kind == "signal":
            sig = event[1]
            if sig in STOP_SIGNALS:
                log.info("stopping", signal=signal.Signals(sig).name, workers=len(workers))
                return _stop(config, workers, events, notifier, sig)
            if sig == REOPEN_LOGS_SIGNAL:
                reopen_logs()
                _forward(workers, sig)
            else:
                _forward_reload(workers, sig)
        elif kind == "ready":
            worker, process = event[1], event[2]
            if process is not worker.process:
                continue
            worker.ready = True
            log.info("worker_ready", worker=worker.index, pid=process.pid)
            if not started and all(w.ready for w in workers):
                started = True
                log.info("started", version=__version__, config=config.file, pid=os.getpid(),
                         endpoints=len(config.endpoints), workers=len(workers))
                notifier.ready(f"accepting mail with {len(workers)} workers")
        elif kind == "exit":
            worker, process = event[1], event[2]
            if process is not worker.process:
                continue
            worker.exit_handled = True
            status = process.returncode
            log.error("worker_exited", worker=worker.index, pid=process.pid,
                      status=_describe(status))
            if not started:
                # The first start failed (a directory, a module): restarting
                # would fail the same way. Exit 2 stays 2 (config error).
                _stop(config, workers, events, notifier, signal.SIGTERM)
                return status if status in (1, 2) else EXIT_START_FAILED
            delay = _crashed(worker)
            if delay is None:
                log.error("workers_crash_loop", worker=worker.index, exits=len(worker.crashes),
                          within=f"{CRASH_WINDOW:g}s",
                          hint="see the worker's last log lines; stopping all workers")
                notifier.status("stopping: a worker keeps crashing")
                _stop(config, workers, events, notifier, signal.SIGTERM)
                return EXIT_GAVE_UP
            worker.ready = False
            worker.restart_pending = True
            log.info("worker_restart_scheduled", worker=worker.index, delay=f"{delay:g}s")
            gevent.spawn_later(delay, events.put_nowait, ("restart", worker))
        elif kind == "restart":
            worker = event[1]
            if worker.restart_pending:
                worker.restart_pending = False
                _spawn(config, worker, len(workers), events)


def _crashed(worker: Worker) -> float | None:
    """Record an unexpected exit; the delay before restarting, or None to give up."""
    now = time.monotonic()
    worker.crashes = [t for t in worker.crashes if now - t < CRASH_WINDOW] + [now]
    if len(worker.crashes) >= CRASH_LIMIT:
        return None
    return min(RESTART_DELAY * 2 ** (len(worker.crashes) - 1), RESTART_DELAY_MAX)


def _forward(workers: list[Worker], sig: int) -> None:
    for worker in workers:
        worker.signal(sig)


def _forward_reload(workers: list[Worker], sig: int) -> None:
    """SIGHUP/SIGUSR2: each worker reloads its own configuration (gmta.daemon.process).

    The listening sockets stay the supervisor's: a kept address gets the
    inherited socket again (listen.adopt); a reload that adds a listen address
    is refused by every worker (WorkerRole.prepare), as only the supervisor
    binds and it does so at start only. The supervisor's own configuration is
    not reloaded: a worker restarted later reads the file as it is then.
    """
    log.info("reload_forwarded", signal=signal.Signals(sig).name, workers=len(workers))
    _forward(workers, sig)


def _stop(config: LoadedConfig, workers: list[Worker], events: Queue, notifier: Notifier,
          sig: int) -> int:
    """Forward *sig* and wait for every worker; a second stop signal stops them at once."""
    notifier.stopping("draining open sessions")
    for worker in workers:
        worker.restart_pending = False
    _forward(workers, signal.SIGTERM if sig in STOP_SIGNALS else sig)
    deadline = time.monotonic() + _drain_time(config) + STOP_MARGIN
    forced = False
    status = 0
    # Until every exit is handled, not only seen: the last worker's status and
    # its worker_stopped line come with its event.
    while any(w.process is not None and not w.exit_handled for w in workers):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.error("stop_timeout", hint="killing the workers that are still running")
            _forward(workers, signal.SIGKILL)
            for worker in workers:
                if worker.process is not None:
                    worker.process.wait()
            return EXIT_START_FAILED
        try:
            event = events.get(timeout=remaining)
        except gevent.queue.Empty:
            continue
        if event[0] == "signal" and event[1] in STOP_SIGNALS and not forced:
            # The workers' own second-signal rule: stop now, exit 1.
            log.warning("stopping_now", signal=signal.Signals(event[1]).name)
            forced = True
            _forward(workers, signal.SIGTERM)
            deadline = min(deadline, time.monotonic() + FORCED_STOP_DEADLINE)
        elif event[0] == "signal" and event[1] == REOPEN_LOGS_SIGNAL:
            reopen_logs()
            _forward(workers, REOPEN_LOGS_SIGNAL)
        elif event[0] == "exit" and event[2] is event[1].process:
            event[1].exit_handled = True
            code = event[2].returncode
            log.info("worker_stopped", worker=event[1].index, pid=event[2].pid,
                     status=_describe(code))
            if code != 0:
                status = 1
    for worker in workers:
        for sock in set(worker.sockets.values()):
            sock.close()
    log.info("stopped")
    return 1 if forced else status


def _drain_time(config: LoadedConfig) -> float:
    from gmta.daemon.reload import DEFAULT_SHUTDOWN_TIMEOUT

    # A worker drains its endpoints at the same time, then its queues' running
    # attempts get the longest shutdown_timeout (gmta.daemon.reload.Generation.stop).
    longest = max((getattr(e, "shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)
                   for e in config.endpoints), default=DEFAULT_SHUTDOWN_TIMEOUT)
    return 2 * longest


def _describe(status: int | None) -> str:
    if status is None:
        return "running"
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit {status}"

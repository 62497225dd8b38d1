"""``gmta run``: the foreground process.

Signal handlers only enqueue (peers-and-style §7.6.9); the main greenlet
takes signals off the queue and acts. SIGTERM and SIGINT stop the modules in
the reverse order of starting them (endpoints let open transactions finish
within their ``shutdown_timeout``); a second signal during that drain stops
at once with exit status 1. SIGUSR1 reopens the log files. SIGHUP and SIGUSR2
reload the configuration (DESIGN §2; the work is in ``gmta.daemon.reload``).

Start-up order: directories, then every listener is bound (as root if
started as root), then root is dropped for the ``run_as`` user, then the
modules start. systemd hears ``READY=1`` once all of that succeeded and
``STOPPING=1`` when the drain begins (``gmta.daemon.notify``).

With ``workers N`` (N > 1) this process is the supervisor of
:mod:`gmta.daemon.workers`, and :func:`serve` runs in each worker with its
:class:`~gmta.daemon.workers.WorkerRole`: the listeners are inherited, root
was dropped by the supervisor, and readiness goes to the supervisor.
"""

from __future__ import annotations

import os
import signal

import gevent
from gevent.queue import Queue

import gmta.log
from gmta import __version__
from gmta.config.loader import LoadedConfig
from gmta.daemon import privileges
from gmta.daemon.notify import Notifier
from gmta.daemon.reload import Generation, Reloader

log = gmta.log.get("daemon")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REOPEN_LOGS_SIGNAL = signal.SIGUSR1
RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR2)
HANDLED_SIGNALS = (*STOP_SIGNALS, REOPEN_LOGS_SIGNAL, *RELOAD_SIGNALS)
EXIT_START_FAILED = 1
EXIT_FORCED_STOP = 1


def prepare_directories(config: LoadedConfig, owner: privileges.RunAs | None = None) -> None:
    """Create ``state_dir`` and ``runtime_dir`` if they are missing; give them to *owner*."""
    for path in (config.state_dir, config.runtime_dir):
        os.makedirs(path, mode=0o750, exist_ok=True)
        if owner is not None:
            privileges.give_directory(path, owner)


def run_as(config: LoadedConfig) -> privileges.RunAs | None:
    """The user to become (global ``run_as``), or None to stay who we are."""
    if config.globals.run_as is None:
        return None
    return privileges.RunAs.lookup(*config.globals.run_as)


def give_log_files(owner: privileges.RunAs) -> None:
    # Opened by root before the drop; the run_as user writes them from now on
    # and must be able to reopen them on SIGUSR1.
    for path in gmta.log.file_paths():
        os.chown(path, owner.uid, owner.gid)


def _apply_logging(config: LoadedConfig) -> None:
    # On reload: the log targets may have changed; files are reopened either way.
    gmta.log.setup(config.globals.log, config.globals.debug)


def serve(config: LoadedConfig, worker=None) -> int:
    """Start every configured module, run until a stop signal, stop; returns the exit status.

    *worker* is this process's ``WorkerRole`` when it is one of several workers."""
    signals: Queue = Queue()
    handlers = [gevent.signal_handler(sig, signals.put_nowait, sig) for sig in HANDLED_SIGNALS]
    notifier = Notifier()
    started = []
    bound = []
    try:
        try:
            owner = run_as(config)
            drop_to = owner if owner is not None and not owner.is_current else None
            prepare_directories(config, drop_to)
            if worker is not None:
                worker.prepare(config)
            # Targets and other blocks first, endpoints last: nothing is accepted
            # before what it is delivered to runs, and on stop (the reverse
            # order) endpoints drain before their targets stop.
            ordered = sorted(config.instances, key=lambda instance: instance.endpoint)
            # Listeners are bound while we may still be root (ports below
            # 1024); nothing else runs as root.
            for instance in ordered:
                instance.bind()
                bound.append(instance)
            if drop_to is not None:
                give_log_files(drop_to)
                privileges.drop(drop_to)
                log.info("privileges_dropped", user=drop_to.user, uid=drop_to.uid,
                         gid=drop_to.gid)
            for instance in ordered:
                instance.start()
                started.append(instance)
        except OSError as e:
            # A port in use or a directory we may not create: say which, and
            # exit 1 (not 2: the configuration itself is fine).
            log.error("start_failed", error=e.strerror or str(e),
                      path=getattr(e, "filename", None))
            return EXIT_START_FAILED
        finally:
            for instance in bound:
                if instance not in started:
                    instance.unbind()
        log.info("started", version=__version__, config=config.file, pid=os.getpid(),
                 endpoints=len(config.endpoints))
        if worker is not None:
            worker.ready(signals)
        notifier.ready(f"accepting mail on {len(config.endpoints)} endpoint(s)")
        reloader = Reloader(Generation(config, started), notifier,
                            prepare=_preparer(worker), apply_logging=_apply_logging)
        started = []
        sig = _wait_for_stop(signals, reloader)
        log.info("stopping", signal=signal.Signals(sig).name)
        notifier.stopping("draining open sessions")
        # The drain runs beside this greenlet, so a second signal can cut it
        # short: everything already acknowledged with 250 is on disk, and a
        # transaction cut off here was never acknowledged.
        drain = gevent.spawn(reloader.stop)
        # Only a stop signal cuts the drain short; SIGUSR1 from logrotate
        # during a drain still just reopens the logs.
        second = gevent.spawn(_wait_for_stop, signals, None)
        gevent.wait([drain, second], count=1)
        if not drain.ready():
            log.warning("stopping_now", signal=signal.Signals(second.value).name)
            drain.kill(block=False)
            return EXIT_FORCED_STOP
        second.kill(block=False)
    finally:
        _stop_all(reversed(started))
        for handler in handlers:
            handler.cancel()
    log.info("stopped")
    return 0


def _preparer(worker):
    """What a reload does before its modules bind: the directories, and in a
    worker of ``workers N`` the same role as at start-up (worker 0 schedules)."""
    if worker is None:
        return prepare_directories

    def prepare(config: LoadedConfig) -> None:
        prepare_directories(config)
        worker.prepare(config)
    return prepare


def reopen_logs() -> None:
    """SIGUSR1: reopen every ``log file`` (after logrotate renamed it)."""
    try:
        count = gmta.log.reopen_files()
    except OSError as e:
        # The old file is closed; each later line tries to open the
        # file again (logging.FileHandler), so a fixed directory heals.
        log.error("logs_reopen_failed", error=e.strerror or str(e),
                  path=getattr(e, "filename", None))
    else:
        log.info("logs_reopened", files=count)


def _wait_for_stop(signals: Queue, reloader: Reloader | None) -> int:
    """Act on the signals that do not stop gmta until one that does arrives; return it.

    A reload runs in this greenlet: signals that arrive meanwhile wait in
    the queue (a stop right after a reload stops the new configuration).
    """
    while True:
        sig = signals.get()
        if sig in STOP_SIGNALS:
            return sig
        if sig == REOPEN_LOGS_SIGNAL:
            reopen_logs()
        elif reloader is not None:
            reloader.reload(signal.Signals(sig).name)
        else:
            # Already draining: a new configuration would only be stopped again.
            log.warning("reload_ignored", signal=signal.Signals(sig).name, reason="stopping")


def _stop_all(instances) -> None:
    for instance in instances:
        try:
            instance.stop()
        except Exception as e:  # one module failing to stop must not keep others running
            log.error("stop_failed", instance=instance.instance_name, error=repr(e))

"""``gmta run``: the foreground process.

Signal handlers only enqueue (peers-and-style §7.6.9); the main greenlet
takes signals off the queue and acts. SIGTERM and SIGINT stop the modules in
the reverse order of starting them (endpoints let open transactions finish
within their ``shutdown_timeout``); a second signal during that drain stops
at once with exit status 1.
"""

from __future__ import annotations

import os
import signal

import gevent
from gevent.queue import Queue

import gmta.log
from gmta import __version__
from gmta.config.loader import LoadedConfig

log = gmta.log.get("daemon")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_START_FAILED = 1
EXIT_FORCED_STOP = 1


def prepare_directories(config: LoadedConfig) -> None:
    """Create ``state_dir`` and ``runtime_dir`` if they are missing."""
    for path in (config.state_dir, config.runtime_dir):
        os.makedirs(path, mode=0o750, exist_ok=True)


def serve(config: LoadedConfig) -> int:
    """Start every configured module, run until a stop signal, stop; returns the exit status."""
    signals: Queue = Queue()
    handlers = [gevent.signal_handler(sig, signals.put_nowait, sig) for sig in STOP_SIGNALS]
    started = []
    try:
        try:
            prepare_directories(config)
            # Targets and other blocks first, endpoints last: nothing is accepted
            # before what it is delivered to runs, and on stop (the reverse
            # order) endpoints drain before their targets stop.
            ordered = sorted(config.instances, key=lambda instance: instance.endpoint)
            for instance in ordered:
                instance.start()
                started.append(instance)
        except OSError as e:
            # A port in use or a directory we may not create: say which, and
            # exit 1 (not 2: the configuration itself is fine).
            log.error("start_failed", error=e.strerror or str(e),
                      path=getattr(e, "filename", None))
            return EXIT_START_FAILED
        log.info("started", version=__version__, config=config.file, pid=os.getpid(),
                 endpoints=len(config.endpoints))
        sig = signals.get()
        log.info("stopping", signal=signal.Signals(sig).name)
        # The drain runs beside this greenlet, so a second signal can cut it
        # short: everything already acknowledged with 250 is on disk, and a
        # transaction cut off here was never acknowledged.
        drain = gevent.spawn(_stop_all, list(reversed(started)))
        started = []
        second = gevent.spawn(signals.get)
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


def _stop_all(instances) -> None:
    for instance in instances:
        try:
            instance.stop()
        except Exception as e:  # one module failing to stop must not keep others running
            log.error("stop_failed", instance=instance.instance_name, error=repr(e))

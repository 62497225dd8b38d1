"""Reloading the configuration (SIGHUP, SIGUSR2) without refusing a connection.

A *generation* is one loaded configuration and the modules it started. A
reload builds the next one beside the running one and switches only once it
runs:

1. Load the file again. Any error (syntax, unknown module, bad directive) is
   logged with its ``file:line`` as ``reload_failed``; the running generation
   goes on untouched.
2. What a running process cannot change is refused: ``run_as`` (root is gone).
3. Each new endpoint address that the running configuration also listens on
   inherits that listening socket (a duplicate descriptor of the same kernel
   socket, so connections waiting in its backlog stay there); other addresses
   are bound. After root was dropped a port below 1024 can be bound only with
   CAP_NET_BIND_SERVICE (the Debian unit grants it); without it the reload is
   refused and says so.
4. A module that must run once per process (``Module.exclusive_key``: a
   queue's scheduler on its directory) *follows* the old instance with the
   same key: it starts without that work.
5. The new modules start, endpoints last. A failure stops what started and
   releases what was bound; the running generation is still untouched.
6. Switch: the old endpoints close their listening descriptors (removed
   addresses stop listening; shared ones stay open through the new
   descriptors), followers *take over* (the old scheduler stops dispatching,
   finishes its attempts within ``shutdown_timeout``, then the new one
   starts), and the old generation retires in the background: its open
   sessions finish on the old configuration within their
   ``shutdown_timeout``, then its modules stop.

systemd hears ``RELOADING=1`` at the start and ``READY=1`` at the end, also
when the new configuration was refused (gmta is serving either way).
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from typing import Callable

import gevent

import gmta.log
from gmta.config.loader import LoadedConfig, load
from gmta.config.module import Module
from gmta.errors import ConfigErrors
from gmta.daemon.notify import Notifier

log = gmta.log.get("daemon")

#: How long the old generation's modules get to stop after its sessions ended.
MODULE_STOP_GRACE = 30.0
#: The drain timeout when no endpoint states one (the endpoints' default).
DEFAULT_SHUTDOWN_TIMEOUT = 180.0


class ReloadRefused(Exception):
    """The new configuration cannot run; the message names what and where."""

    def __init__(self, message: str, hint: str | None = None, errors: int = 1):
        super().__init__(message)
        self.hint = hint
        self.errors = errors


class Generation:
    """One configuration and the modules it started, in the order they started."""

    def __init__(self, config: LoadedConfig, started: list[Module]):
        self.config = config
        self.running = list(started)

    @property
    def endpoints(self) -> list[Module]:
        return [instance for instance in self.running if instance.endpoint]

    @property
    def shutdown_timeout(self) -> float:
        """The longest drain any endpoint allows (how long retiring may take)."""
        return max((getattr(e, "shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)
                    for e in self.endpoints), default=DEFAULT_SHUTDOWN_TIMEOUT)

    def stop(self) -> None:
        """Stop every module: the endpoints first, draining at the same time (a stop
        takes the longest ``shutdown_timeout``, not their sum), then the other
        modules newest first (what mail is delivered to stops after what accepts it)."""
        grace = self.shutdown_timeout
        endpoints = [instance for instance in self.running if instance.endpoint]
        self.running = [instance for instance in self.running if not instance.endpoint]
        gevent.joinall([gevent.spawn(_stop_module, endpoint, grace)
                        for endpoint in reversed(endpoints)])
        while self.running:
            _stop_module(self.running.pop(), grace)

    def retire(self) -> None:
        """After a reload: let the endpoints' open sessions end, then stop everything."""
        endpoints = self.endpoints
        # At the same time: each endpoint waits for its own sessions.
        retiring = [gevent.spawn(endpoint.retire) for endpoint in endpoints]
        gevent.joinall(retiring, timeout=self.shutdown_timeout + MODULE_STOP_GRACE)
        for greenlet in retiring:
            if greenlet.ready() and not greenlet.successful():
                log.error("stop_failed", error=repr(greenlet.exception))
        self.running = [instance for instance in self.running if not instance.endpoint]
        self.stop()
        log.info("old_configuration_stopped", config=self.config.file)

    def hurry(self) -> None:
        """gmta is stopping: ask sessions still on this configuration to end now."""
        for endpoint in self.endpoints:
            endpoint.hurry()


def _stop_module(instance: Module, grace: float) -> None:
    try:
        instance.stop_grace(grace)
        instance.stop()
    except Exception as e:  # one module failing to stop must not keep others running
        log.error("stop_failed", instance=instance.instance_name, error=repr(e))


def listener_keys(endpoints: list[Module]) -> list[list[tuple]]:
    """A key per listen address of each endpoint, equal for "the same listener" in two
    configurations: the host and port (``tcp://`` and ``tls://`` share a socket) or
    the unix path, plus how many times it came before, so that ``127.0.0.1:0``
    (the kernel picks the port) keeps its port across reloads, matched by order."""
    seen: Counter = Counter()
    keys = []
    for endpoint in endpoints:
        own = []
        for address in endpoint.addresses:
            base = ("unix", address.path) if address.is_unix else \
                ("inet", address.host, address.port)
            own.append((*base, seen[base]))
            seen[base] += 1
        keys.append(own)
    return keys


def inherit_listeners(old: list[Module], new: list[Module]) -> int:
    """Give each new endpoint the old listening sockets of its addresses; returns how many."""
    available = {}
    for endpoint, keys in zip(old, listener_keys(old), strict=True):
        for key, sock in zip(keys, endpoint.listening_sockets(), strict=True):
            if sock is not None:
                available[key] = sock
    count = 0
    for endpoint, keys in zip(new, listener_keys(new), strict=True):
        sockets = [available.get(key) for key in keys]
        count += sum(sock is not None for sock in sockets)
        endpoint.inherit_listeners(sockets)
    return count


def pair_exclusive(old: list[Module], new: list[Module]) -> list[Module]:
    """Make each new module with an ``exclusive_key`` follow the old one with that key;
    returns the followers."""
    holders = {}
    for instance in old:
        key = instance.exclusive_key()
        if key is not None:
            holders.setdefault(key, instance)
    followers = []
    for instance in new:
        predecessor = holders.pop(instance.exclusive_key(), None) \
            if instance.exclusive_key() is not None else None
        if predecessor is not None:
            instance.follow(predecessor)
            followers.append(instance)
    return followers


def describe(error: BaseException) -> tuple[str, str | None]:
    """The message and hint for an error raised while binding or starting."""
    if isinstance(error, OSError):
        message = str(error) if error.strerror is None else error.strerror
        if error.filename:
            message += f": {error.filename}"
        hint = None
        if error.errno == errno.EACCES and os.geteuid() != 0:
            hint = ("gmta no longer runs as root: a port below 1024 needs "
                    "CAP_NET_BIND_SERVICE (the Debian unit grants it) or a restart of gmta")
        return message, hint
    return repr(error), None


class Reloader:
    """Holds the running generation; ``reload()`` replaces it, ``stop()`` ends them all."""

    def __init__(self, current: Generation, notifier: Notifier | None = None,
                 loader: Callable[[str], LoadedConfig] = load,
                 prepare: Callable[[LoadedConfig], None] | None = None,
                 apply_logging: Callable[[LoadedConfig], None] | None = None):
        self.current = current
        self.notifier = notifier or Notifier({})
        self.loader = loader
        self.prepare = prepare
        self.apply_logging = apply_logging
        self.retiring: dict[gevent.Greenlet, Generation] = {}

    def reload(self, reason: str) -> bool:
        """Load and start the configuration file again; True if it now runs."""
        file = self.current.config.file
        log.info("reloading", reason=reason, config=file)
        self.notifier.reloading("reloading the configuration")
        try:
            new = self._start_next()
        except Exception as e:  # a reload must never take the running server down (maddy #846)
            refused = e if isinstance(e, ReloadRefused) else ReloadRefused(repr(e))
            log.error("reload_failed", config=file, error=str(refused), errors=refused.errors,
                      hint=refused.hint, kept="the previous configuration is still running")
            self.notifier.ready("reload failed; running the previous configuration")
            return False
        old, self.current = self.current, new
        self._switch(old, new)
        log.info("reloaded", config=file, endpoints=len(new.endpoints))
        self.notifier.ready(f"accepting mail on {len(new.endpoints)} endpoint(s)")
        return True

    def _start_next(self) -> Generation:
        old = self.current
        try:
            config = self.loader(old.config.file)
        except ConfigErrors as e:
            # Every error gets its line; reload_failed repeats the first.
            for error in e.errors[1:]:
                log.error("config_error", error=str(error))
            raise ReloadRefused(str(e.errors[0]), errors=len(e.errors)) from None
        for warning in config.warnings:
            log.warning("config_warning", warning=str(warning))
        if config.globals.run_as != old.config.globals.run_as:
            raise ReloadRefused("run_as cannot change while gmta runs",
                                hint="restart gmta to run as another user")
        try:
            if self.prepare is not None:
                self.prepare(config)
            if self.apply_logging is not None:
                self.apply_logging(config)
        except OSError as e:
            self._restore_logging()
            raise ReloadRefused(*describe(e)) from None
        endpoints = list(config.endpoints)
        inherit_listeners(old.endpoints, endpoints)
        pair_exclusive(old.running, config.instances)
        # As at start-up: what mail is delivered to runs before what accepts it.
        ordered = sorted(config.instances, key=lambda instance: instance.endpoint)
        bound: list[Module] = []
        started: list[Module] = []
        try:
            for instance in ordered:
                instance.bind()
                bound.append(instance)
            for instance in ordered:
                instance.start()
                started.append(instance)
        except Exception as e:  # any module's failure refuses the reload, nothing else
            Generation(config, started).stop()
            for instance in bound:
                if instance not in started:
                    instance.unbind()
            self._restore_logging()
            raise ReloadRefused(*describe(e)) from None
        return Generation(config, started)

    def _restore_logging(self) -> None:
        if self.apply_logging is not None:
            self.apply_logging(self.current.config)

    def _switch(self, old: Generation, new: Generation) -> None:
        for endpoint in old.endpoints:
            endpoint.stop_accepting()
        timeout = old.shutdown_timeout
        for instance in new.running:
            try:
                instance.take_over(timeout)
            except Exception as e:  # the new configuration runs; this one module is short
                log.error("take_over_failed", instance=instance.instance_name, error=repr(e))
        retiring = gevent.spawn(old.retire)
        self.retiring[retiring] = old
        retiring.link(lambda greenlet: self.retiring.pop(greenlet, None))

    def stop(self) -> None:
        """gmta stops: the running generation drains; retiring ones are hurried."""
        retiring = dict(self.retiring)
        for generation in retiring.values():
            generation.hurry()
        self.current.stop()
        gevent.joinall(list(retiring), timeout=max(
            (g.shutdown_timeout for g in retiring.values()), default=0) + MODULE_STOP_GRACE)

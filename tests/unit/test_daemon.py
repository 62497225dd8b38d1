"""``gmta.daemon.process.serve``: start, stop on a signal, start failures.

The modules are throw-away ones registered for one test; they write what
happens to them into a journal. Signals are real (``os.kill`` of this
process) but only sent once ``serve`` has installed its handlers: a module's
``start()`` sends them from a greenlet.
"""

from __future__ import annotations

import errno
import os
import signal

import gevent
import pytest

from gmta.config import module as registry
from gmta.config.loader import load_text
from gmta.config.module import Module
from gmta.config.reader import Bool, Directive, Enum, ModuleRef
from gmta.daemon import process

JOURNAL: list[tuple[str, str]] = []
#: bind/unbind/start in the order they happened (JOURNAL keeps start/stop only).
PHASES: list[tuple[str, str]] = []


class Behaviour:
    """What the modules do on start and stop (``start``/``stop`` directives)."""

    @staticmethod
    def act(instance, phase: str, what: str) -> None:
        JOURNAL.append((phase, instance.instance_name))
        if what == "oserror":
            raise OSError(errno.EADDRINUSE, "cannot listen on tcp://127.0.0.1:25: "
                                            "Address already in use")
        if what == "enoent":
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere/x")
        if what == "bug":
            raise RuntimeError(f"{phase} bug")
        if what == "signal":
            gevent.spawn_later(0.01, os.kill, os.getpid(), signal.SIGTERM)
        if what == "signal_after_hup":
            gevent.spawn_later(0.01, os.kill, os.getpid(), signal.SIGHUP)
            gevent.spawn_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
        if what == "signal_twice":
            gevent.spawn_later(0.01, os.kill, os.getpid(), signal.SIGTERM)
        if what == "hang_usr1_then_signal":
            gevent.spawn_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
            gevent.spawn_later(0.1, os.kill, os.getpid(), signal.SIGHUP)
            gevent.spawn_later(0.3, os.kill, os.getpid(), signal.SIGINT)
            gevent.sleep(30)
            JOURNAL.append(("stop_finished", instance.instance_name))
        if what == "hang_and_signal":
            gevent.spawn_later(0.01, os.kill, os.getpid(), signal.SIGINT)
            gevent.sleep(30)
            JOURNAL.append(("stop_finished", instance.instance_name))


ACTIONS = Enum("ok", "oserror", "enoent", "bug", "signal", "signal_twice", "hang_and_signal",
               "hang_usr1_then_signal", "signal_after_hup")


class DaemonEndpoint(Module):
    name = "ut.daemon_endpoint"
    endpoint = True
    max_inline_args = 4
    directives = (
        Directive("deliver_to", ModuleRef("target"), repeat=True),
        Directive("start", ACTIONS, "ok"),
        Directive("stop", ACTIONS, "ok"),
        Directive("debug", Bool(), False),
    )

    def configure(self, cfg, ctx):
        self.on_start, self.on_stop = cfg.start, cfg.stop

    def bind(self):
        PHASES.append(("bind", self.instance_name))

    def unbind(self):
        PHASES.append(("unbind", self.instance_name))

    def start(self):
        PHASES.append(("start", self.instance_name))
        Behaviour.act(self, "start", self.on_start)

    def stop(self):
        Behaviour.act(self, "stop", self.on_stop)


class DaemonTarget(DaemonEndpoint):
    name = "target.ut_daemon"
    endpoint = False
    kinds = frozenset({"target"})
    max_inline_args = 0


@pytest.fixture(autouse=True)
def modules():
    for cls in (DaemonEndpoint, DaemonTarget):
        registry.register(cls)
    JOURNAL.clear()
    PHASES.clear()
    yield
    for cls in (DaemonEndpoint, DaemonTarget):
        registry.unregister(cls)


@pytest.fixture(autouse=True)
def _restore_signals():
    """gevent's handlers leave SIGINT/SIGTERM at SIG_DFL when cancelled: put Python's back."""
    saved = {sig: signal.getsignal(sig) for sig in process.HANDLED_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def config(tmp_path, first="ok", target="ok", second="ok", first_stop="ok", target_stop="ok",
           second_stop="ok", extra=""):
    text = f"""state_dir {tmp_path}/state
{extra}
runtime_dir {tmp_path}/run
ut.daemon_endpoint tcp://one {{
    deliver_to &t
    start {first}
    stop {first_stop}
}}
target.ut_daemon t {{
    start {target}
    stop {target_stop}
}}
ut.daemon_endpoint tcp://two {{
    deliver_to &t
    start {second}
    stop {second_stop}
}}
"""
    return load_text(text, "d.conf")


def serve(cfg) -> int:
    """Run serve() in a greenlet with a deadline, so a hang fails instead of blocking."""
    return gevent.spawn(process.serve, cfg).get(timeout=10)


def events(lines: list[str]) -> list[str]:
    return [line.split(" ")[1].removeprefix("event=") for line in lines
            if line.startswith("module=daemon ")]


ONE, T, TWO = "ut.daemon_endpoint tcp://one", "t", "ut.daemon_endpoint tcp://two"


def test_stop_signal_stops_modules_in_reverse_order(tmp_path, log_lines):
    cfg = config(tmp_path, second="signal")
    assert serve(cfg) == 0
    # Targets start before the endpoints that deliver to them, and stop after them.
    assert JOURNAL == [("start", T), ("start", ONE), ("start", TWO),
                       ("stop", TWO), ("stop", ONE), ("stop", T)]
    assert events(log_lines) == ["started", "stopping", "stopped"]
    [started] = [x for x in log_lines if "event=started" in x]
    assert f"config=d.conf pid={os.getpid()} endpoints=2" in started
    assert any("event=stopping signal=SIGTERM" in x for x in log_lines)
    # state_dir and runtime_dir were created before the modules started.
    assert (tmp_path / "state").is_dir() and (tmp_path / "run").is_dir()


def test_start_failure_returns_1_and_logs_start_failed(tmp_path, log_lines):
    cfg = config(tmp_path, target="oserror")
    assert serve(cfg) == process.EXIT_START_FAILED == 1
    # The target failed first: nothing had started, nothing else starts.
    assert JOURNAL == [("start", T)]
    [line] = [x for x in log_lines if "event=start_failed" in x]
    assert line == ('module=daemon event=start_failed '
                    'error="cannot listen on tcp://127.0.0.1:25: Address already in use"')
    assert "started" not in events(log_lines)


def test_start_failure_names_the_path(tmp_path, log_lines):
    assert serve(config(tmp_path, first="enoent")) == 1
    [line] = [x for x in log_lines if "event=start_failed" in x]
    assert line == ('module=daemon event=start_failed error="No such file or directory" '
                    'path=/nowhere/x')
    assert JOURNAL == [("start", T), ("start", ONE), ("stop", T)]


def test_directory_that_cannot_be_created_is_a_start_failure(tmp_path, log_lines):
    (tmp_path / "state").write_text("a file where state_dir should be")
    assert serve(config(tmp_path)) == 1
    assert JOURNAL == []
    assert any("event=start_failed" in x and f"path={tmp_path}/state" in x for x in log_lines)


def test_unexpected_start_error_propagates_after_stopping_what_started(tmp_path):
    with pytest.raises(RuntimeError, match="start bug"):
        serve(config(tmp_path, second="bug"))
    assert JOURNAL == [("start", T), ("start", ONE), ("start", TWO), ("stop", ONE), ("stop", T)]


def test_a_failing_stop_does_not_keep_the_others_running(tmp_path, log_lines):
    cfg = config(tmp_path, second="signal", target_stop="bug")
    assert serve(cfg) == 0
    assert JOURNAL[-3:] == [("stop", TWO), ("stop", ONE), ("stop", T)]
    [line] = [x for x in log_lines if "event=stop_failed" in x]
    # The instance has its own field: "module" stays the logger's.
    assert line == "module=daemon event=stop_failed instance=t error=\"RuntimeError('stop bug')\""


def test_second_signal_during_the_drain_stops_at_once(tmp_path, log_lines):
    cfg = config(tmp_path, second="signal", second_stop="hang_and_signal")
    assert serve(cfg) == process.EXIT_FORCED_STOP == 1
    # The drain was cut short: the endpoints drain at the same time, the hanging
    # one never finished, so the target behind them was never stopped.
    assert JOURNAL == [("start", T), ("start", ONE), ("start", TWO), ("stop", TWO), ("stop", ONE)]
    assert events(log_lines) == ["started", "stopping", "stopping_now"]
    assert any("event=stopping_now signal=SIGINT" in x for x in log_lines)


def test_listen_error_without_errno_is_logged_whole(tmp_path, log_lines, monkeypatch):
    """A real listener failing: the log line carries the whole reason."""
    from gmta.config.values import Endpoint
    from gmta.net import listen

    path = str(tmp_path / ("x" * 120 + ".sock"))
    monkeypatch.setattr(DaemonEndpoint, "start",
                        lambda self: listen.bind(Endpoint("unix", path=path)))
    assert serve(config(tmp_path)) == 1
    [line] = [x for x in log_lines if "event=start_failed" in x]
    assert line == f'module=daemon event=start_failed error="cannot listen on unix://{path}: ' \
                   'AF_UNIX path too long"'


# -- binding and run_as ------------------------------------------------------------------------

def test_every_instance_is_bound_before_any_starts(tmp_path):
    assert serve(config(tmp_path, second="signal")) == 0
    assert PHASES == [("bind", T), ("bind", ONE), ("bind", TWO),
                      ("start", T), ("start", ONE), ("start", TWO)]


def test_what_was_bound_but_not_started_is_released(tmp_path):
    assert serve(config(tmp_path, first="oserror")) == 1
    assert PHASES[-3:] == [("start", ONE), ("unbind", ONE), ("unbind", TWO)]


def test_run_as_without_root_is_a_start_failure(tmp_path, log_lines, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    cfg = config(tmp_path, extra="run_as nobody")
    assert serve(cfg) == process.EXIT_START_FAILED
    # Nothing started; every listener bound is closed again.
    assert JOURNAL == []
    assert PHASES == [("bind", T), ("bind", ONE), ("bind", TWO),
                      ("unbind", T), ("unbind", ONE), ("unbind", TWO)]
    [line] = [x for x in log_lines if "event=start_failed" in x]
    assert line == ('module=daemon event=start_failed '
                    'error="cannot switch to user nobody: running as uid 4242, not root"')


def test_run_as_the_current_user_changes_nothing(tmp_path, log_lines):
    import pwd
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert serve(config(tmp_path, second="signal", extra=f"run_as {me}")) == 0
    assert not any("privileges_dropped" in x for x in log_lines)
    assert "started" in events(log_lines)


def test_run_as_unknown_user_is_a_config_error(tmp_path):
    from gmta.errors import ConfigErrors
    with pytest.raises(ConfigErrors) as e:
        config(tmp_path, extra="run_as no-such-user-gmta")
    assert [err.message for err in e.value.errors] == ["run_as: no such user: no-such-user-gmta"]
    with pytest.raises(ConfigErrors) as e:
        config(tmp_path, extra="run_as nobody no-such-group-gmta")
    assert [err.message for err in e.value.errors] == ["run_as: no such group: no-such-group-gmta"]


def test_sigusr1_and_sighup_during_the_drain_do_not_cut_it_short(tmp_path, log_lines):
    cfg = config(tmp_path, second="signal", second_stop="hang_usr1_then_signal")
    assert serve(cfg) == process.EXIT_FORCED_STOP
    # A reload during the drain would only start what is being stopped.
    assert events(log_lines) == ["started", "stopping", "logs_reopened", "reload_ignored",
                                 "stopping_now"]
    assert any("event=stopping_now signal=SIGINT" in x for x in log_lines)


def test_a_reload_that_fails_keeps_serving(tmp_path, log_lines):
    """SIGHUP reloads; here the file is gone (the config came from text): refused, served on."""
    cfg = config(tmp_path, second="signal_after_hup")
    assert serve(cfg) == 0
    assert events(log_lines) == ["started", "reloading", "reload_failed", "stopping", "stopped"]
    [line] = [x for x in log_lines if "reload_failed" in x]
    assert line.startswith('module=daemon event=reload_failed config=d.conf error="d.conf: ')
    assert 'kept="the previous configuration is still running"' in line
    # The modules of the first configuration stopped once, at the end.
    assert JOURNAL == [("start", T), ("start", ONE), ("start", TWO),
                       ("stop", TWO), ("stop", ONE), ("stop", T)]

"""``gmta.daemon.reload``: the handover from one configuration to the next.

Throw-away modules (registered for each test) stand in for endpoints and
queues and write what happens to them into a journal; the real endpoint and
queue are exercised by tests/integration/test_reload.py and
tests/unit/queue/test_queue_takeover.py.
"""

from __future__ import annotations

import errno

import gevent
import pytest

from gmta.config import module as registry
from gmta.config.loader import load_text
from gmta.config.module import Module
from gmta.config.reader import Directive, Enum, ModuleRef, String
from gmta.config.values import parse_endpoint
from gmta.daemon.reload import Generation, Reloader, listener_keys

JOURNAL: list[tuple] = []
ACTIONS = Enum("ok", "oserror", "eacces", "bug")


def act(what: str, where: str) -> None:
    if what == "oserror":
        raise OSError(errno.EADDRINUSE, f"cannot listen on {where}: Address already in use")
    if what == "eacces":
        raise OSError(errno.EACCES, f"cannot listen on {where}: Permission denied")
    if what == "bug":
        raise RuntimeError("start bug")


class ReloadEndpoint(Module):
    name = "ut.reload_endpoint"
    endpoint = True
    max_inline_args = 4
    directives = (Directive("bind", ACTIONS, "ok"), Directive("start", ACTIONS, "ok"),
                  Directive("deliver_to", ModuleRef("target"), None))

    def configure(self, cfg, ctx):
        self.addresses = [parse_endpoint(a) for a in self.inline_args]
        self.on_bind, self.on_start = cfg.bind, cfg.start
        self.generation = ctx.file
        self.inherited = None
        self.shutdown_timeout = 1.0

    def bind(self):
        JOURNAL.append(("bind", self.generation, self.instance_name))
        act(self.on_bind, self.instance_name)

    def unbind(self):
        JOURNAL.append(("unbind", self.generation, self.instance_name))

    def start(self):
        JOURNAL.append(("start", self.generation, self.instance_name))
        act(self.on_start, self.instance_name)

    def stop(self):
        JOURNAL.append(("stop", self.generation, self.instance_name))

    def listening_sockets(self):
        return [f"{self.generation}:{a}" for a in self.addresses]

    def inherit_listeners(self, sockets):
        self.inherited = sockets

    def stop_accepting(self):
        JOURNAL.append(("stop_accepting", self.generation, self.instance_name))

    def retire(self):
        JOURNAL.append(("retire", self.generation, self.instance_name))

    def hurry(self):
        JOURNAL.append(("hurry", self.generation, self.instance_name))


class ReloadQueue(Module):
    name = "target.ut_reload_queue"
    kinds = frozenset({"target"})
    directives = (Directive("dir", String(), "q"), Directive("start", ACTIONS, "ok"))

    def configure(self, cfg, ctx):
        self.dir, self.on_start, self.generation = cfg.dir, cfg.start, ctx.file
        self.predecessor = None

    def start(self):
        JOURNAL.append(("start", self.generation, self.instance_name))
        act(self.on_start, self.instance_name)

    def stop(self):
        JOURNAL.append(("stop", self.generation, self.instance_name))

    def exclusive_key(self):
        return ("queue", self.dir)

    def follow(self, predecessor):
        self.predecessor = predecessor

    def take_over(self, timeout):
        if self.predecessor is None:
            return
        JOURNAL.append(("take_over", self.generation, self.predecessor.generation, timeout))


class Notes:
    """Stands in for the sd_notify Notifier."""

    def __init__(self):
        self.sent = []

    def reloading(self, status):
        self.sent.append("RELOADING")

    def ready(self, status):
        self.sent.append("READY")


@pytest.fixture(autouse=True)
def modules():
    for cls in (ReloadEndpoint, ReloadQueue):
        registry.register(cls)
    JOURNAL.clear()
    yield
    for cls in (ReloadEndpoint, ReloadQueue):
        registry.unregister(cls)


def conf(name: str, body: str):
    return load_text(f"state_dir /nonexistent/state\n{body}", name)


OLD = """
target.ut_reload_queue q { dir /spool/q }
target.ut_reload_queue gone { dir /spool/gone }
ut.reload_endpoint tcp://127.0.0.1:25 tls://127.0.0.1:465 tcp://127.0.0.1:0 { deliver_to &q }
ut.reload_endpoint unix:///run/lmtp.sock tcp://127.0.0.1:0 { deliver_to &gone }
"""

NEW = """
target.ut_reload_queue q2 { dir /spool/q }
ut.reload_endpoint tls://127.0.0.1:25 tcp://127.0.0.1:0 tcp://127.0.0.1:587 { deliver_to &q2 }
ut.reload_endpoint tcp://127.0.0.1:0 unix:///run/lmtp.sock tcp://127.0.0.1:0 { deliver_to &q2 }
"""


def running(text: str = OLD, name: str = "old.conf") -> Generation:
    config = conf(name, text)
    return Generation(config, sorted(config.instances, key=lambda i: i.endpoint))


def reloader_for(text: str, old: Generation | None = None, **kw) -> Reloader:
    return Reloader(old or running(), Notes(), loader=lambda file: conf("new.conf", text), **kw)


def test_listener_keys_match_an_address_across_configurations():
    old, new = conf("old.conf", OLD).endpoints, conf("new.conf", NEW).endpoints
    assert listener_keys(old) == [
        [("inet", "127.0.0.1", 25, 0), ("inet", "127.0.0.1", 465, 0),
         ("inet", "127.0.0.1", 0, 0)],
        [("unix", "/run/lmtp.sock", 0), ("inet", "127.0.0.1", 0, 1)]]
    # tcp:// and tls:// on one port are one socket; port 0 is matched by its order.
    assert listener_keys(new)[0][0] == ("inet", "127.0.0.1", 25, 0)
    assert [k[-1] for k in listener_keys(new)[1]] == [1, 0, 2]


def test_reload_hands_sockets_and_the_queue_to_the_new_configuration(log_lines):
    reloader = reloader_for(NEW)
    old = reloader.current
    assert reloader.reload("SIGHUP") is True
    new = reloader.current
    assert new is not old and new.config.file == "new.conf"
    first, second = new.endpoints
    assert first.inherited == ["old.conf:tcp://127.0.0.1:25", "old.conf:tcp://127.0.0.1:0",
                               None]
    assert second.inherited == ["old.conf:tcp://127.0.0.1:0", "old.conf:unix:///run/lmtp.sock",
                                None]
    gevent.sleep(0.05)  # the old generation retires in the background
    new_steps = [e for e in JOURNAL if e[1] == "new.conf"]
    old_steps = [e for e in JOURNAL if e[1] == "old.conf"]
    # Every new module bound, then started (what mail is delivered to first);
    # then the queue takes over from the old one on the same directory, with
    # the old endpoints' drain time.
    ep1, ep2 = (e.instance_name for e in new.endpoints)
    assert new_steps == [("bind", "new.conf", ep1), ("bind", "new.conf", ep2),
                         ("start", "new.conf", "q2"), ("start", "new.conf", ep1),
                         ("start", "new.conf", ep2), ("take_over", "new.conf", "old.conf", 1.0)]
    # The old endpoints stopped accepting before the new queue took over, then
    # retired; then the old modules stopped (the queue that has no successor too).
    o1, o2 = (e.instance_name for e in old.config.endpoints)
    assert old_steps == [("stop_accepting", "old.conf", o1), ("stop_accepting", "old.conf", o2),
                         ("retire", "old.conf", o1), ("retire", "old.conf", o2),
                         ("stop", "old.conf", "gone"), ("stop", "old.conf", "q")]
    assert JOURNAL.index(("stop_accepting", "old.conf", o2)) < \
        JOURNAL.index(("take_over", "new.conf", "old.conf", 1.0))
    assert reloader.notifier.sent == ["RELOADING", "READY"]
    assert [x.split()[1] for x in log_lines if "module=daemon" in x] == \
        ["event=reloading", "event=reloaded", "event=old_configuration_stopped"]


def test_a_broken_configuration_is_refused_with_its_line(log_lines):
    reloader = Reloader(running(), Notes(),
                        loader=lambda file: load_text("state_dir /x\nno_such_module {\n}\n"
                                                      "smtp_typo x\n", "gmta.conf"))
    old = reloader.current
    assert reloader.reload("SIGUSR2") is False
    assert reloader.current is old
    assert JOURNAL == []  # nothing bound, started or stopped
    failed = [x for x in log_lines if "event=reload_failed" in x]
    assert len(failed) == 1
    assert 'error="gmta.conf:2: unknown module or global directive: no_such_module' in failed[0]
    assert "errors=2" in failed[0]
    assert 'kept="the previous configuration is still running"' in failed[0]
    # The second error has its own line.
    assert any("event=config_error" in x and "gmta.conf:4:" in x for x in log_lines)
    assert reloader.notifier.sent == ["RELOADING", "READY"]


@pytest.mark.parametrize("where", ["bind", "start"])
def test_a_module_that_fails_refuses_the_reload_and_the_old_one_goes_on(where, log_lines):
    text = NEW.replace("{ deliver_to &q2 }\nut.reload_endpoint tcp://127.0.0.1:0 unix",
                       f"{{ deliver_to &q2\n {where} oserror }}\nut.reload_endpoint "
                       "tcp://127.0.0.1:0 unix")
    reloader = reloader_for(text)
    old = reloader.current
    assert reloader.reload("SIGHUP") is False
    assert reloader.current is old
    assert not [e for e in JOURNAL if e[1] == "old.conf"]
    new_steps = [e[0] for e in JOURNAL]
    if where == "bind":
        # The failing endpoint releases what it bound itself; nothing started.
        assert new_steps == ["bind"]
    else:
        # The queue started, the first endpoint failed: the queue is stopped
        # again, both endpoints (bound, not started) are released.
        assert new_steps == ["bind", "bind", "start", "start", "stop", "unbind", "unbind"]
    [line] = [x for x in log_lines if "event=reload_failed" in x]
    assert "Address already in use" in line


def test_a_privileged_port_after_dropping_root_says_why(log_lines, monkeypatch):
    import os
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    reloader = reloader_for(NEW.replace("{ deliver_to &q2 }", "{ deliver_to &q2\n bind eacces }", 1))
    assert reloader.reload("SIGHUP") is False
    [line] = [x for x in log_lines if "event=reload_failed" in x]
    assert "Permission denied" in line and "CAP_NET_BIND_SERVICE" in line


def test_run_as_cannot_change(log_lines):
    import pwd
    me = pwd.getpwuid(os_geteuid()).pw_name
    reloader = reloader_for(f"run_as {me}\n" + NEW)
    assert reloader.reload("SIGHUP") is False
    assert JOURNAL == []
    [line] = [x for x in log_lines if "event=reload_failed" in x]
    assert 'error="run_as cannot change while gmta runs"' in line


def os_geteuid() -> int:
    import os
    return os.geteuid()


def test_a_bug_while_reloading_does_not_stop_gmta(log_lines):
    def broken_loader(file):
        raise KeyError("surprise")
    reloader = Reloader(running(), Notes(), loader=broken_loader)
    assert reloader.reload("SIGHUP") is False
    assert any("event=reload_failed" in x and "KeyError" in x for x in log_lines)


def test_reloads_in_quick_succession_chain_the_takeover():
    reloader = reloader_for(NEW)
    assert reloader.reload("SIGHUP")
    assert reloader.reload("SIGHUP")
    takeovers = [e for e in JOURNAL if e[0] == "take_over"]
    # The second configuration's queue follows the first reload's, not the original.
    assert len(takeovers) == 2 and all(t[2] in ("old.conf", "new.conf") for t in takeovers)
    gevent.sleep(0.05)
    assert not reloader.retiring


def test_stop_hurries_the_sessions_of_a_retiring_configuration():
    class SlowEndpoint(ReloadEndpoint):
        name = "ut.reload_slow_endpoint"

        def retire(self):
            JOURNAL.append(("retire", self.generation, self.instance_name))
            gevent.sleep(0.3)

    registry.register(SlowEndpoint)
    try:
        old = running("target.ut_reload_queue q { dir /q }\n"
                      "ut.reload_slow_endpoint tcp://127.0.0.1:1 { deliver_to &q }\n")
        reloader = reloader_for(NEW, old)
        assert reloader.reload("SIGHUP")
        gevent.sleep(0.01)
        assert reloader.retiring
        reloader.stop()
    finally:
        registry.unregister(SlowEndpoint)
    steps = [e[0] for e in JOURNAL if e[1] == "old.conf"]
    assert steps[:3] == ["stop_accepting", "retire", "hurry"]
    # The old modules still stopped (after the retiring endpoint), the new ones too.
    assert ("stop", "old.conf", "q") in JOURNAL and ("stop", "new.conf", "q2") in JOURNAL
    assert not reloader.retiring

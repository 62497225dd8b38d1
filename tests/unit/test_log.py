"""Logs are data: ``key=value`` lines, quoting, per-module debug, setup() targets."""

from __future__ import annotations

import io
import logging
import logging.handlers
import re
import weakref

import gevent
import gevent.monkey
import pytest

import gmta.log
from gmta.config.loader import LogTarget
from gmta.log import format_fields, format_value


@pytest.fixture(autouse=True)
def _restore_gmta_logger():
    """setup() reconfigures the 'gmta' logger: put it back as it was."""
    root = logging.getLogger("gmta")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in saved[0]:
            handler.close()
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    root.propagate = saved[2]


def stderr_log(debug: bool = False, kind: str = "stderr") -> io.StringIO:
    stream = io.StringIO()
    gmta.log.setup([LogTarget(kind)], debug=debug, stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# -- values and fields --------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    ("plain", "plain"),
    ("a.b-c_d@e:f/g", "a.b-c_d@e:f/g"),
    (42, "42"),
    (True, "True"),
    ("", '""'),
    ("two words", '"two words"'),
    ("tab\there", '"tab\there"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("a=b", '"a=b"'),
    ("back\\slash", '"back\\\\slash"'),
    ("line\nbreak", '"line\\nbreak"'),
    ("cr\r\nlf", '"cr\\r\\nlf"'),
    ("\n", '"\\n"'),
    ("ünïcode", "ünïcode"),
])
def test_format_value(value, text):
    assert format_value(value) == text


def test_quoted_values_never_break_the_line():
    for nasty in ("a\nb", "a\rb", "x\r\n.\r\nMAIL FROM:<evil>", '"\\\n'):
        assert "\n" not in format_value(nasty) and "\r" not in format_value(nasty)


def test_format_fields_keeps_order_and_skips_none():
    assert format_fields({"b": 1, "a": None, "c": "x y", "d": 0, "e": ""}) == \
        'b=1 c="x y" d=0 e=""'


def test_event_line_order_and_none_fields_skipped():
    stream = stderr_log()
    gmta.log.get("endpoint").info("listening", zeta="z", alpha=None, address="tcp://[::1]:25")
    assert lines(stream) == [
        "level=info module=endpoint event=listening zeta=z address=tcp://[::1]:25"]


@pytest.mark.parametrize("method, level", [
    ("debug", "debug"), ("info", "info"), ("warning", "warn"), ("error", "error")])
def test_level_names(method, level):
    stream = stderr_log(debug=True)
    getattr(gmta.log.get("m"), method)("e")
    assert lines(stream) == [f"level={level} module=m event=e"]


# -- levels and per-module debug ----------------------------------------------------------

def test_info_level_hides_debug():
    stream = stderr_log(debug=False)
    log = gmta.log.get("quiet")
    log.debug("hidden", x=1)
    log.info("shown")
    assert lines(stream) == ["level=info module=quiet event=shown"]
    assert not log.debug_enabled


def test_global_debug_shows_debug():
    stream = stderr_log(debug=True)
    log = gmta.log.get("loud")
    log.debug("shown", x=1)
    assert lines(stream) == ["level=debug module=loud event=shown x=1"]
    assert log.debug_enabled


def test_module_debug_is_forced_while_the_global_level_is_info():
    stream = stderr_log(debug=False)
    forced = gmta.log.get("endpoint", debug=True)
    plain = gmta.log.get("endpoint")
    forced.debug("mine", session="s1")
    plain.debug("not_mine")
    forced.info("info_too")
    assert lines(stream) == ["level=debug module=endpoint event=mine session=s1",
                             "level=info module=endpoint event=info_too"]
    assert forced.debug_enabled and not plain.debug_enabled


def test_forced_debug_respects_log_off():
    gmta.log.setup([], debug=False)
    root = logging.getLogger("gmta")
    assert [type(h) for h in root.handlers] == [logging.NullHandler]
    gmta.log.get("m", debug=True).debug("nowhere")  # no error, nothing written


# -- setup ----------------------------------------------------------------------------------

def test_stderr_ts_adds_a_utc_timestamp():
    stream = stderr_log(kind="stderr_ts")
    gmta.log.get("m").info("e", k="v")
    [line] = lines(stream)
    assert re.fullmatch(r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info module=m event=e k=v",
                        line)


def test_stderr_goes_to_sys_stderr_by_default(capsys):
    gmta.log.setup([LogTarget("stderr")])
    gmta.log.get("m").warning("w")
    assert capsys.readouterr().err == "level=warn module=m event=w\n"


def test_file_target_has_timestamps(tmp_path):
    path = tmp_path / "gmta.log"
    gmta.log.setup([LogTarget("file", str(path))])
    gmta.log.get("m").error("bad", error="x y")
    text = path.read_text()
    assert re.fullmatch(r'ts=\S+Z level=error module=m event=bad error="x y"\n', text)


def test_file_target_reopens_after_rotation(tmp_path):
    path = tmp_path / "gmta.log"
    gmta.log.setup([LogTarget("file", str(path))])
    log = gmta.log.get("m")
    log.info("first")
    path.rename(tmp_path / "gmta.log.1")
    log.info("second")
    assert "event=first" in (tmp_path / "gmta.log.1").read_text()
    assert "event=second" in path.read_text()


def test_several_targets(tmp_path):
    stream = io.StringIO()
    path = tmp_path / "a.log"
    gmta.log.setup([LogTarget("stderr"), LogTarget("file", str(path))], stream=stream)
    gmta.log.get("m").info("both")
    assert lines(stream) == ["level=info module=m event=both"]
    assert "event=both" in path.read_text()


def test_log_off_writes_nothing(capsys):
    gmta.log.setup([])
    gmta.log.get("m").error("silent")
    assert capsys.readouterr().err == ""


def test_setup_again_replaces_the_handlers(tmp_path):
    first, second = io.StringIO(), io.StringIO()
    gmta.log.setup([LogTarget("stderr")], stream=first)
    gmta.log.setup([LogTarget("stderr")], stream=second)
    gmta.log.get("m").info("once")
    assert first.getvalue() == ""
    assert lines(second) == ["level=info module=m event=once"]
    assert len(logging.getLogger("gmta").handlers) == 1


def test_setup_debug_then_info_applies_to_existing_loggers():
    log = gmta.log.get("m")
    stream = stderr_log(debug=True)
    log.debug("one")
    stream = stderr_log(debug=False)
    log.debug("two")
    assert lines(stream) == []


def test_gmta_logs_do_not_reach_the_root_logger(caplog):
    stderr_log()
    with caplog.at_level(logging.DEBUG):
        gmta.log.get("m").info("private")
    assert not [r for r in caplog.records if r.name.startswith("gmta")]


def test_file_target_creates_its_directory(tmp_path):
    """gmta run sets logging up before it creates state_dir, where 'log gmta.log' lives."""
    path = tmp_path / "state" / "logs" / "gmta.log"
    gmta.log.setup([LogTarget("file", str(path))])
    gmta.log.get("m").info("e")
    assert "event=e" in path.read_text()


def test_syslog_target_uses_the_mail_facility(monkeypatch):
    made = []

    class FakeSysLog(logging.Handler):
        LOG_MAIL = logging.handlers.SysLogHandler.LOG_MAIL

        def __init__(self, address, facility):
            super().__init__()
            made.append((address, facility))
            self.lines = []

        def emit(self, record):
            self.lines.append(self.format(record))

    monkeypatch.setattr(logging.handlers, "SysLogHandler", FakeSysLog)
    gmta.log.setup([LogTarget("syslog")])
    gmta.log.get("m").info("e")
    assert made == [("/dev/log", FakeSysLog.LOG_MAIL)]
    [handler] = logging.getLogger("gmta").handlers
    # No timestamp: syslog adds its own.
    assert handler.lines == ["level=info module=m event=e"]


def test_reopen_files_starts_a_new_file_after_a_rename(tmp_path):
    path = tmp_path / "gmta.log"
    gmta.log.setup([LogTarget("stderr"), LogTarget("file", str(path))], stream=io.StringIO())
    log = gmta.log.get("t")
    log.info("before")
    os_rename = tmp_path / "gmta.log.1"
    path.rename(os_rename)
    assert gmta.log.file_paths() == [str(path)]
    [handler] = [h for h in logging.getLogger("gmta").handlers
                 if isinstance(h, logging.handlers.WatchedFileHandler)]
    old_stream = handler.stream
    assert gmta.log.reopen_files() == 1
    # Reopened now, not at the next line as WatchedFileHandler would by itself.
    assert old_stream.closed and handler.stream is not old_stream and path.exists()
    log.info("after")
    assert "event=before" in os_rename.read_text() and "event=after" not in os_rename.read_text()
    assert "event=after" in path.read_text() and "event=before" not in path.read_text()


def test_reopen_files_without_log_files_reopens_nothing():
    stderr_log()
    assert gmta.log.reopen_files() == 0 and gmta.log.file_paths() == []


# -- buffered lines (gmta run: one write per turn of the hub loop) -------------------------

class _CountingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


@pytest.fixture
def buffered_stderr():
    stream = _CountingStream()
    gmta.log.setup([LogTarget("stderr")], stream=stream, buffered=True)
    yield stream
    gmta.log.setup([], buffered=False)


def test_buffered_lines_go_out_in_one_write_when_the_hub_turns(buffered_stderr):
    log = gmta.log.get("endpoint")
    log.info("one", n=1)
    log.info("two", n=2)
    assert lines(buffered_stderr) == []
    gevent.sleep(0)
    assert lines(buffered_stderr) == ["level=info module=endpoint event=one n=1",
                                      "level=info module=endpoint event=two n=2"]
    assert buffered_stderr.writes == 1


def test_a_warning_is_written_at_once_after_the_lines_before_it(buffered_stderr):
    log = gmta.log.get("endpoint")
    log.info("before")
    log.warning("trouble")
    assert [line.split()[2] for line in lines(buffered_stderr)] == \
        ["event=before", "event=trouble"]


def test_flush_writes_the_buffered_lines_before_the_hub_turns(buffered_stderr):
    gmta.log.get("endpoint").info("listening")
    gmta.log.flush()
    assert lines(buffered_stderr) == ["level=info module=endpoint event=listening"]


def test_the_buffer_is_bounded(buffered_stderr):
    log = gmta.log.get("endpoint")
    for n in range(gmta.log.BUFFER_LINES):
        log.info("line", n=n)
    assert len(lines(buffered_stderr)) == gmta.log.BUFFER_LINES


def test_a_line_from_another_thread_is_written_at_once(buffered_stderr):
    import threading as native_threading
    start_thread = gevent.monkey.get_original("threading", "Thread") \
        if gevent.monkey.is_module_patched("threading") else native_threading.Thread
    thread = start_thread(target=lambda: gmta.log.get("pool").info("from_thread"))
    thread.start()
    thread.join(5)
    assert lines(buffered_stderr) == ["level=info module=pool event=from_thread"]


def test_setup_again_and_shutdown_write_what_is_left(buffered_stderr, tmp_path):
    gmta.log.get("endpoint").info("pending")
    gmta.log.setup([LogTarget("file", str(tmp_path / "gmta.log"))])   # stays buffered
    assert lines(buffered_stderr) == ["level=info module=endpoint event=pending"]
    gmta.log.get("endpoint").info("in_file")
    logging.shutdown([weakref.ref(h) for h in logging.getLogger("gmta").handlers])
    assert "event=in_file" in (tmp_path / "gmta.log").read_text()


def test_reopen_writes_the_old_lines_to_the_old_file(tmp_path):
    path = tmp_path / "gmta.log"
    gmta.log.setup([LogTarget("file", str(path))], buffered=True)
    try:
        gmta.log.get("endpoint").info("old")
        path.rename(tmp_path / "gmta.log.1")
        assert gmta.log.reopen_files() == 1
        gmta.log.get("endpoint").info("new")
        gevent.sleep(0)
        assert "event=old" in (tmp_path / "gmta.log.1").read_text()
        assert "event=old" not in path.read_text() and "event=new" in path.read_text()
    finally:
        gmta.log.setup([], buffered=False)

"""``table.file`` (maddy-behaviour §2.2): format, errors, lookups, reloading, atomic edits."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import time

import pytest

import gmta.table.file as tf
from tests.unit.logcapture import captured_log
from gmta.config.loader import Context, load_block
from gmta.config.parser import Parser
from gmta.errors import ConfigError, ConfigErrors
from gmta.table import KeyExistsError, KeyNotFoundError, fold_key
from gmta.table.file import FileTable, parse_lines, split_lines


@pytest.fixture
def events():
    """The key=value lines table.file logs."""
    with captured_log(logging.DEBUG, "gmta.table.file") as lines:
        yield lines


def inline(tmp_path, directive: str, file: str = "gmta.conf") -> tuple[FileTable, Context]:
    """The table a directive such as ``table file aliases { ... }`` names, state_dir = tmp_path."""
    ctx = Context(str(tmp_path / file))
    ctx.state_dir = str(tmp_path)
    node = Parser().parse_text(directive + "\n", str(tmp_path / file))[0]
    return ctx.instance_from_node(node, "table"), ctx


def table(tmp_path, text: str, *block: str) -> FileTable:
    """A table.file over a file with *text*, checking on every lookup unless *block* says."""
    (tmp_path / "t").write_text(text)
    body = "".join(f"    {line}\n" for line in block or ("reload_interval 0",))
    return inline(tmp_path, f"table file t {{\n{body}}}")[0]


def entries(text: str) -> dict[str, list[str]]:
    return parse_lines(split_lines(text.encode(), "t"), "t")


def touch_later(path, text: str) -> None:
    """Rewrite *path* in place with a clearly newer mtime (whatever the clock's resolution)."""
    st = os.stat(path)
    with open(path, "w") as f:
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# -- the format -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("a: b", {"a": ["b"]}),
    ("a: b\n", {"a": ["b"]}),
    ("a@example.org: b@example.com", {"a@example.org": ["b@example.com"]}),
    ('"a @ a"@example.org: b@example.com', {'"a @ a"@example.org': ["b@example.com"]}),
    ('a@example.org: "b @ b"@example.com', {"a@example.org": ['"b @ b"@example.com']}),
    ("a: b, c", {"a": ["b", "c"]}),
    ("a: b,c ,  d", {"a": ["b", "c", "d"]}),
    ("a: b\na: c", {"a": ["b", "c"]}),
    ("a: b, c\nx: y\na: d", {"a": ["b", "c", "d"], "x": ["y"]}),
    ("aaa", {"aaa": [""]}),
    ("aaa:", {"aaa": [""]}),
    ("a: b,", {"a": ["b", ""]}),
    ("     testing@example.com   :  arbitrary-whitespace@example.org   ",
     {"testing@example.com": ["arbitrary-whitespace@example.org"]}),
    ("# skip comments\na: b", {"a": ["b"]}),
    ("# and empty lines\n\na: b", {"a": ["b"]}),
    ("# with whitespace too\n    \na: b", {"a": ["b"]}),
    ("   # an indented comment\na: b", {"a": ["b"]}),
    ("a: b # not a comment", {"a": ["b # not a comment"]}),
    ("alice: argon2id:v=19:m=8:t=1:p=1:c2FsdA:aGFzaA",
     {"alice": ["argon2id:v=19:m=8:t=1:p=1:c2FsdA:aGFzaA"]}),
    ("a: b\r\nc: d\r\n", {"a": ["b"], "c": ["d"]}),
    ("\ufeffa: b", {"a": ["b"]}),
    ("", {}),
    ("\n\n# only comments\n", {}),
])
def test_format(text, expected):
    assert entries(text) == expected


@pytest.mark.parametrize("text, line", [
    (": b", 1),
    (":", 1),
    ("a: b\n\n   : b", 3),
    ("# c\n\t:x", 2),
])
def test_empty_key_is_an_error_with_its_line(text, line):
    with pytest.raises(ConfigError) as e:
        entries(text)
    assert (e.value.file, e.value.line, e.value.message) == ("t", line, "empty key before colon")
    assert str(e.value).startswith(f"t:{line}: empty key before colon (write 'key: value'")


def test_not_utf8_is_an_error_with_its_line():
    with pytest.raises(ConfigError) as e:
        split_lines(b"a: b\nc: \xff\n", "t")
    assert (e.value.line, e.value.message) == (2, "the file is not valid UTF-8")


# -- configuration ------------------------------------------------------------------------

def test_inline_path_is_relative_to_state_dir(tmp_path):
    (tmp_path / "aliases").write_text("postmaster: root@example.org\n")
    t, ctx = inline(tmp_path, "table file aliases")
    assert t.name == "table.file" and t.kinds == frozenset({"table"})
    assert t.path == str(tmp_path / "aliases")
    assert t.lookup("postmaster") == "root@example.org"
    assert ctx.warnings == []


def test_file_directive_and_defaults(tmp_path):
    (tmp_path / "aliases").write_text("a: b\n")
    t, _ = inline(tmp_path, f"table file {{\n    file {tmp_path}/aliases\n}}")
    assert t.path == str(tmp_path / "aliases")
    assert t.reload_interval == 15.0
    assert t.lookup("a") == "b"


def test_top_level_block(tmp_path):
    (tmp_path / "aliases").write_text("a: b\n")
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"state_dir {tmp_path}\ntable.file local_aliases {{\n"
                    "    file aliases\n    reload_interval 1m\n    debug yes\n}\n")
    t = load_block(str(conf), "local_aliases")
    assert isinstance(t, FileTable)
    assert (t.instance_name, t.reload_interval, t.lookup("a")) == ("local_aliases", 60.0, "b")


def test_path_both_inline_and_in_block_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        inline(tmp_path, "table file a {\n    file b\n}")
    assert e.value.line == 2
    assert "file path specified both in directive and in argument" in e.value.message


def test_no_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        inline(tmp_path, "table file { }")
    assert e.value.message == "missing required directive: file"


def test_two_inline_paths_are_an_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        inline(tmp_path, "table file a b")
    assert "at most 1 inline argument" in e.value.message


def test_missing_file_is_an_empty_table_with_a_warning(tmp_path):
    t, ctx = inline(tmp_path, "table file nothing")
    assert t.keys() == [] and t.lookup("a") is None and t.lookup_multi("a") == []
    assert [str(w) for w in ctx.warnings] == [
        f"{tmp_path}/gmta.conf:1: warning: table file {tmp_path}/nothing does not exist; "
        "the table is empty until it is created"]


def test_unreadable_file_is_an_error(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError) as e:
        inline(tmp_path, "table file dir")
    assert str(e.value).startswith(f"{tmp_path}/gmta.conf:1: cannot read table file {tmp_path}/dir:")


def test_malformed_line_is_a_load_error_at_the_table_file_line(tmp_path):
    (tmp_path / "aliases").write_text("# aliases\na: b\n: c\n")
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"state_dir {tmp_path}\ntable.file al {{\n    file aliases\n}}\n")
    with pytest.raises(ConfigErrors) as e:
        load_block(str(conf), "al")
    assert [str(x) for x in e.value.errors] == [
        f"{tmp_path}/aliases:3: empty key before colon (write 'key: value', "
        f"'key: value1, value2' or 'key'; table.file used at {conf}:3)"]


def test_not_utf8_is_a_load_error(tmp_path):
    (tmp_path / "aliases").write_bytes(b"a: \xe9\n")
    with pytest.raises(ConfigError) as e:
        inline(tmp_path, "table file aliases")
    assert str(e.value) == (f"{tmp_path}/aliases:1: the file is not valid UTF-8 "
                            f"(table.file used at {tmp_path}/gmta.conf:1)")


# -- lookups --------------------------------------------------------------------------------

def test_lookup_lookup_multi_keys(tmp_path):
    t = table(tmp_path, "a: b, c\nempty\nx: y\na: d\n")
    assert t.lookup("a") == "b"
    assert t.lookup_multi("a") == ["b", "c", "d"]
    assert t.lookup("empty") == "" and t.lookup_multi("empty") == [""]
    assert t.lookup("missing") is None and t.lookup_multi("missing") == []
    assert t.keys() == ["a", "empty", "x"]
    # The result is a copy: changing it does not change the table.
    t.lookup_multi("a").append("z")
    assert t.lookup_multi("a") == ["b", "c", "d"]


def test_keys_are_kept_as_written_and_found_case_insensitively(tmp_path):
    t = table(tmp_path, "Alice@Example.ORG: a\nbob@xn--bcher-kva.example: b\nÉVE: e\n")
    assert t.keys() == ["Alice@Example.ORG", "bob@xn--bcher-kva.example", "ÉVE"]
    assert t.lookup("Alice@Example.ORG") == "a"
    assert t.lookup("alice@example.org") == "a"
    assert t.lookup("ALICE@EXAMPLE.ORG") == "a"
    assert t.lookup("bob@bücher.example") == "b"
    assert t.lookup("BOB@XN--BCHER-KVA.EXAMPLE") == "b"
    assert t.lookup("e\u0301ve") == "e"          # NFD é
    assert t.lookup("alice") is None


def test_exact_key_beats_case_insensitive_match_and_first_key_wins(tmp_path):
    t = table(tmp_path, "Foo: 1\nfoo: 2\nFOO: 3\n")
    assert (t.lookup("Foo"), t.lookup("foo"), t.lookup("FOO")) == ("1", "2", "3")
    assert t.lookup("fOO") == "1"


def test_fold_key():
    assert fold_key("Alice@XN--Bcher-kva.Example") == "alice@bücher.example"
    assert fold_key("Postmaster") == "postmaster"
    assert fold_key("a@[192.0.2.1]") == "a@[192.0.2.1]"
    assert fold_key("a@bad..domain") == "a@bad..domain"
    assert fold_key("@x") == "@x"


# -- reloading ------------------------------------------------------------------------------

def test_reload_when_the_file_changes(tmp_path, events):
    t = table(tmp_path, "a: 1\n")
    assert t.lookup("a") == "1"
    touch_later(tmp_path / "t", "a: 2\nb: 3\n")
    assert t.lookup("a") == "2" and t.lookup("b") == "3"
    assert events == [f"module=table.file event=table_reloaded table=table.file "
                      f"file={tmp_path}/t keys=2"]


def test_replaced_file_is_reloaded(tmp_path):
    t = table(tmp_path, "a: 1\n")
    (tmp_path / "new").write_text("a: 2\n")
    os.rename(tmp_path / "new", tmp_path / "t")
    assert t.lookup("a") == "2"


def test_unchanged_file_is_not_read_again(tmp_path, monkeypatch):
    t = table(tmp_path, "a: 1\n")
    reads = []
    monkeypatch.setattr(tf, "in_threadpool", lambda fn, *a: reads.append(a) or fn(*a))
    for _ in range(3):
        assert t.lookup("a") == "1"
    assert reads == []


def test_reload_reads_in_the_threadpool(tmp_path, monkeypatch):
    t = table(tmp_path, "a: 1\n")
    calls = []

    def fake(fn, *args):
        calls.append((fn, args))
        return fn(*args)
    monkeypatch.setattr(tf, "in_threadpool", fake)
    touch_later(tmp_path / "t", "a: 2\n")
    assert t.lookup("a") == "2"
    assert calls == [(tf.read_table, (str(tmp_path / "t"),))]


def test_reload_is_checked_at_most_once_per_interval(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(tf.time, "monotonic", lambda: now[0])
    t = table(tmp_path, "a: 1\n", "reload_interval 15s")
    touch_later(tmp_path / "t", "a: 2\n")
    now[0] += 14.9
    assert t.lookup("a") == "1"
    now[0] += 0.2
    assert t.lookup("a") == "2"
    touch_later(tmp_path / "t", "a: 3\n")
    now[0] += 10
    assert t.lookup("a") == "2"
    now[0] += 5
    assert t.lookup("a") == "3"


def test_bad_file_at_reload_keeps_the_old_entries_and_is_reported_once(tmp_path, events):
    t = table(tmp_path, "cat: dog\n")
    touch_later(tmp_path / "t", "cat: cow\n:\n")
    for _ in range(3):
        assert t.lookup("cat") == "dog"
    assert events == [f"module=table.file event=table_reload_failed table=table.file "
                      f"file={tmp_path}/t error=\"{tmp_path}/t:2: empty key before colon "
                      f"(write 'key: value', 'key: value1, value2' or 'key')\" "
                      f"action=\"keeping the previous entries\""]
    touch_later(tmp_path / "t", "cat: cow\n")
    assert t.lookup("cat") == "cow"


def test_unreadable_file_at_reload_keeps_the_old_entries(tmp_path, events, monkeypatch):
    t = table(tmp_path, "cat: dog\n")
    touch_later(tmp_path / "t", "cat: cow\n")

    def denied(path):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(tf, "read_table", denied)
    assert t.lookup("cat") == "dog"
    assert "event=table_reload_failed" in events[0] and "error=\"Permission denied\"" in events[0]


def test_stat_failure_keeps_the_old_entries_and_retries(tmp_path, events, monkeypatch):
    t = table(tmp_path, "cat: dog\n")
    real_stat = os.stat
    monkeypatch.setattr(tf.os, "stat", lambda p: (_ for _ in ()).throw(OSError(5, "I/O error")))
    assert t.lookup("cat") == "dog"
    assert t.lookup("cat") == "dog"
    assert len(events) == 2 and "error=\"I/O error\"" in events[0]
    monkeypatch.setattr(tf.os, "stat", real_stat)
    touch_later(tmp_path / "t", "cat: cow\n")
    assert t.lookup("cat") == "cow"


def test_removed_file_empties_the_table_and_a_new_one_is_read(tmp_path, events):
    t = table(tmp_path, "cat: dog\n")
    os.unlink(tmp_path / "t")
    assert t.lookup("cat") is None and t.keys() == []
    assert t.lookup("cat") is None
    assert events == [f"module=table.file event=table_file_missing table=table.file "
                      f"file={tmp_path}/t"]
    (tmp_path / "t").write_text("cat: cow\n")
    assert t.lookup("cat") == "cow"


def test_file_removed_between_stat_and_read(tmp_path, monkeypatch):
    t = table(tmp_path, "cat: dog\n")
    touch_later(tmp_path / "t", "cat: cow\n")

    def gone(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    monkeypatch.setattr(tf, "read_table", gone)
    assert t.lookup("cat") is None


def test_forced_reload(tmp_path):
    t = table(tmp_path, "a: 1\n", "reload_interval 1h")
    st = os.stat(tmp_path / "t")
    (tmp_path / "t").write_text("a: 2\n")
    os.utime(tmp_path / "t", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert t.lookup("a") == "1"
    t.reload()
    assert t.lookup("a") == "2"


def test_signature_is_taken_before_the_read(tmp_path):
    (tmp_path / "t").write_text("a: 1\n")
    signature, entries = tf.read_table(str(tmp_path / "t"))
    st = os.stat(tmp_path / "t")
    assert signature == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    assert entries.values == {"a": ["1"]} and len(entries) == 1


# -- editing ----------------------------------------------------------------------------------

ALIASES = """\
# Local aliases
postmaster: root

alice: alice@example.org
# bob has two
bob: b1
bob: b2, b3
carol
"""


def test_set_replaces_the_first_line_and_keeps_the_rest(tmp_path):
    t = table(tmp_path, ALIASES)
    t.set("bob", "new")
    assert (tmp_path / "t").read_text() == ALIASES.replace("bob: b1\nbob: b2, b3\n", "bob: new\n")
    assert t.lookup_multi("bob") == ["new"]


def test_set_appends_a_new_key(tmp_path):
    t = table(tmp_path, ALIASES)
    t.set("dave", ["d1", "d2"])
    assert (tmp_path / "t").read_text() == ALIASES + "dave: d1, d2\n"
    assert t.lookup_multi("dave") == ["d1", "d2"]
    t.set("erin", "")
    assert (tmp_path / "t").read_text().endswith("dave: d1, d2\nerin:\n")
    assert t.lookup("erin") == ""


def test_set_after_a_last_line_without_newline(tmp_path):
    t = table(tmp_path, "a: 1")
    t.set("b", "2")
    assert (tmp_path / "t").read_text() == "a: 1\nb: 2\n"


def test_set_finds_the_key_as_lookup_does(tmp_path):
    t = table(tmp_path, "# users\nAlice@Example.org: old\nbob: x\n")
    t.set("alice@example.org", "new")
    assert (tmp_path / "t").read_text() == "# users\nalice@example.org: new\nbob: x\n"


def test_set_keeps_windows_line_ends(tmp_path):
    (tmp_path / "t").write_bytes(b"# c\r\na: 1\r\n")
    t = inline(tmp_path, "table file t")[0]
    t.set("a", "2")
    t.set("b", "3")
    assert (tmp_path / "t").read_bytes() == b"# c\r\na: 2\r\nb: 3\r\n"


def test_set_create_and_replace_flags(tmp_path):
    t = table(tmp_path, "a: 1\n")
    with pytest.raises(KeyExistsError):
        t.set("A", "2", replace=False)
    with pytest.raises(KeyNotFoundError):
        t.set("b", "2", create=False)
    assert (tmp_path / "t").read_text() == "a: 1\n"
    t.set("a", "2", create=False)
    t.set("b", "3", replace=False)
    assert (tmp_path / "t").read_text() == "a: 2\nb: 3\n"


@pytest.mark.parametrize("key", ["", " a", "a ", "a:b", "a\nb", "a\rb", "#a"])
def test_set_refuses_keys_the_format_cannot_hold(tmp_path, key):
    t = table(tmp_path, "a: 1\n")
    with pytest.raises(ValueError):
        t.set(key, "v")


@pytest.mark.parametrize("value", [" v", "v ", "a,b", "a\nb", ["a", "b\r"], []])
def test_set_refuses_values_the_format_cannot_hold(tmp_path, value):
    t = table(tmp_path, "a: 1\n")
    with pytest.raises(ValueError):
        t.set("k", value)
    assert (tmp_path / "t").read_text() == "a: 1\n"


def test_remove_drops_every_line_of_the_key(tmp_path):
    t = table(tmp_path, ALIASES)
    t.remove("bob")
    assert (tmp_path / "t").read_text() == ALIASES.replace("bob: b1\nbob: b2, b3\n", "")
    assert t.lookup("bob") is None
    t.remove("CAROL")
    assert "carol" not in (tmp_path / "t").read_text()
    with pytest.raises(KeyNotFoundError):
        t.remove("bob")


def test_set_creates_a_missing_file_with_mode_600(tmp_path):
    t, _ = inline(tmp_path, "table file passwd")
    t.set("alice", "x")
    path = tmp_path / "passwd"
    assert path.read_text() == "alice: x\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert t.lookup("alice") == "x"


def test_set_keeps_the_mode_of_an_existing_file(tmp_path):
    t = table(tmp_path, "a: 1\n")
    os.chmod(tmp_path / "t", 0o640)
    t.set("a", "2")
    assert stat.S_IMODE(os.stat(tmp_path / "t").st_mode) == 0o640


def test_set_through_a_symlink_replaces_its_target(tmp_path):
    (tmp_path / "real").write_text("a: 1\n")
    os.symlink("real", tmp_path / "t")
    t = inline(tmp_path, "table file t")[0]
    t.set("a", "2")
    assert os.path.islink(tmp_path / "t")
    assert (tmp_path / "real").read_text() == "a: 2\n"


def test_broken_file_is_not_edited(tmp_path):
    t = table(tmp_path, "a: 1\n")
    (tmp_path / "t").write_text("a: 1\n: x\n")
    with pytest.raises(ConfigError) as e:
        t.set("b", "2")
    assert (e.value.line, e.value.message) == (2, "empty key before colon")
    assert (tmp_path / "t").read_text() == "a: 1\n: x\n"


def test_edit_sees_changes_made_since_loading(tmp_path):
    t = table(tmp_path, "a: 1\n", "reload_interval 1h")
    (tmp_path / "t").write_text("a: 1\nb: 2\n")     # by another process
    t.set("c", "3")
    assert (tmp_path / "t").read_text() == "a: 1\nb: 2\nc: 3\n"
    assert t.keys() == ["a", "b", "c"]


def test_write_is_atomic_and_durable(tmp_path, monkeypatch):
    t = table(tmp_path, "a: 1\n")
    steps = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(tf.os, "fsync", lambda fd: steps.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(tf.os, "rename", lambda a, b: steps.append(("rename", os.path.basename(b)))
                        or real_rename(a, b))
    monkeypatch.setattr(tf, "fsync_dir", lambda d: steps.append(("fsync_dir", d)))
    t.set("a", "2")
    assert steps == ["fsync", ("rename", "t"), ("fsync_dir", str(tmp_path))]


def test_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    t = table(tmp_path, "a: 1\n")

    def fail(a, b):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tf.os, "rename", fail)
    with pytest.raises(OSError):
        t.set("a", "2")
    assert (tmp_path / "t").read_text() == "a: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.lock", "t"]
    assert t.lookup("a") == "1"


def test_edits_wait_for_the_lock(tmp_path):
    t = table(tmp_path, "a: 1\n")
    fd = os.open(tmp_path / ".t.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (t.set("b", "2"), done.set()))
    worker.start()
    time.sleep(0.2)
    assert not done.is_set() and (tmp_path / "t").read_text() == "a: 1\n"
    os.close(fd)
    worker.join(5)
    assert done.is_set() and (tmp_path / "t").read_text() == "a: 1\nb: 2\n"


def test_concurrent_editors_lose_no_update(tmp_path):
    (tmp_path / "t").write_text("# users\n")
    tables = [inline(tmp_path, "table file t")[0] for _ in range(8)]
    threads = [threading.Thread(target=lambda t=t, i=i: [t.set(f"u{i}-{j}", str(j))
                                                         for j in range(5)])
               for i, t in enumerate(tables)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    keys = inline(tmp_path, "table file t")[0].keys()
    assert sorted(keys) == sorted(f"u{i}-{j}" for i in range(8) for j in range(5))


# -- table.static ------------------------------------------------------------------------------

def test_static_table(tmp_path):
    from gmta.table.static import StaticTable

    t, _ = inline(tmp_path, "table static {\n"
                            "    entry postmaster root@example.org\n"
                            "    entry Sales@Example.org alice@example.org bob@example.org\n"
                            "    entry postmaster admin@example.org\n"
                            "}")
    assert isinstance(t, StaticTable) and t.kinds == frozenset({"table"})
    assert t.lookup("postmaster") == "admin@example.org"      # the last entry wins
    assert t.lookup_multi("sales@example.org") == ["alice@example.org", "bob@example.org"]
    assert t.lookup("nobody") is None and t.lookup_multi("nobody") == []
    assert t.keys() == ["Sales@Example.org", "postmaster"]


def test_static_entry_needs_a_value(tmp_path):
    import gmta.table.static  # noqa: F401

    with pytest.raises(ConfigError) as e:
        inline(tmp_path, "table static {\n    entry lonely\n}")
    assert (e.value.line, e.value.message) == (2, "entry: expected at least 2 argument(s)")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_set_keeps_the_owner_when_run_as_root(tmp_path):
    t = table(tmp_path, "a: 1\n")
    os.chown(tmp_path / "t", 12345, 23456)
    t.set("a", "2")
    st = os.stat(tmp_path / "t")
    assert (st.st_uid, st.st_gid) == (12345, 23456)

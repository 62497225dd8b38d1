"""``target.maildir``: path templates, refusals, tmp → new with fsync, config errors."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re

import pytest

import gmta.modules  # noqa: F401  (registers smtp and target.maildir)
from gmta.buffer import Buffer, BufferWriter, MemoryBuffer
from gmta.config.loader import load_text
from gmta.delivery import MessageMeta
from gmta.errors import ConfigErrors, SMTPError
from gmta.target import maildir as maildir_mod
from gmta.target.maildir import MaildirTarget, split_address, unique_name

META = MessageMeta(id="m1")


def make_target(template: str, create: bool = True) -> MaildirTarget:
    target = MaildirTarget("mb", [], None)
    target.template = template
    target.create = create
    return target


@pytest.fixture
def root(tmp_path):
    return tmp_path / "maildir"


@pytest.fixture
def target(root):
    return make_target(f"{root}/{{domain}}/{{local}}")


def listing(path) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def deliver(target, rcpts, header=b"Subject: hi\r\n\r\n", body: bytes | Buffer = b"body\r\n",
            sender="s@x.test"):
    delivery = target.start_delivery(META, sender)
    for rcpt in rcpts:
        delivery.add_rcpt(rcpt)
    delivery.body(header, body if isinstance(body, Buffer) else MemoryBuffer(body))
    delivery.commit()
    return delivery


def stored(maildir) -> list[bytes]:
    new = os.path.join(maildir, "new")
    return [open(os.path.join(new, name), "rb").read() for name in listing(new)]


# -- templates ---------------------------------------------------------------------------

def test_split_address():
    assert split_address("a@b.test") == ("a", "b.test")
    assert split_address('"x@y"@b.test') == ('"x@y"', "b.test")
    assert split_address("postmaster") == ("postmaster", "")


@pytest.mark.parametrize("template, expected", [
    ("/m/{domain}/{local}", "/m/example.test/bob"),
    ("/m/{local}", "/m/bob"),
    ("/m/{address}", "/m/bob@example.test"),
    ("/m/{domain}/{address}/{local}", "/m/example.test/bob@example.test/bob"),
    ("/m/all", "/m/all"),
])
def test_path_templates(template, expected):
    assert make_target(template).maildir_for("Bob@Example.TEST") == expected


@pytest.mark.parametrize("rcpt, expected", [
    ("{domain}@example.test", "/m/example.test/{domain}"),
    ("{local}@example.test", "/m/example.test/{local}"),
    ("{address}@example.test", "/m/example.test/{address}"),
])
def test_placeholders_inside_an_address_are_not_expanded(rcpt, expected):
    """Braces are atext (RFC 5322 §3.2.3): '{domain}@example.test' is its own mailbox,
    not the mailbox of 'example.test@example.test'."""
    assert make_target("/m/{domain}/{local}").maildir_for(rcpt) == expected


def test_address_placeholder_is_expanded_once():
    assert make_target("/m/{address}").maildir_for("{local}x@d.test") == "/m/{local}x@d.test"


@pytest.mark.parametrize("rcpt", [
    "../etc@example.test", "..@example.test", ".@example.test", ".hidden@example.test",
    "a/b@example.test", "a/../../b@example.test", "/abs@example.test",
    "bob@..", "bob@.", "bob@.example.test", "bob@a/b", "bob@../x", "nul\0@example.test",
])
def test_escaping_addresses_are_refused(rcpt, root):
    target = make_target(f"{root}/{{domain}}/{{local}}")
    with pytest.raises(SMTPError) as e:
        target.maildir_for(rcpt)
    assert (e.value.code, e.value.enhanced) == (550, (5, 1, 3))
    # Refused before anything touched the disk.
    assert not root.exists()


def test_escaping_address_refused_at_add_rcpt(target):
    delivery = target.start_delivery(META, "")
    with pytest.raises(SMTPError) as e:
        delivery.add_rcpt("../x@example.test")
    assert str(e.value) == "550 5.1.3 Mailbox name not allowed"
    assert delivery.maildirs == {}


def test_create_no_with_a_missing_maildir_is_550_5_1_1(root):
    target = make_target(f"{root}/{{local}}", create=False)
    with pytest.raises(SMTPError) as e:
        target.maildir_for("nobody@example.test")
    assert str(e.value) == "550 5.1.1 Mailbox does not exist"
    # A Maildir missing one of its three directories does not exist either.
    os.makedirs(root / "half" / "cur")
    os.makedirs(root / "half" / "new")
    with pytest.raises(SMTPError):
        target.maildir_for("half@example.test")
    os.makedirs(root / "half" / "tmp")
    assert target.maildir_for("half@example.test") == f"{root}/half"
    assert not (root / "nobody").exists()


def test_create_no_delivers_into_an_existing_maildir(root):
    for sub in ("cur", "new", "tmp"):
        os.makedirs(root / "bob" / sub)
    deliver(make_target(f"{root}/{{local}}", create=False), ["bob@example.test"])
    assert len(stored(root / "bob")) == 1


# -- delivery -----------------------------------------------------------------------------

def test_delivery_creates_the_maildir_and_prefixes_the_fields(target, root):
    deliver(target, ["Bob@Example.TEST"], sender="alice@a.test")
    maildir = root / "example.test" / "bob"
    assert listing(maildir) == ["cur", "new", "tmp"]
    assert listing(maildir / "tmp") == []
    assert stored(maildir) == [b"Return-Path: <alice@a.test>\r\nDelivered-To: Bob@Example.TEST\r\n"
                               b"Subject: hi\r\n\r\nbody\r\n"]
    assert oct(os.stat(maildir / "new").st_mode & 0o777) == "0o700"
    [name] = listing(maildir / "new")
    assert oct(os.stat(maildir / "new" / name).st_mode & 0o777) == "0o600"


def test_null_sender_has_an_empty_return_path(target, root):
    deliver(target, ["bob@example.test"], sender="")
    [message] = stored(root / "example.test" / "bob")
    assert message.startswith(b"Return-Path: <>\r\nDelivered-To: bob@example.test\r\n")


def test_each_recipient_gets_its_own_copy(target, root):
    deliver(target, ["a@example.test", "b@example.test", "a@example.test"])
    [a] = stored(root / "example.test" / "a")
    [b] = stored(root / "example.test" / "b")
    assert b"Delivered-To: a@example.test\r\n" in a
    assert b"Delivered-To: b@example.test\r\n" in b


def test_recipients_sharing_a_maildir_get_one_copy_each(root):
    target = make_target(f"{root}/{{domain}}")
    deliver(target, ["a@example.test", "b@example.test"])
    assert len(stored(root / "example.test")) == 2


def test_spilled_body_is_read_from_its_file(target, root, tmp_path):
    writer = BufferWriter(0, str(tmp_path / "buf"))
    writer.write(b"x" * 200_000)
    body = writer.finish()
    delivery = target.start_delivery(META, "")
    delivery.add_rcpt("a@example.test")
    delivery.add_rcpt("b@example.test")
    delivery.body(b"H: v\r\n\r\n", body)
    delivery.commit()
    for local in ("a", "b"):
        [message] = stored(root / "example.test" / local)
        assert message.endswith(b"H: v\r\n\r\n" + b"x" * 200_000)


def test_nothing_is_visible_before_commit(target, root):
    delivery = target.start_delivery(META, "")
    delivery.add_rcpt("bob@example.test")
    delivery.body(b"\r\n", MemoryBuffer(b"x"))
    maildir = root / "example.test" / "bob"
    assert listing(maildir / "new") == []
    assert len(listing(maildir / "tmp")) == 1
    delivery.commit()
    assert listing(maildir / "tmp") == []
    assert len(listing(maildir / "new")) == 1


def test_commit_logs_each_file(target, root, log_lines):
    deliver(target, ["bob@example.test"])
    [line] = [x for x in log_lines if "event=delivered" in x]
    assert line.startswith("module=target.maildir event=delivered msg_id=m1 maildir=")


@pytest.mark.parametrize("in_memory", [True, False])
def test_commit_syncs_the_file_before_the_rename_and_new_after(target, root, monkeypatch,
                                                               tmp_path, in_memory):
    """The data is durable before its name moves into new/: a body in memory is
    one write to a file opened O_SYNC, a body in a file is fsynced after the copy."""
    events = []
    real_fsync, real_rename, real_write = os.fsync, os.rename, os.write

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def write(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_SYNC:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_write(fd, data)

    def rename(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "rename", rename)
    if in_memory:
        body = MemoryBuffer(b"body\r\n")
    else:
        writer = BufferWriter(0, str(tmp_path / "buffer"))
        writer.write(b"body\r\n")
        body = writer.finish()
    deliver(target, ["a@example.test", "b@example.test"], body=body)
    maildirs = [str(root / "example.test" / local) for local in ("a", "b")]
    renames = [e for e in events if e[0] == "rename"]
    assert [os.path.dirname(os.path.dirname(src)) for _, src, _ in renames] == maildirs
    for _, src, dst in renames:
        name = os.path.basename(src)
        maildir = os.path.dirname(os.path.dirname(src))
        assert src == os.path.join(maildir, "tmp", name)
        assert dst == os.path.join(maildir, "new", name)
        # The data reached the disk before its name moved into new/...
        assert events.index(("fsync", src)) < events.index(("rename", src, dst))
        # ...and new/ itself was synced after the rename.
        assert ("fsync", os.path.join(maildir, "new")) in events[events.index(("rename", src, dst)):]
        assert stored(maildir)[0].endswith(b"Subject: hi\r\n\r\nbody\r\n")


def test_abort_removes_the_tmp_files(target, root):
    delivery = target.start_delivery(META, "")
    delivery.add_rcpt("a@example.test")
    delivery.add_rcpt("b@example.test")
    delivery.body(b"\r\n", MemoryBuffer(b"x"))
    delivery.abort()
    for local in ("a", "b"):
        assert listing(root / "example.test" / local / "tmp") == []
        assert listing(root / "example.test" / local / "new") == []
    delivery.abort()  # twice is harmless


def test_abort_when_a_tmp_file_is_already_gone(target, root):
    delivery = target.start_delivery(META, "")
    delivery.add_rcpt("a@example.test")
    delivery.body(b"\r\n", MemoryBuffer(b"x"))
    tmp = root / "example.test" / "a" / "tmp"
    for name in listing(tmp):
        os.unlink(tmp / name)
    delivery.abort()


def test_abort_before_body_and_after_commit_do_nothing(target, root):
    delivery = target.start_delivery(META, "")
    delivery.add_rcpt("a@example.test")
    delivery.abort()
    assert not root.exists()
    delivery = deliver(target, ["a@example.test"])
    delivery.abort()
    assert len(stored(root / "example.test" / "a")) == 1


class FailingBody(Buffer):
    """A buffer whose reader fails half-way, as a full disk or an I/O error would."""

    size = 10

    def open(self):
        class Reader(io.BytesIO):
            def read(self, n=-1):
                if self.tell():
                    raise OSError(errno.EIO, "Input/output error")
                return super().read(5)
        return Reader(b"0123456789")


def test_write_error_is_451_and_leaves_nothing_in_tmp(target, root, log_lines):
    delivery = target.start_delivery(META, "")
    delivery.add_rcpt("a@example.test")
    with pytest.raises(SMTPError) as e:
        delivery.body(b"H: v\r\n\r\n", FailingBody())
    assert str(e.value) == "451 4.3.0 Local delivery failed, try again later"
    assert listing(root / "example.test" / "a" / "tmp") == []
    assert delivery.pending == []
    [line] = [x for x in log_lines if "write_failed" in x]
    assert 'rcpt=a@example.test' in line and 'error="Input/output error"' in line


def test_write_error_for_the_second_recipient_then_abort(target, root, monkeypatch):
    delivery = target.start_delivery(META, "")
    delivery.add_rcpt("a@example.test")
    delivery.add_rcpt("b@example.test")
    real_write_tmp = target.write_tmp
    calls = []

    def write_tmp(maildir, header, body):
        calls.append(maildir)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_tmp(maildir, header, body)

    monkeypatch.setattr(target, "write_tmp", write_tmp)
    with pytest.raises(SMTPError) as e:
        delivery.body(b"\r\n", MemoryBuffer(b"x"))
    assert e.value.code == 451
    assert len(listing(root / "example.test" / "a" / "tmp")) == 1
    delivery.abort()
    assert listing(root / "example.test" / "a" / "tmp") == []
    assert listing(root / "example.test" / "a" / "new") == []


def test_open_error_in_tmp_is_451(target, root, monkeypatch):
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & os.O_EXCL:
            raise OSError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    delivery = target.start_delivery(META, "")
    delivery.add_rcpt("a@example.test")
    with pytest.raises(SMTPError) as e:
        delivery.body(b"\r\n", MemoryBuffer(b"x"))
    assert e.value.code == 451
    assert delivery.pending == []


def test_commit_error_is_451(target, root, monkeypatch, log_lines):
    delivery = target.start_delivery(META, "")
    delivery.add_rcpt("a@example.test")
    delivery.body(b"\r\n", MemoryBuffer(b"x"))

    def rename(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(SMTPError) as e:
        delivery.commit()
    assert str(e.value) == "451 4.3.0 Local delivery failed, try again later"
    assert any("event=commit_failed" in x for x in log_lines)
    monkeypatch.undo()
    delivery.abort()
    assert listing(root / "example.test" / "a" / "tmp") == []


def test_unique_names():
    names = {unique_name() for _ in range(2000)}
    assert len(names) == 2000
    name = next(iter(names))
    assert re.fullmatch(r"\d+\.M\d+P\d+Q\d+R[0-9a-f]{16}\.\S+", name)
    assert "/" not in name and ":" not in name


def test_unique_name_escapes_the_host_name(monkeypatch):
    class Uname:
        nodename = "a/b:c"
    monkeypatch.setattr(maildir_mod.os, "uname", lambda: Uname)
    maildir_mod._host_part.cache_clear()   # read once per process
    try:
        assert unique_name().endswith(".a\\057b\\072c")
    finally:
        maildir_mod._host_part.cache_clear()


# -- configuration --------------------------------------------------------------------------

CONFIG = """hostname mx.test
state_dir {state}
tls off
{blocks}
smtp tcp://127.0.0.1:0 {{
    deliver_to {target}
}}
"""


def load(tmp_path, target: str, blocks: str = ""):
    return load_text(CONFIG.format(state=tmp_path, target=target, blocks=blocks), "m.conf")


def the_maildir(config) -> MaildirTarget:
    [target] = [i for i in config.instances if isinstance(i, MaildirTarget)]
    return target


def test_config_inline_path_is_state_relative(tmp_path):
    config = load(tmp_path, "maildir mail/{domain}/{local}")
    target = the_maildir(config)
    assert target.template == f"{tmp_path}/mail/{{domain}}/{{local}}"
    assert target.create is True
    assert config.warnings == []


def test_config_block_with_path_and_create(tmp_path):
    config = load(tmp_path, "&mb", "target.maildir mb {\n    path /srv/mail/{address}\n"
                                    "    create no\n}\n")
    target = the_maildir(config)
    assert (target.template, target.create) == ("/srv/mail/{address}", False)


def test_config_without_a_path(tmp_path):
    with pytest.raises(ConfigErrors) as e:
        load(tmp_path, "&mb", "target.maildir mb {\n}\n")
    assert "m.conf:4: missing required directive: path" in str(e.value)
    with pytest.raises(ConfigErrors) as e:
        load(tmp_path, "maildir")
    assert "m.conf:6: missing required directive: path" in str(e.value)


def test_config_with_both_inline_and_path(tmp_path):
    with pytest.raises(ConfigErrors) as e:
        load(tmp_path, "maildir a/{local} {\n        path b/{local}\n    }")
    assert "m.conf:7: give the Maildir path either inline or with 'path', not both" \
        in str(e.value)


def test_config_warns_about_a_path_without_placeholders(tmp_path):
    config = load(tmp_path, "maildir mail/shared")
    [warning] = config.warnings
    assert str(warning).startswith("m.conf:6: warning: Maildir path")
    assert "every recipient shares one Maildir" in str(warning)


def test_config_too_many_inline_arguments(tmp_path):
    with pytest.raises(ConfigErrors) as e:
        load(tmp_path, "maildir a/{local} b/{local}")
    assert "at most 1 inline argument" in str(e.value)

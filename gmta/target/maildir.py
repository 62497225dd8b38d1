"""``target.maildir``: local delivery into Maildirs that Dovecot can read.

Per recipient, the directory comes from a template such as
``maildir/{domain}/{local}`` (relative to ``state_dir``). Each message is
written to ``tmp/``, fsynced, and at commit renamed into ``new/`` and the
directory fsynced (one fsync for all the commits that finish together),
following the Maildir contract (tmp → new, unique names): a reader never
sees a partial message, and once ``commit()`` returns the message survives
a crash.

Added header fields (as a mailbox's delivery agent adds them, RFC 5321 §4.4):
``Return-Path: <sender>`` and ``Delivered-To: <recipient>``.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import time

import gmta.log
from gmta import randomid
from gmta.buffer import MemoryBuffer
from gmta.config.module import Module, register
from gmta.config.reader import Bool, Directive, Path
from gmta.delivery import MessageMeta
from gmta.durable import DirectorySyncs, create_file, in_threadpool
from gmta.errors import SMTPError
from gmta.proto.grammar import split_address

log = gmta.log.get("target.maildir")

_PLACEHOLDERS = ("{local}", "{domain}", "{address}")
_PLACEHOLDER = re.compile(r"\{(local|domain|address)\}")
_counter = itertools.count(1)


@functools.cache
def _host_part() -> str:
    """The host name as a Maildir name carries it (read once: a system call per message)."""
    return os.uname().nodename.replace("/", "\\057").replace(":", "\\072")


def unique_name() -> str:
    """A Maildir file name unique across processes and hosts (Dovecot's shape)."""
    now = time.time()
    seconds = int(now)
    micros = int((now - seconds) * 1_000_000)
    host = _host_part()
    return (f"{seconds}.M{micros}P{os.getpid()}Q{next(_counter)}"
            f"R{randomid.token_hex(8)}.{host}")


class MaildirDelivery:
    def __init__(self, target: "MaildirTarget", meta: MessageMeta, mail_from: str):
        self.target = target
        self.meta = meta
        self.mail_from = mail_from
        self.maildirs: dict[str, str] = {}
        # (maildir, file name) written to tmp/ and waiting for commit.
        self.pending: list[tuple[str, str]] = []

    def add_rcpt(self, rcpt: str, params: dict | None = None) -> None:
        if rcpt not in self.maildirs:
            self.maildirs[rcpt] = self.target.maildir_for(rcpt)

    def body(self, header: bytes, body) -> None:
        for rcpt, maildir in self.maildirs.items():
            prefix = (f"Return-Path: <{self.mail_from}>\r\n"
                      f"Delivered-To: {rcpt}\r\n").encode("utf-8")
            try:
                name = in_threadpool(self.target.write_tmp, maildir, prefix + header, body)
            except OSError as e:
                log.error("write_failed", msg_id=self.meta.id, rcpt=rcpt, maildir=maildir,
                          error=e.strerror or str(e))
                raise SMTPError(451, (4, 3, 0), "Local delivery failed, try again later") from None
            self.pending.append((maildir, name))

    def commit(self) -> None:
        try:
            self.target.move_to_new(self.pending)
        except OSError as e:
            log.error("commit_failed", msg_id=self.meta.id, error=e.strerror or str(e))
            raise SMTPError(451, (4, 3, 0), "Local delivery failed, try again later") from None
        for maildir, name in self.pending:
            log.info("delivered", msg_id=self.meta.id, maildir=maildir, file=name)
        self.pending = []

    def abort(self) -> None:
        for maildir, name in self.pending:
            try:
                os.unlink(os.path.join(maildir, "tmp", name))
            except FileNotFoundError:
                pass
        self.pending = []


@register
class MaildirTarget(Module):
    name = "target.maildir"
    kinds = frozenset({"target"})
    max_inline_args = 1
    #: Final delivery: a queue in front reports NOTIFY=SUCCESS as "delivered" (RFC 3464 §2.3.3).
    delivers_locally = True
    directives = (
        Directive("path", Path(), doc="Maildir path template with {local}, {domain}, {address}"),
        Directive("create", Bool(), True, doc="create missing Maildirs (cur, new, tmp)"),
    )

    def __init__(self, *args) -> None:
        super().__init__(*args)
        # Commits that finish together share one fsync of new/ (group commit).
        self.new_dir_syncs = DirectorySyncs()

    def configure(self, cfg, ctx) -> None:
        template = cfg.path
        if self.inline_args:
            if cfg.given("path"):
                raise cfg.error("path", "give the Maildir path either inline or with 'path', "
                                        "not both")
            template = ctx.state_path(self.inline_args[0])
        if template is None:
            raise self.node.error("missing required directive: path",
                                  hint="such as 'path maildir/{domain}/{local}'")
        if not any(p in template for p in _PLACEHOLDERS):
            ctx.warn(self.node, f"Maildir path {template} has no {{local}}, {{domain}} or "
                                "{address}: every recipient shares one Maildir")
        self.template = template
        self.create = cfg.create

    def maildir_for(self, rcpt: str) -> str:
        """The Maildir of *rcpt*, refusing addresses that would escape the template."""
        address = rcpt.lower()
        local, domain = split_address(address)
        for part in (local, domain):
            # A '/' or a '..' component would write outside the mail tree.
            if "/" in part or "\0" in part or part in (".", "..") or part.startswith("."):
                raise SMTPError(550, (5, 1, 3), "Mailbox name not allowed")
        # One pass: braces are atext, so an address may itself contain "{domain}".
        values = {"local": local, "domain": domain, "address": address}
        path = _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)
        if not self.create and not all(os.path.isdir(os.path.join(path, sub))
                                       for sub in ("cur", "new", "tmp")):
            raise SMTPError(550, (5, 1, 1), "Mailbox does not exist")
        return path

    def start_delivery(self, meta: MessageMeta, mail_from: str) -> MaildirDelivery:
        return MaildirDelivery(self, meta, mail_from)

    # -- blocking file work, run in the threadpool ---------------------------

    def write_tmp(self, maildir: str, header: bytes, body) -> str:
        name = unique_name()
        path = os.path.join(maildir, "tmp", name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        # A body in memory goes out in one write: with O_SYNC that write
        # returns once data and inode are on disk, as an fsync after it would
        # (POSIX synchronized I/O file integrity completion), and the pool
        # thread makes one system call fewer, so takes the GIL back once
        # fewer. A body in a file is copied in chunks, then fsynced once.
        synchronous = isinstance(body, MemoryBuffer)
        if synchronous:
            flags |= os.O_SYNC
        try:
            fd = create_file(path, flags, 0o600)
        except FileNotFoundError:
            # A new Maildir: create it on the first message only, so the
            # common case costs no directory checks (they showed in bench/).
            if not self.create:
                raise
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(maildir, sub), mode=0o700, exist_ok=True)
            fd = create_file(path, flags, 0o600)
        try:
            body.write_to(fd, header)
            # The data must be on disk before the name moves into new/.
            if not synchronous:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return name

    def move_to_new(self, pending: list[tuple[str, str]]) -> None:
        """Publish written messages: rename tmp/ → new/, then make the renames durable.

        The renames travel with the fsync of new/ (``DirectorySync``): one pool
        thread renames every message of the commits that finish together and
        then syncs new/ once for all of them. A crash before the fsync leaves
        the message in tmp/ or new/ without a durable entry; the client got no
        250 and retries.
        """
        by_maildir: dict[str, list[tuple[str, str]]] = {}
        for maildir, name in pending:
            by_maildir.setdefault(maildir, []).append(
                (os.path.join(maildir, "tmp", name), os.path.join(maildir, "new", name)))
        for maildir, renames in by_maildir.items():
            self.new_dir_syncs.sync(os.path.join(maildir, "new"), renames)

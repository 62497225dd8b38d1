"""``gmta queue``: see and steer a queue, safely while the daemon runs (DESIGN §2).

Every change takes the entry's lock (the one the daemon takes to deliver),
waiting up to ``LOCK_TIMEOUT`` seconds for an attempt in progress to end, and
is written with the same durable record update the daemon uses. A running
daemon learns of ``flush`` and ``release`` through the queue's ``wakeup``
file, whose modification time it polls every second, and at once from a
datagram on ``wakeup.sock`` (:func:`gmta.queue.wakeup.ask_for_rescan`); it
then rescans the queue. ``flush`` of the whole queue writes the time into ``flush-all``:
every entry last tried before that time is due now (without rewriting a
million records). ``list`` and ``show`` only read.

Exit status: 0 done, 1 the request could not be done (no such message, busy),
2 configuration errors.
"""

from __future__ import annotations

import json
import os
import sys
import time

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # pragma: no cover
    from gmta.queue.record import QueuedMessage
    from gmta.queue.store import Spool

# The store (and gevent under it) is imported when a command runs, so that
# registering the group keeps `gmta version` and `--help` instant.

EXIT_CONFIG_ERROR = 2
LOCK_TIMEOUT = 30.0


def open_spool(config_path: str, name: str | None, directory: str | None) -> "Spool":
    """The spool of ``--dir``, or of the configured ``target.queue`` block."""
    from gmta.queue.store import Spool

    if directory:
        if not os.path.isdir(os.path.join(directory, "msg")):
            raise click.ClickException(f"{directory} is not a gmta queue directory")
        return Spool(directory)
    import gmta.modules  # noqa: F401  (fills the module registry)
    from gmta.config.loader import load_block
    from gmta.errors import ConfigErrors

    try:
        queue = load_block(config_path, name, module="target.queue")
    except ConfigErrors as e:
        for error in e.errors:
            click.echo(str(error), err=True)
        sys.exit(EXIT_CONFIG_ERROR)
    if not os.path.isdir(queue.spool.msg_dir):
        raise click.ClickException(f"queue {queue.instance_name} at {queue.location} does not "
                                   "exist yet (gmta run creates it)")
    return queue.spool


def records(spool: "Spool"):
    """Every readable record, and (id, error) for the unreadable ones, without repairing."""
    from gmta.queue.record import CorruptRecord

    for name in sorted(os.listdir(spool.msg_dir)):
        entry_id, _, kind = name.partition(".")
        if kind != "msg":   # every entry has one; ID.meta is a later record
            continue
        try:
            yield spool.read(entry_id), None
        except FileNotFoundError:
            continue  # delivered or removed while we listed, or an orphan
        except (CorruptRecord, OSError) as e:
            yield entry_id, str(e)


def _time(when: float | None) -> str:
    if not when:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def list_queue(spool: "Spool", as_json: bool) -> None:
    rows = []
    for record, error in records(spool):
        if error is not None:
            rows.append({"id": record, "error": error})
            continue
        rows.append(record.to_json() if as_json else record)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("Queue is empty")
        return
    for row in rows:
        if isinstance(row, dict):
            click.echo(f"{row['id']}  UNREADABLE: {row['error']}")
            continue
        pending = row.pending()
        state = "held" if row.held else ("due" if row.next_attempt <= time.time() else "waiting")
        click.echo(f"{row.id}  {_time(row.arrival)}  {row.size:>9}  <{row.mail_from}>  "
                   f"{state}  next={_time(row.next_attempt) if pending else '-'}")
        for r in row.recipients:
            error = f"  {r.error}" if r.error is not None else ""
            click.echo(f"    {r.address}  {r.state}  tries={r.tries}{error}")
    click.echo(f"{len(rows)} message(s)")


def show(spool: "Spool", entry_id: str, as_json: bool) -> None:
    record = _read(spool, entry_id)
    header, _ = spool.message(record)
    if as_json:
        click.echo(json.dumps({**record.to_json(),
                               "header": header.decode("utf-8", "replace")},
                              indent=2, ensure_ascii=False))
        return
    click.echo(f"id: {record.id}\nmsg_id: {record.msg_id}\nsender: <{record.mail_from}>\n"
               f"arrival: {_time(record.arrival)}\nsize: {record.size}\n"
               f"held: {'yes' if record.held else 'no'}\n"
               f"last attempt: {_time(record.last_attempt)}\n"
               f"next attempt: {_time(record.next_attempt) if record.pending() else '-'}\n"
               f"client: {record.conn.get('peer', '-')} ({record.conn.get('helo', '-')})")
    for r in record.recipients:
        original = record.original_rcpts.get(r.address)
        click.echo(f"recipient: {r.address}" + (f" (was {original})" if original else "") +
                   f"  {r.state}  tries={r.tries}" + (f"  {r.error}" if r.error else ""))
    click.echo("")
    click.echo(header.decode("utf-8", "replace").rstrip("\r\n").replace("\r\n", "\n"))


def _read(spool: "Spool", entry_id: str, lock=None) -> "QueuedMessage":
    from gmta.queue.record import CorruptRecord

    _check_id(entry_id)
    try:
        return spool.read(entry_id, lock)
    except FileNotFoundError:
        raise click.ClickException(f"no message {entry_id} in the queue") from None
    except CorruptRecord as e:
        raise click.ClickException(f"message {entry_id} is unreadable: {e}") from None


def _check_id(entry_id: str) -> None:
    from gmta.queue.store import valid_id

    if not valid_id(entry_id):
        raise click.ClickException(f"invalid queue id {entry_id!r}")


def change(spool: "Spool", entry_id: str, action: str) -> None:
    """``flush``, ``hold``, ``release`` or ``remove`` one entry, under its lock."""
    from gmta.queue.store import EntryBusy

    _check_id(entry_id)
    try:
        lock = spool.lock(entry_id, LOCK_TIMEOUT)
    except EntryBusy:
        raise click.ClickException(f"message {entry_id} is still being delivered; "
                                   "try again") from None
    if lock is None:
        raise click.ClickException(f"no message {entry_id} in the queue")
    try:
        if action == "remove":
            spool.remove(lock)
            click.echo(f"{entry_id}: removed")
            return
        record = _read(spool, entry_id, lock)
        if action == "hold":
            record.held = True
        else:  # flush, release: due now
            record.held = False
            record.next_attempt = time.time()
            record.dsn_retry_at = None
        spool.write(lock, record)
    finally:
        lock.release()
    if action != "hold":
        _wake_daemon(spool)
    click.echo(f"{entry_id}: {'held' if action == 'hold' else 'due now'}")


def flush_all(spool: "Spool") -> None:
    spool.request_flush_all(time.time())
    _wake_daemon(spool)
    click.echo("every message is due now")


def _wake_daemon(spool: "Spool") -> None:
    from gmta.queue.wakeup import ask_for_rescan

    spool.request_wakeup()  # the file first: a daemon that rescans must see it changed
    ask_for_rescan(spool)


def register(main: click.Group, config_option) -> None:
    """Add the ``queue`` group to the ``gmta`` command."""

    def where(fn):
        fn = click.option("--queue", "queue_name", metavar="NAME",
                          help="The target.queue block, when the configuration has several.")(fn)
        fn = click.option("--dir", "directory", metavar="DIR",
                          help="The queue directory itself (no configuration needed).")(fn)
        return config_option(fn)

    @main.group()
    def queue() -> None:
        """List, inspect, flush, hold, release or remove queued messages."""

    @queue.command("list")
    @where
    @click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
    def list_command(config_path, queue_name, directory, as_json):
        """List the queued messages and the state of each recipient."""
        list_queue(open_spool(config_path, queue_name, directory), as_json)

    @queue.command("show")
    @where
    @click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
    @click.argument("entry_id", metavar="ID")
    def show_command(config_path, queue_name, directory, as_json, entry_id):
        """Show one message's record and header."""
        show(open_spool(config_path, queue_name, directory), entry_id, as_json)

    @queue.command("flush")
    @where
    @click.argument("entry_id", metavar="[ID]", required=False)
    def flush_command(config_path, queue_name, directory, entry_id):
        """Make one message (or every message) due for delivery now."""
        spool = open_spool(config_path, queue_name, directory)
        if entry_id is None:
            flush_all(spool)
        else:
            change(spool, entry_id, "flush")

    for action, doc in (("remove", "Delete a message from the queue (no DSN is sent)."),
                        ("hold", "Keep a message in the queue without delivering it."),
                        ("release", "Deliver a held message again, now.")):
        def command(config_path, queue_name, directory, entry_id, action=action):
            change(open_spool(config_path, queue_name, directory), entry_id, action)
        command.__doc__ = doc
        queue.command(action)(where(click.argument("entry_id", metavar="ID")(command)))

"""The ``gmta`` command (DESIGN §2).

Exit status 2 means a configuration error, so systemd's
``RestartPreventExitStatus=2`` does not restart-loop on a broken config.
"""

from __future__ import annotations

import sys

import click

from gmta import __version__

EXIT_CONFIG_ERROR = 2

config_option = click.option(
    "-c", "--config", "config_path", envvar="GMTA_CONFIG", show_envvar=True,
    default="/etc/gmta/gmta.conf", show_default=True, metavar="FILE",
    help="Configuration file.")


def _load(config_path: str):
    """Load the configuration or print its errors and exit 2."""
    # Imported here so ``gmta version`` and ``--help`` stay instant.
    import gmta.modules  # noqa: F401  (fills the module registry)
    from gmta.config.loader import load
    from gmta.errors import ConfigErrors

    try:
        config = load(config_path)
    except ConfigErrors as e:
        for error in e.errors:
            click.echo(str(error), err=True)
        sys.exit(EXIT_CONFIG_ERROR)
    for warning in config.warnings:
        click.echo(str(warning), err=True)
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """gmta, a mail transfer agent."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"gmta {__version__}")


@main.command("check-config")
@config_option
def check_config(config_path: str) -> None:
    """Check the configuration file and report every error with file:line."""
    _load(config_path)
    click.echo("No errors detected")


@main.command()
@config_option
@click.option("--worker-index", type=int, hidden=True,
              help="Set by the supervisor of 'workers N' for the processes it starts.")
def run(config_path: str, worker_index: int | None) -> None:
    """Run in the foreground until SIGTERM or SIGINT."""
    # Before anything opens sockets or starts threads: dnspython, smtplib-style
    # code and the threadpool must cooperate with the gevent hub.
    from gevent import config as gevent_config, monkey
    monkey.patch_all()
    # No spawning stack, parent and tree locals recorded on every Greenlet:
    # diagnostics gmta never reads, kept alive as long as each session (about
    # 0.8 KiB of every idle one; bench/README.md).
    gevent_config.track_greenlet_tree = False

    import gmta.log
    from gmta.daemon.process import serve

    config = _load(config_path)
    gmta.log.setup(config.globals.log, config.globals.debug)
    if worker_index is not None:
        from gmta.daemon.workers import WorkerRole
        try:
            role = WorkerRole.from_environment(worker_index)
        except LookupError as e:
            raise click.UsageError(str(e)) from None
        sys.exit(serve(config, role))
    if config.globals.workers > 1:
        from gmta.daemon.workers import supervise
        sys.exit(supervise(config))
    sys.exit(serve(config))


@main.command("route")
@config_option
@click.option("--endpoint", "endpoint", metavar="NAME",
              help="The endpoint (smtp, submission, lmtp, an address, or its full name) or "
                   "msgpipeline block whose rules to use. Default: the first smtp endpoint.")
@click.option("--from", "sender", default="", metavar="ADDR",
              help="The envelope sender (MAIL FROM). Default: the null sender <>.")
@click.argument("rcpts", nargs=-1, required=True, metavar="RCPT...")
def route(config_path: str, endpoint: str | None, sender: str, rcpts: tuple[str, ...]) -> None:
    """Show where mail to each RCPT would go, without sending anything.

    Exit status: 0 if every recipient would be accepted, 1 if any would be
    refused, 2 for a configuration error.
    """
    from gmta.errors import SMTPError
    from gmta.pipeline import route as impl

    config = _load(config_path)
    try:
        pipeline, description = impl.find_pipeline(config, endpoint)
        mail_from = impl.parse_sender(sender)
    except (LookupError, SMTPError) as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"pipeline: {description}")
    click.echo(f"sender: <{mail_from}>")
    refused = False
    for rcpt in rcpts:
        result = impl.route(pipeline, mail_from, rcpt)
        refused = refused or result.error is not None
        click.echo(impl.format_result(result))
    sys.exit(1 if refused else 0)


@main.command("sendmail", context_settings={
    "ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sendmail(args: tuple[str, ...]) -> None:
    """Submit a message read on stdin to the running gmta, as /usr/sbin/sendmail.

    Takes sendmail's flags (-t, -f ADDR, -F NAME, -i, -oi, -C FILE; other -o
    options are ignored), not gmta's: see docs/reference/cli.md. Exits 0 once
    gmta has the message on disk, 75 if it could not take it now.
    """
    import os

    from gmta import sendmail as impl
    sys.exit(impl.main(list(args), config_default=os.environ.get("GMTA_CONFIG")))


@main.group()
def creds() -> None:
    """Manage the users of an auth.pass_table (its table.file)."""


_table_option = click.option(
    "--table", "block", metavar="NAME",
    help="The auth.pass_table block to use, when the configuration has several.")
_password_option = click.option(
    "--password", metavar="PASSWORD",
    help="The password, for scripts; it is visible in the process list and shell history. "
         "Without it, the password is asked for twice.")


@creds.command("create")
@config_option
@_table_option
@_password_option
@click.argument("user")
def creds_create(config_path: str, block: str | None, password: str | None, user: str) -> None:
    """Add USER with a password; fails if USER exists."""
    from gmta import creds as impl
    impl.create(config_path, block, user, password)


@creds.command("password")
@config_option
@_table_option
@_password_option
@click.argument("user")
def creds_password(config_path: str, block: str | None, password: str | None, user: str) -> None:
    """Set a new password for USER; fails if USER does not exist."""
    from gmta import creds as impl
    impl.set_password(config_path, block, user, password)


@creds.command("remove")
@config_option
@_table_option
@click.argument("user")
def creds_remove(config_path: str, block: str | None, user: str) -> None:
    """Remove USER; fails if USER does not exist."""
    from gmta import creds as impl
    impl.remove(config_path, block, user)


@creds.command("list")
@config_option
@_table_option
def creds_list(config_path: str, block: str | None) -> None:
    """Print the users, one per line."""
    from gmta import creds as impl
    impl.list_users(config_path, block)


from gmta.queue.cli import register as _register_queue  # noqa: E402

_register_queue(main, config_option)


if __name__ == "__main__":  # pragma: no cover
    main()

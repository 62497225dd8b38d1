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
def run(config_path: str) -> None:
    """Run in the foreground until SIGTERM or SIGINT."""
    # Before anything opens sockets or starts threads: dnspython, smtplib-style
    # code and the threadpool must cooperate with the gevent hub.
    from gevent import monkey
    monkey.patch_all()

    import gmta.log
    from gmta.daemon.process import serve

    config = _load(config_path)
    gmta.log.setup(config.globals.log, config.globals.debug)
    sys.exit(serve(config))


if __name__ == "__main__":  # pragma: no cover
    main()

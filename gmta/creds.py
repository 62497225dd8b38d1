"""``gmta creds``: manage the users of an ``auth.pass_table`` (DESIGN §2).

The command configures only the ``auth.pass_table`` block it works on
(:func:`gmta.config.loader.load_block`): the rest of the configuration need
not be complete, and the daemon need not run. Edits go through the table's
``set``/``remove`` (``table.file``: locked, atomic); a running daemon sees
them at its next reload check (``reload_interval``, 15 s by default).

Exit status: 0 on success, 1 when the request cannot be done (the user exists,
does not exist, the table cannot be written), 2 for configuration errors.
"""

from __future__ import annotations

import sys

import click

EXIT_CONFIG_ERROR = 2


def open_pass_table(config_path: str, block: str | None):
    """The configured ``auth.pass_table`` block, or exit 2 printing the config errors."""
    import gmta.modules  # noqa: F401  (fills the module registry)
    from gmta.config.loader import load_block
    from gmta.errors import ConfigErrors

    try:
        return load_block(config_path, block, module="auth.pass_table")
    except ConfigErrors as e:
        for error in e.errors:
            click.echo(str(error), err=True)
        sys.exit(EXIT_CONFIG_ERROR)


def _username(user: str) -> str:
    from gmta.auth import normalize_username

    try:
        return normalize_username(user)
    except ValueError as e:
        raise click.ClickException(f"invalid user name {user!r}: {e}") from None


def read_password(password: str | None) -> str:
    """*password*, or one read twice from the terminal without echo."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("the password is empty")
    return password


def _run(action, refusals: dict | None = None):
    """Run *action*, turning the table's refusals into one-line errors (exit 1).

    *refusals* maps exception classes to the message to print for them.
    """
    from gmta.auth import CredentialsError
    from gmta.errors import ConfigError
    from gmta.table import TableError

    try:
        return action()
    except (TableError, CredentialsError, ConfigError, ValueError) as e:
        for cls, message in (refusals or {}).items():
            if isinstance(e, cls):
                raise click.ClickException(message) from None
        raise click.ClickException(str(e)) from None
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        raise click.ClickException(f"cannot update the table{where}: {e.strerror or e}") from None


def create(config_path: str, block: str | None, user: str, password: str | None) -> None:
    from gmta.table import KeyExistsError

    auth = open_pass_table(config_path, block)
    key = _username(user)
    exists = f"credentials for {key} already exist"
    # Checked before asking for the password, and again under the table's lock.
    if _run(lambda: auth.has_user(key)):
        raise click.ClickException(exists)
    password = read_password(password)
    _run(lambda: auth.create_user(key, password), {KeyExistsError: exists})


def set_password(config_path: str, block: str | None, user: str, password: str | None) -> None:
    from gmta.table import KeyNotFoundError

    auth = open_pass_table(config_path, block)
    key = _username(user)
    if not _run(lambda: auth.has_user(key)):
        raise click.ClickException(f"no credentials for {key}")
    password = read_password(password)
    _run(lambda: auth.set_password(key, password), {KeyNotFoundError: f"no credentials for {key}"})


def remove(config_path: str, block: str | None, user: str) -> None:
    from gmta.table import KeyNotFoundError

    auth = open_pass_table(config_path, block)
    key = _username(user)
    _run(lambda: auth.delete_user(key), {KeyNotFoundError: f"no credentials for {key}"})


def list_users(config_path: str, block: str | None) -> None:
    auth = open_pass_table(config_path, block)
    for user in sorted(_run(auth.list_users)):
        click.echo(user)

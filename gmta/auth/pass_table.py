"""``auth.pass_table``: user names and password hashes kept in a table (maddy's module).

The table maps each normalised user name to a self-describing hash string::

    alice@example.org: argon2id:v=19:m=19456:t=2:p=1:<salt>:<hash>

``argon2id`` hashes are Argon2id (RFC 9106) computed by ``cryptography``
(44 or later) or, where it is older (Debian 12 has 38), by ``argon2-cffi``;
the parameters are in the string, so a change of :data:`DEFAULT_PARAMS` only
affects new passwords. ``<salt>`` (16 bytes) and ``<hash>`` (32 bytes) are
standard base64 without padding. The fields are separated by colons, not by
the commas of the PHC string format, because a comma separates values in a
``table.file``.

maddy's own ``argon2:TIME:MEMORY:THREADS:<salt>:<hash>`` strings (also
Argon2id) are verified too. maddy's default ``bcrypt:`` hashes are not: no
library gmta depends on computes bcrypt. Such users are reported by
``check-config`` and cannot log in until their password is set again with
``gmta creds password``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from dataclasses import dataclass
from typing import ClassVar

import gmta.log
from gmta.auth import CredentialsError, normalize_username, temporary_failure
from gmta.config.module import Module, register
from gmta.config.parser import Node
from gmta.config.reader import Directive, ModuleRef
from gmta.durable import in_threadpool
from gmta.errors import SMTPError

log = gmta.log.get("auth.pass_table")

SCHEME = "argon2id"
ARGON2_VERSION = 19            # 0x13, the only version of RFC 9106
SALT_BYTES = 16
HASH_BYTES = 32
# Bounds of the parameters accepted from a stored hash, so a corrupt entry
# cannot make one login allocate gigabytes.
MAX_MEMORY_KIB = 4 * 1024 * 1024
MAX_ITERATIONS = 100
MAX_LANES = 255


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost parameters: memory in KiB, passes, lanes (RFC 9106 §3.1)."""

    memory_cost: int
    iterations: int
    lanes: int


#: OWASP's recommendation (Password Storage Cheat Sheet): 19 MiB, 2 passes, 1 lane.
#: About 40 ms per hash on a current x86 core. Stronger settings cost the hub
#: more while cryptography < 49 holds the GIL during the computation.
DEFAULT_PARAMS = Argon2Params(memory_cost=19456, iterations=2, lanes=1)


class HashError(ValueError):
    """A stored hash string that cannot be verified (malformed or unsupported scheme)."""


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise HashError("malformed base64 in the hash string") from None


def _argon2id(password: bytes, salt: bytes, params: Argon2Params, length: int) -> bytes:
    try:
        return _argon2id_cryptography(password, salt, params, length)
    except _Unavailable:
        return _argon2id_argon2_cffi(password, salt, params, length)


class _Unavailable(Exception):
    """This backend cannot compute Argon2id here."""


def _argon2id_cryptography(password: bytes, salt: bytes, params: Argon2Params,
                           length: int) -> bytes:
    # cryptography has Argon2id from 44 on, and only where its OpenSSL does;
    # Debian 12 ships 38, hence the argon2-cffi fallback (same RFC 9106 output).
    from cryptography.exceptions import UnsupportedAlgorithm
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    except ImportError:
        raise _Unavailable from None
    try:
        kdf = Argon2id(salt=salt, length=length, iterations=params.iterations,
                       lanes=params.lanes, memory_cost=params.memory_cost)
    except UnsupportedAlgorithm:
        raise _Unavailable from None
    return kdf.derive(password)


def _argon2id_argon2_cffi(password: bytes, salt: bytes, params: Argon2Params,
                          length: int) -> bytes:
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(password, salt, time_cost=params.iterations,
                           memory_cost=params.memory_cost, parallelism=params.lanes,
                           hash_len=length, type=Type.ID, version=ARGON2_VERSION)


def _encode_password(password: str | bytes) -> bytes:
    return password if isinstance(password, bytes) else password.encode("utf-8", "surrogateescape")


def hash_password(password: str | bytes, params: Argon2Params = DEFAULT_PARAMS) -> str:
    """The stored form of *password*: ``argon2id:v=19:m=M:t=T:p=P:<salt>:<hash>``. Blocking."""
    salt = os.urandom(SALT_BYTES)
    digest = _argon2id(_encode_password(password), salt, params, HASH_BYTES)
    return (f"{SCHEME}:v={ARGON2_VERSION}:m={params.memory_cost}:t={params.iterations}:"
            f"p={params.lanes}:{_b64encode(salt)}:{_b64encode(digest)}")


def parse_hash(stored: str) -> tuple[Argon2Params, bytes, bytes]:
    """(parameters, salt, hash) of a stored string; HashError if it cannot be verified."""
    scheme, colon, rest = stored.partition(":")
    if not colon:
        raise HashError("the stored value has no hash scheme (such as 'argon2id:')")
    if scheme == SCHEME:
        fields = rest.split(":")
        if len(fields) != 6:
            raise HashError("malformed argon2id hash: expected v=, m=, t=, p=, salt and hash")
        named = {}
        for field, name in zip(fields[:4], ("v", "m", "t", "p"), strict=True):
            key, eq, value = field.partition("=")
            if key != name or not eq:
                raise HashError(f"malformed argon2id hash: expected {name}= in {field!r}")
            named[name] = _number(value)
        if named["v"] != ARGON2_VERSION:
            raise HashError(f"unsupported Argon2 version {named['v']}")
        params = Argon2Params(named["m"], named["t"], named["p"])
        salt, digest = _b64decode(fields[4]), _b64decode(fields[5])
    elif scheme == "argon2":
        # maddy: argon2:TIME:MEMORY:THREADS:SALT:HASH, standard base64, a 64-byte key.
        fields = rest.split(":")
        if len(fields) != 5:
            raise HashError("malformed argon2 hash: expected TIME:MEMORY:THREADS:SALT:HASH")
        params = Argon2Params(_number(fields[1]), _number(fields[0]), _number(fields[2]))
        salt, digest = _b64decode(fields[3]), _b64decode(fields[4])
    elif scheme == "bcrypt":
        raise HashError("bcrypt hashes (maddy's default) cannot be verified by gmta; "
                        "set a new password with 'gmta creds password USER'")
    else:
        raise HashError(f"unsupported hash scheme {scheme!r}; "
                        "set a new password with 'gmta creds password USER'")
    if not (1 <= params.lanes <= MAX_LANES and 1 <= params.iterations <= MAX_ITERATIONS
            and 8 * params.lanes <= params.memory_cost <= MAX_MEMORY_KIB):
        raise HashError("Argon2 parameters out of range")
    if not 8 <= len(salt) <= 64 or not 16 <= len(digest) <= 128:
        raise HashError("Argon2 salt or hash of an unsupported length")
    return params, salt, digest


def _number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise HashError(f"malformed number {text!r} in the hash string")
    return int(text)


def verify_password(stored: str, password: str | bytes) -> bool:
    """Whether *password* matches *stored* (constant-time comparison). Blocking.

    Raises HashError when *stored* cannot be verified.
    """
    params, salt, digest = parse_hash(stored)
    computed = _argon2id(_encode_password(password), salt, params, len(digest))
    return hmac.compare_digest(computed, digest)


def check_password(stored: str | None, password: str | bytes, params: Argon2Params) -> bool:
    """:func:`verify_password`, or for an unknown user (*stored* None) the same work for nothing.

    Hashing for unknown users too keeps the reply time from telling which
    user names exist.
    """
    if stored is None:
        _argon2id(_encode_password(password), os.urandom(SALT_BYTES), params, HASH_BYTES)
        return False
    return verify_password(stored, password)


def argon2_available() -> bool:
    """Whether Argon2id can be computed: cryptography ≥ 44 on OpenSSL ≥ 3.2, or argon2-cffi."""
    try:
        _argon2id(b"", b"\0" * SALT_BYTES, Argon2Params(8, 1, 1), 16)
    except Exception:
        return False
    return True


def _shown(username: str) -> str:
    # Whatever the client sent, bounded: the log line stays one short line.
    return username if len(username) <= 256 else username[:256] + "..."


@register
class PassTable(Module):
    name = "auth.pass_table"
    kinds = frozenset({"auth"})
    # The inline form names a table module and its arguments: 'pass_table file PATH'.
    max_inline_args = 16
    directives = (
        Directive("table", ModuleRef("table"), doc="the table of user names and hashes"),
    )
    #: Argon2id cost of new hashes and of the dummy hash for unknown users.
    #: Tests make it small; production keeps DEFAULT_PARAMS.
    hash_params: ClassVar[Argon2Params] = DEFAULT_PARAMS

    def configure(self, cfg, ctx) -> None:
        if self.inline_args:
            if cfg.given("table"):
                raise cfg.error("table", "give the table either inline or with 'table', not both")
            node = Node("table", list(self.inline_args), None, self.node.file, self.node.line)
            self.table = ctx.instance_from_node(node, "table")
        elif cfg.table is not None:
            self.table = cfg.table
        else:
            raise self.node.error("missing required directive: table",
                                  hint="such as 'table file /etc/gmta/passwd'")
        if not argon2_available():
            raise self.node.error("auth.pass_table needs Argon2id, which neither this "
                                  "cryptography/OpenSSL nor argon2-cffi provides",
                                  hint="install argon2-cffi (Debian: python3-argon2), or "
                                       "cryptography 44 or newer with OpenSSL 3.2 or newer")
        self._warn_unusable(ctx)

    def _warn_unusable(self, ctx) -> None:
        """Warn (check-config) about users whose stored hash cannot be verified."""
        keys = getattr(self.table, "keys", None)
        if keys is None:
            return
        bad: list[str] = []
        for user in keys():
            try:
                parse_hash(self.table.lookup(user) or "")
            except HashError:
                bad.append(user)
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            ctx.warn(self.node, f"{len(bad)} user(s) of {self.instance_name} have a password hash "
                                f"gmta cannot verify (such as maddy's bcrypt) and cannot log in: "
                                f"{shown}; set their passwords with 'gmta creds password USER'")

    # -- authentication (on the hub) ----------------------------------------------------

    def authenticate(self, username: str, password: str | bytes, *,
                     session: str | None = None) -> bool:
        """Whether *password* is *username*'s; raises 454 4.7.0 on internal errors.

        The Argon2 computation runs in gevent's threadpool. Failures are logged as
        ``auth_failed`` with the user name and a reason, never the password.
        """
        try:
            key = normalize_username(username)
        except ValueError:
            log.info("auth_failed", session=session, username=_shown(username),
                     reason="invalid_username")
            return False
        shown = _shown(key)
        try:
            stored = self.table.lookup(key)
        except SMTPError:
            raise
        except Exception as e:
            log.error("auth_error", session=session, username=shown, auth=self.instance_name,
                      error=repr(e))
            raise temporary_failure() from None
        try:
            ok = in_threadpool(check_password, stored, password, self.hash_params)
        except HashError as e:
            log.error("auth_failed", session=session, username=shown, auth=self.instance_name,
                      reason="unusable_hash", error=str(e))
            return False
        except Exception as e:
            log.error("auth_error", session=session, username=shown, auth=self.instance_name,
                      error=repr(e))
            raise temporary_failure() from None
        if not ok:
            log.info("auth_failed", session=session, username=shown, auth=self.instance_name,
                     reason="unknown_user" if stored is None else "wrong_password")
            return False
        log.debug("authenticated", session=session, username=shown, auth=self.instance_name)
        return True

    # -- user management (gmta creds; blocking) ------------------------------------------

    def _editable_table(self):
        if not hasattr(self.table, "set") or not hasattr(self.table, "remove"):
            raise CredentialsError(f"the table of {self.instance_name} ({self.table.name}) "
                                   "cannot be edited; gmta creds edits table.file tables")
        return self.table

    def list_users(self) -> list[str]:
        if not hasattr(self.table, "keys"):
            raise CredentialsError(f"the table of {self.instance_name} ({self.table.name}) "
                                   "cannot list its entries")
        return list(self.table.keys())

    def has_user(self, username: str) -> bool:
        return self.table.lookup(normalize_username(username)) is not None

    def create_user(self, username: str, password: str) -> str:
        """Add *username*; KeyExistsError if it exists. Returns the stored (normalised) name."""
        key = normalize_username(username)
        table = self._editable_table()
        table.set(key, self._hash(password), replace=False)
        return key

    def set_password(self, username: str, password: str) -> str:
        """Replace *username*'s password; KeyNotFoundError if it does not exist."""
        key = normalize_username(username)
        table = self._editable_table()
        table.set(key, self._hash(password), create=False)
        return key

    def delete_user(self, username: str) -> str:
        """Remove *username*; KeyNotFoundError if it does not exist."""
        key = normalize_username(username)
        self._editable_table().remove(key)
        return key

    def _hash(self, password: str) -> str:
        if not password:
            raise CredentialsError("the password is empty")
        return hash_password(password, self.hash_params)

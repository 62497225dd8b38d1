"""``auth.pass_table``: hashes, configuration, authentication, logging, user management."""

from __future__ import annotations

import logging
import re

import pytest

import gmta.auth.pass_table as pt
import gmta.table.file  # noqa: F401  (registers table.file)
from gmta.auth import CredentialsError, normalize_username
from gmta.auth.pass_table import (DEFAULT_PARAMS, Argon2Params, HashError, PassTable,
                                  hash_password, parse_hash, verify_password)
from gmta.config import module as registry
from gmta.config.loader import Context, load_block
from gmta.config.parser import Parser
from gmta.errors import ConfigError, ConfigErrors, SMTPError
from gmta.table import KeyExistsError, KeyNotFoundError, Table

FAST = Argon2Params(memory_cost=8, iterations=1, lanes=1)
PASSWORD = "correct horse battery staple"
# maddy's own test vector (internal/auth/pass_table/table_test.go): password "password".
MADDY_ARGON2 = ("argon2:1:8:1:U0FBQUFBTFQ=:KHUshl3DcpHR3AoVd28ZeBGmZ1Fj1gwJgNn98Ia8DAvGHqI0BvFO"
                "MJPxtaAfO8F+qomm2O3h0P0yV50QGwXI/Q==")
MADDY_BCRYPT = "bcrypt:$2y$10$4tEJtJ6dApmhETg8tJ4WHOeMtmYXQwmHDKIyfg09Bw1F/smhLjlaa"


@pytest.fixture(autouse=True)
def fast_hashes(monkeypatch):
    monkeypatch.setattr(PassTable, "hash_params", FAST)


@pytest.fixture
def events():
    """Every log line of auth.pass_table, with its level."""
    lines: list[tuple[str, str]] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append((record.levelname, record.getMessage()))

    logger = logging.getLogger("gmta.auth.pass_table")
    handler = Collect()
    saved = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(saved)


def auth_from(tmp_path, directive: str, passwd: str | None = None):
    """The auth module a directive such as ``auth pass_table file passwd`` names."""
    if passwd is not None:
        (tmp_path / "passwd").write_text(passwd)
    ctx = Context(str(tmp_path / "gmta.conf"))
    ctx.state_dir = str(tmp_path)
    node = Parser().parse_text(directive + "\n", str(tmp_path / "gmta.conf"))[0]
    return ctx.instance_from_node(node, "auth"), ctx


def users(tmp_path, **entries: str) -> PassTable:
    text = "".join(f"{user}: {stored}\n" for user, stored in entries.items())
    auth, _ = auth_from(tmp_path, "auth pass_table file passwd", text)
    return auth


# -- hashes -----------------------------------------------------------------------------------

def test_hash_round_trip_and_format():
    stored = hash_password(PASSWORD, FAST)
    assert re.fullmatch(r"argon2id:v=19:m=8:t=1:p=1:[A-Za-z0-9+/]{22}:[A-Za-z0-9+/]{43}", stored)
    assert verify_password(stored, PASSWORD)
    assert verify_password(stored, PASSWORD.encode())
    assert not verify_password(stored, PASSWORD + " ")
    assert not verify_password(stored, "")
    # A fresh salt every time.
    assert hash_password(PASSWORD, FAST) != stored
    assert parse_hash(stored)[0] == FAST


def test_hash_has_no_comma_so_a_table_file_reads_it_as_one_value():
    assert "," not in hash_password(PASSWORD, FAST)


def test_non_ascii_password():
    stored = hash_password("pässwörd", FAST)
    assert verify_password(stored, "pässwörd")
    assert not verify_password(stored, "passwort")


def test_production_defaults_are_owasp_level():
    assert DEFAULT_PARAMS.memory_cost >= 19456
    assert DEFAULT_PARAMS.iterations >= 2
    assert DEFAULT_PARAMS.lanes >= 1
    assert pt.SALT_BYTES >= 16 and pt.HASH_BYTES >= 32


def test_default_parameters_are_used_for_new_hashes():
    # Not computed (slow on purpose): parse what the format would say.
    assert parse_hash(f"argon2id:v=19:m={DEFAULT_PARAMS.memory_cost}:t={DEFAULT_PARAMS.iterations}"
                      f":p={DEFAULT_PARAMS.lanes}:c2FsdHNhbHRzYWx0c2FsdA:"
                      + "A" * 43)[0] == DEFAULT_PARAMS


def test_maddy_argon2_hashes_are_verified():
    assert verify_password(MADDY_ARGON2, "password")
    assert not verify_password(MADDY_ARGON2, "different-password")


def test_maddy_bcrypt_hashes_are_refused_with_advice():
    with pytest.raises(HashError) as e:
        verify_password(MADDY_BCRYPT, "password")
    assert "bcrypt" in str(e.value) and "gmta creds password USER" in str(e.value)


@pytest.mark.parametrize("stored, message", [
    ("", "no hash scheme"),
    ("plain", "no hash scheme"),
    ("sha256:U0FMVA==:8PDRAgaUqaLSk34WpYniXjaBgGM93Lc6iF4pw2slthw=", "unsupported hash scheme 'sha256'"),
    ("argon2id:v=19:m=8:t=1:p=1:c2FsdHNhbHQ", "expected v=, m=, t=, p=, salt and hash"),
    ("argon2id:v=19:x=8:t=1:p=1:c2FsdHNhbHQ:aGFzaGhhc2hoYXNoaGFzaA", "expected m="),
    ("argon2id:v=19:m8:t=1:p=1:c2FsdHNhbHQ:aGFzaGhhc2hoYXNoaGFzaA", "expected m="),
    ("argon2id:v=16:m=8:t=1:p=1:c2FsdHNhbHQ:aGFzaGhhc2hoYXNoaGFzaA", "unsupported Argon2 version 16"),
    ("argon2id:v=19:m=-8:t=1:p=1:c2FsdHNhbHQ:aGFzaGhhc2hoYXNoaGFzaA", "malformed number"),
    ("argon2id:v=19:m=８:t=1:p=1:c2FsdHNhbHQ:aGFzaGhhc2hoYXNoaGFzaA", "malformed number"),
    ("argon2id:v=19:m=8:t=1:p=1:!!!!:aGFzaGhhc2hoYXNoaGFzaA", "malformed base64"),
    ("argon2id:v=19:m=8:t=0:p=1:c2FsdHNhbHQ:aGFzaGhhc2hoYXNoaGFzaA", "out of range"),
    ("argon2id:v=19:m=8:t=1:p=2:c2FsdHNhbHQ:aGFzaGhhc2hoYXNoaGFzaA", "out of range"),
    ("argon2id:v=19:m=99999999:t=1:p=1:c2FsdHNhbHQ:aGFzaGhhc2hoYXNoaGFzaA", "out of range"),
    ("argon2id:v=19:m=8:t=1:p=1:c2FsdA:aGFzaGhhc2hoYXNoaGFzaA", "unsupported length"),
    ("argon2id:v=19:m=8:t=1:p=1:c2FsdHNhbHQ:aGFzaA", "unsupported length"),
    ("argon2:1:8:1:U0FBQUFBTFQ=", "expected TIME:MEMORY:THREADS:SALT:HASH"),
])
def test_malformed_hashes(stored, message):
    with pytest.raises(HashError, match=re.escape(message)):
        verify_password(stored, "password")


def test_argon2_is_available_here():
    assert pt.argon2_available()


# -- user names -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, normal", [
    ("alice", "alice"),
    ("Alice@Example.ORG", "alice@example.org"),
    ("ALICE@XN--BCHER-KVA.EXAMPLE", "alice@bücher.example"),
    ("E\u0301ve", "\u00e9ve"),                    # NFC and lower case
    ("bob@", "bob@"),
    ("bob@bad..domain", "bob@bad..domain"),
])
def test_normalize_username(name, normal):
    assert normalize_username(name) == normal


@pytest.mark.parametrize("name", ["", "a b", "a\tb", "a\x00b", "a\u200bb", "a:b", "#a"])
def test_invalid_usernames(name):
    with pytest.raises(ValueError):
        normalize_username(name)


# -- configuration ------------------------------------------------------------------------------

def test_inline_form_names_a_table_module(tmp_path):
    auth, ctx = auth_from(tmp_path, "auth pass_table file passwd", "alice: x\n")
    assert isinstance(auth, PassTable) and auth.kinds == frozenset({"auth"})
    assert auth.table.name == "table.file" and auth.table.path == str(tmp_path / "passwd")


def test_table_directive(tmp_path):
    auth, _ = auth_from(tmp_path, "auth pass_table {\n    table file passwd\n}", "")
    assert auth.table.path == str(tmp_path / "passwd")


def test_top_level_block_with_a_table_reference(tmp_path):
    (tmp_path / "passwd").write_text(f"alice: {hash_password('pw', FAST)}\n")
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"state_dir {tmp_path}\n"
                    "table.file users {\n    file passwd\n}\n"
                    "auth.pass_table local_authdb {\n    table &users\n}\n")
    auth = load_block(str(conf), "local_authdb")
    assert auth.instance_name == "local_authdb" and auth.table.instance_name == "users"
    assert auth.authenticate("alice", "pw")


def test_table_both_inline_and_in_block_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        auth_from(tmp_path, "auth pass_table file a {\n    table file b\n}")
    assert e.value.line == 2 and "either inline or with 'table'" in e.value.message


def test_missing_table_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        auth_from(tmp_path, "auth pass_table { }")
    assert e.value.message == "missing required directive: table"


def test_unknown_table_module_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        auth_from(tmp_path, "auth pass_table sql_table sqlite3 x")
    assert "unknown table module: sql_table" in e.value.message


def test_no_argon2_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pt, "argon2_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        auth_from(tmp_path, "auth pass_table file passwd", "")
    assert "needs Argon2id" in e.value.message


def test_argon2_available_is_false_when_cryptography_refuses(monkeypatch):
    def refuse(*args):
        raise RuntimeError("unsupported")
    monkeypatch.setattr(pt, "_argon2id", refuse)
    assert pt.argon2_available() is False


def test_unverifiable_hashes_are_reported_by_check_config(tmp_path):
    passwd = "".join(f"u{i}: {MADDY_BCRYPT}\n" for i in range(7))
    passwd += f"ok: {MADDY_ARGON2}\nempty\n"
    auth, ctx = auth_from(tmp_path, "auth pass_table file passwd", passwd)
    assert [w.message for w in ctx.warnings] == [
        "warning: 8 user(s) of auth.pass_table have a password hash gmta cannot verify "
        "(such as maddy's bcrypt) and cannot log in: u0, u1, u2, u3, u4 and 3 more; "
        "set their passwords with 'gmta creds password USER'"]


# -- authentication ------------------------------------------------------------------------------

def test_authenticate(tmp_path, events):
    auth = users(tmp_path, **{"alice@example.org": hash_password(PASSWORD, FAST)})
    assert auth.authenticate("alice@example.org", PASSWORD, session="s1") is True
    assert auth.authenticate("Alice@EXAMPLE.org", PASSWORD) is True
    assert events[0] == ("DEBUG", "module=auth.pass_table event=authenticated session=s1 "
                                  "username=alice@example.org auth=auth.pass_table")


def test_wrong_password(tmp_path, events):
    auth = users(tmp_path, alice=hash_password(PASSWORD, FAST))
    assert auth.authenticate("alice", "guess", session="s2") is False
    assert events == [("INFO", "module=auth.pass_table event=auth_failed session=s2 "
                               "username=alice auth=auth.pass_table reason=wrong_password")]


def test_unknown_user_costs_a_hash_too(tmp_path, events, monkeypatch):
    auth = users(tmp_path, alice=hash_password(PASSWORD, FAST))
    derived = []
    real = pt._argon2id
    monkeypatch.setattr(pt, "_argon2id", lambda *a: derived.append(a[2]) or real(*a))
    assert auth.authenticate("mallory", PASSWORD) is False
    assert derived == [FAST]
    assert events == [("INFO", "module=auth.pass_table event=auth_failed username=mallory "
                               "auth=auth.pass_table reason=unknown_user")]


def test_invalid_and_long_usernames(tmp_path, events):
    auth = users(tmp_path)
    assert auth.authenticate("a b", PASSWORD) is False
    assert auth.authenticate("x" * 300, PASSWORD) is False
    assert events[0] == ("INFO", 'module=auth.pass_table event=auth_failed username="a b" '
                                 "reason=invalid_username")
    assert events[1][1].endswith("x" * 256 + "... auth=auth.pass_table reason=unknown_user")


def test_maddy_users_can_log_in(tmp_path):
    auth = users(tmp_path, **{"foxcpp": MADDY_ARGON2})
    assert auth.authenticate("FoxCpp", "password") is True


def test_unusable_hash_fails_and_is_logged_as_an_error(tmp_path, events):
    auth = users(tmp_path, bob=MADDY_BCRYPT)
    assert auth.authenticate("bob", "password") is False
    level, line = events[0]
    assert level == "ERROR"
    assert line.startswith("module=auth.pass_table event=auth_failed username=bob "
                           "auth=auth.pass_table reason=unusable_hash error=\"bcrypt hashes")


def test_password_is_never_logged(tmp_path, events):
    secret = "s3cret-Pa55"
    auth = users(tmp_path, alice=hash_password(PASSWORD, FAST), bob=MADDY_BCRYPT)
    for user in ("alice", "bob", "nobody", "bad name", "Alice"):
        auth.authenticate(user, secret)
    auth.authenticate("alice", PASSWORD)
    assert len(events) == 6
    assert not [line for _, line in events if secret in line or PASSWORD in line]


def test_hashing_runs_in_the_threadpool(tmp_path, monkeypatch):
    auth = users(tmp_path, alice=hash_password(PASSWORD, FAST))
    calls = []
    real = pt.in_threadpool

    def spy(fn, *args):
        calls.append((fn, args[0] is not None, args[2]))
        return real(fn, *args)
    monkeypatch.setattr(pt, "in_threadpool", spy)
    assert auth.authenticate("alice", PASSWORD)
    assert not auth.authenticate("nobody", PASSWORD)
    assert calls == [(pt.check_password, True, FAST), (pt.check_password, False, FAST)]


def test_threadpool_runs_the_hash_off_the_calling_thread(tmp_path, monkeypatch):
    import threading

    auth = users(tmp_path, alice=hash_password(PASSWORD, FAST))
    threads = []
    real = pt._argon2id
    monkeypatch.setattr(pt, "_argon2id",
                        lambda *a: threads.append(threading.get_ident()) or real(*a))
    assert auth.authenticate("alice", PASSWORD)
    assert threads and threads[0] != threading.get_ident()


def test_table_failure_is_a_temporary_error(tmp_path, events, monkeypatch):
    auth = users(tmp_path, alice=hash_password(PASSWORD, FAST))

    def broken(key):
        raise OSError(5, "I/O error")
    monkeypatch.setattr(auth.table, "lookup", broken)
    with pytest.raises(SMTPError) as e:
        auth.authenticate("alice", PASSWORD, session="s9")
    assert e.value == SMTPError(454, (4, 7, 0), "Temporary authentication failure")
    assert events == [("ERROR", "module=auth.pass_table event=auth_error session=s9 username=alice "
                                "auth=auth.pass_table error=\"OSError(5, 'I/O error')\"")]


def test_table_smtp_error_passes_through(tmp_path, monkeypatch):
    auth = users(tmp_path)
    error = SMTPError(451, (4, 3, 0), "Lookup failed")
    monkeypatch.setattr(auth.table, "lookup", lambda key: (_ for _ in ()).throw(error))
    with pytest.raises(SMTPError) as e:
        auth.authenticate("alice", PASSWORD)
    assert e.value is error


def test_hash_failure_is_a_temporary_error(tmp_path, events, monkeypatch):
    auth = users(tmp_path, alice=hash_password(PASSWORD, FAST))

    def no_memory(*args):
        raise MemoryError()
    monkeypatch.setattr(pt, "_argon2id", no_memory)
    with pytest.raises(SMTPError) as e:
        auth.authenticate("alice", PASSWORD)
    assert (e.value.code, e.value.enhanced) == (454, (4, 7, 0))
    assert events[0][0] == "ERROR" and "event=auth_error" in events[0][1]


# -- user management -----------------------------------------------------------------------------

def test_create_set_delete_list(tmp_path):
    auth = users(tmp_path)
    assert auth.create_user("Alice@Example.org", "pw1") == "alice@example.org"
    assert auth.list_users() == ["alice@example.org"]
    assert auth.has_user("ALICE@example.org")
    with pytest.raises(KeyExistsError):
        auth.create_user("alice@example.org", "pw2")
    assert auth.authenticate("alice@example.org", "pw1")
    auth.set_password("alice@example.org", "pw2")
    assert not auth.authenticate("alice@example.org", "pw1")
    assert auth.authenticate("alice@example.org", "pw2")
    with pytest.raises(KeyNotFoundError):
        auth.set_password("bob", "pw")
    auth.delete_user("alice@example.org")
    assert auth.list_users() == [] and not auth.has_user("alice@example.org")
    with pytest.raises(KeyNotFoundError):
        auth.delete_user("alice@example.org")
    stored = (tmp_path / "passwd").read_text()
    assert stored == ""


def test_new_hashes_use_hash_params(tmp_path):
    auth = users(tmp_path)
    auth.create_user("alice", "pw")
    assert (tmp_path / "passwd").read_text().startswith("alice: argon2id:v=19:m=8:t=1:p=1:")


def test_empty_password_is_refused(tmp_path):
    auth = users(tmp_path)
    with pytest.raises(CredentialsError, match="the password is empty"):
        auth.create_user("alice", "")


class ReadOnlyTable(Table):
    """A table that can neither be edited nor listed."""

    name = "table.ut_readonly"

    def lookup_multi(self, key):
        return []


@pytest.fixture
def readonly():
    registry.register(ReadOnlyTable)
    yield
    registry.unregister(ReadOnlyTable)


def test_table_that_cannot_be_edited(tmp_path, readonly):
    auth, _ = auth_from(tmp_path, "auth pass_table ut_readonly")
    assert auth.authenticate("alice", "pw") is False
    with pytest.raises(CredentialsError, match=r"\(table.ut_readonly\) cannot be edited"):
        auth.create_user("alice", "pw")
    with pytest.raises(CredentialsError, match="cannot list its entries"):
        auth.list_users()


def test_load_block_errors_are_config_errors(tmp_path):
    conf = tmp_path / "gmta.conf"
    conf.write_text("auth.pass_table a {\n    table\n}\n")
    with pytest.raises(ConfigErrors) as e:
        load_block(str(conf), "a")
    assert str(e.value.errors[0]).startswith(f"{conf}:2: table: expected a module name")


# -- Argon2id backends ---------------------------------------------------------------------------

def test_both_argon2id_backends_compute_the_same_hash():
    """cryptography (≥ 44) and argon2-cffi (Debian 12's fallback) are interchangeable."""
    pytest.importorskip("cryptography.hazmat.primitives.kdf.argon2")
    salt = bytes(range(16))
    for params in (FAST, pt.DEFAULT_PARAMS, pt.Argon2Params(64, 3, 2)):
        assert pt._argon2id_cryptography(b"pass word", salt, params, 32) == \
            pt._argon2id_argon2_cffi(b"pass word", salt, params, 32)


def test_argon2_cffi_is_used_when_cryptography_has_no_argon2id(monkeypatch):
    """As on Debian 12 (cryptography 38): hashing and verifying still work."""
    def no_argon2id(*args):
        raise pt._Unavailable
    monkeypatch.setattr(pt, "_argon2id_cryptography", no_argon2id)
    assert pt.argon2_available() is True
    stored = hash_password(PASSWORD, FAST)
    assert verify_password(stored, PASSWORD) and not verify_password(stored, "wrong")
    # maddy's argon2: hashes too (64-byte key, other parameters).
    assert verify_password(MADDY_ARGON2, "password")


"""target.remote without a network: configuration, the walk's final error, levels, headers."""

from __future__ import annotations

import pytest

import gmta.modules  # noqa: F401  (fills the registry)
from gmta.config.loader import load_block
from gmta.errors import ConfigErrors, SMTPError
from gmta.net.client import ConnectionFailed
from gmta.target.mxwalk import Failure, walk_error
from gmta.delivery import tls_required_no
from gmta.target.security import NO_POLICY, MXLevel, TLSLevel, parse_level


def load(tmp_path, body: str = "", extra_globals: str = ""):
    config = tmp_path / "remote.conf"
    config.write_text(f"hostname mx.gmta.test\nstate_dir {tmp_path}\n{extra_globals}\n"
                      f"target.remote out {{\n{body}\n}}\n")
    return load_block(str(config), "out")


def test_defaults(tmp_path):
    target = load(tmp_path)
    assert (target.hostname, target.smtp_port, target.local_ip, target.force_ipv4) == \
        ("mx.gmta.test", 25, None, False)
    assert (target.connect_timeout, target.command_timeout, target.submission_timeout) == \
        (300.0, 300.0, 720.0)
    assert (target.conn_reuse_limit, target.conn_max_idle_count, target.conn_max_idle_time) == \
        (10, 10, 150.0)
    assert target.requiretls_override and target.relaxed_requiretls
    assert target.policy is NO_POLICY


def test_every_directive(tmp_path):
    target = load(tmp_path, """
    hostname out.gmta.test
    local_ip 127.0.0.9
    force_ipv4 yes
    connect_timeout 3s
    command_timeout 4s
    submission_timeout 1m
    debug yes
    requiretls_override no
    relaxed_requiretls no
    conn_reuse_limit 2
    conn_max_idle_count 0
    conn_max_idle_time 2m30s
    smtp_port 2525
    mx_auth { }
    limits { destination concurrency 3 }
""")
    assert (target.hostname, target.local_ip, target.force_ipv4) == \
        ("out.gmta.test", "127.0.0.9", True)
    assert (target.connect_timeout, target.command_timeout, target.submission_timeout) == \
        (3.0, 4.0, 60.0)
    assert not target.requiretls_override and not target.relaxed_requiretls
    assert (target.conn_reuse_limit, target.conn_max_idle_count, target.conn_max_idle_time,
            target.smtp_port) == (2, 0, 150.0, 2525)
    assert target.limits.has_scope("destination")


def test_idle_time_as_maddy_integer(tmp_path):
    assert load(tmp_path, "conn_max_idle_time 45").conn_max_idle_time == 45.0


@pytest.mark.parametrize("body, words", [
    ("local_ip mx.example", "not an IP address"),
    ("smtp_port 0", "smtp_port"),
    ("conn_reuse_limit 0", "conn_reuse_limit"),
    ("conn_max_idle_time 0", "must be positive"),
])
def test_bad_values(tmp_path, body, words):
    with pytest.raises(ConfigErrors) as errors:
        load(tmp_path, body)
    assert words in str(errors.value)


def test_legacy_name_remote(tmp_path):
    config = tmp_path / "legacy.conf"
    config.write_text(f"hostname mx.gmta.test\nstate_dir {tmp_path}\nremote out {{\n}}\n")
    assert load_block(str(config), "out").name == "target.remote"


def refused(text="Connection to x failed: Connection refused"):
    return ConnectionFailed("connect", 451, (4, 4, 1), text)


def test_walk_error_temporary_when_any_failure_was():
    failures = [Failure("mx1.test", "127.0.0.2", refused(), "refused"),
                Failure("mx2.test", None, SMTPError(550, (5, 7, 0), "policy says no"), "policy")]
    error = walk_error("example.test", failures)
    # The last failure's detail, in the temporary class (RFC 3463 §2, maddy #843).
    assert (error.code, error.enhanced) == (451, (4, 7, 0))
    assert error.text.startswith("No usable MX for example.test: mx1.test [127.0.0.2]: 451 4.4.1")
    assert "mx2.test: 550 5.7.0 policy says no" in error.text
    assert error.misc == {"failure": "policy", "kinds": "policy,refused"}


def test_walk_error_permanent_greeting_wins():
    greeting = ConnectionFailed("greeting", 554, (5, 7, 1), "Go away")
    error = walk_error("example.test", [Failure("mx1.test", "127.0.0.2", refused(), "refused"),
                                        Failure("mx2.test", "127.0.0.3", greeting, "reply")])
    assert (error.code, error.enhanced) == (554, (5, 7, 1))


def test_walk_error_text_is_bounded():
    failures = [Failure(f"mx{n}.test", "127.0.0.2", refused(), "refused") for n in range(10)]
    error = walk_error("example.test", failures)
    assert "6 earlier failure(s)" in error.text and error.text.count("mx") == 4


def test_tls_required_header():
    assert tls_required_no(b"Subject: x\r\nTLS-Required: No\r\n\r\n")
    assert tls_required_no(b"tls-required:no\r\n\r\n")
    assert not tls_required_no(b"X-TLS-Required: No\r\n\r\n")
    assert not tls_required_no(b"TLS-Required: Nope\r\n\r\n")


def test_levels_order_and_names():
    assert MXLevel.NONE < MXLevel.MTASTS < MXLevel.DNSSEC
    assert TLSLevel.NONE < TLSLevel.ENCRYPTED < TLSLevel.AUTHENTICATED
    assert parse_level(TLSLevel, "encrypted") is TLSLevel.ENCRYPTED
    assert str(MXLevel.MTASTS) == "mtasts"
    with pytest.raises(ValueError):
        parse_level(MXLevel, "strong")

"""The ``tls`` and ``tls_client`` directives (maddy-behaviour §1.4, DESIGN §1.3)."""

from __future__ import annotations

import pytest

from gmta.config.loader import Context
from gmta.config.parser import parse_text
from gmta.config.tls import (TLSClientConfig, TLSProtocolSettings, TLSServerConfig, parse_client_tls,
                             parse_server_tls)
from gmta.errors import ConfigError


@pytest.fixture
def ctx(pem):
    c = Context(str(pem / "gmta.conf"))
    c.state_dir = str(pem)                      # relative certificate paths are under it
    return c


def node(text):
    return parse_text(text, "t.conf", environ={})[0]


def server(text, ctx):
    return parse_server_tls(node(text), ctx)


def client(text, ctx):
    return parse_client_tls(node(text), ctx)


def error(fn, text, ctx) -> str:
    with pytest.raises(ConfigError) as e:
        fn(node(text), ctx)
    return str(e.value)


# -- server ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, mode", [
    ("tls off", "off"),
    ("tls OFF", "off"),
    ("tls self_signed", "self_signed"),
    ("tls {\n  loader self_signed\n}", "self_signed"),
    ("tls {\n  loader off\n}", "off"),
])
def test_server_modes_without_files(text, mode, ctx):
    cfg = server(text, ctx)
    assert cfg == TLSServerConfig(mode)
    assert cfg.enabled is (mode != "off")


@pytest.mark.parametrize("text", [
    "tls cert.pem key.pem",                  # maddy's older form
    "tls file cert.pem key.pem",             # the current form
    "tls FILE cert.pem key.pem",
    "tls {\n  loader file cert.pem key.pem\n}",
])
def test_server_certificate_forms(text, ctx, pem):
    cfg = server(text, ctx)
    assert cfg == TLSServerConfig("file", ((str(pem / "cert.pem"), str(pem / "key.pem")),))
    assert cfg.enabled


def test_server_several_pairs_and_absolute_paths(ctx, pem):
    cfg = server(f"tls file cert.pem key.pem {pem}/cert.pem {pem}/key.pem", ctx)
    assert cfg.pairs == ((str(pem / "cert.pem"), str(pem / "key.pem")),) * 2


def test_server_protocol_settings(ctx):
    cfg = server("tls file cert.pem key.pem {\n  protocols tls1.2 TLS1.3\n"
                 "  ciphers ECDHE-RSA-AES128-GCM-SHA256 ECDHE-ECDSA-AES128-GCM-SHA256\n"
                 "  curves X25519 prime256v1\n}", ctx)
    assert cfg.settings == TLSProtocolSettings(
        "tls1.2", "tls1.3", ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
        ("X25519", "prime256v1"))


def test_single_protocol_is_both_bounds(ctx):
    cfg = server("tls {\n  loader self_signed\n  protocols tls1.3\n}", ctx)
    assert (cfg.settings.min_version, cfg.settings.max_version) == ("tls1.3", "tls1.3")


@pytest.mark.parametrize("text, message", [
    ("tls", "t.conf:1: tls: expected 'off', 'self_signed', 'CERT KEY' or 'file CERT KEY...'"),
    ("tls {\n}", "t.conf:1: tls: expected 'off'"),
    ("tls {\n  protocols tls1.2\n}", "t.conf:1: tls: expected 'off'"),
    ("tls off now", "t.conf:1: tls off takes no further arguments"),
    ("tls self_signed x", "t.conf:1: tls self_signed takes no further arguments"),
    ("tls {\n  loader off x\n}", "t.conf:2: tls off takes no further arguments"),
    ("tls file", "t.conf:1: tls: expected certificate and key paths in pairs"),
    ("tls file cert.pem", "t.conf:1: tls: expected certificate and key paths in pairs"),
    ("tls cert.pem key.pem cert.pem", "t.conf:1: tls: expected certificate and key paths in pairs"),
    ("tls {\n  loader file cert.pem\n}", "t.conf:2: tls: expected certificate and key paths"),
    ("tls cert.pem key.pem {\n  loader off\n}",
     "t.conf:1: tls: give the certificate either as arguments or with 'loader', not both"),
    ("tls {\n  loader off\n  bogus 1\n}", "t.conf:3: unexpected directive: bogus"),
    ("tls {\n  loader off\n  protocols tls1.3 tls1.2\n}",
     "t.conf:3: protocols: the range tls1.3 tls1.2 is empty"),
    ("tls {\n  loader off\n  protocols ssl3\n}", "t.conf:3: protocols: unknown protocol 'ssl3'"),
    ("tls {\n  loader off\n  protocols tls1.0 tls1.1 tls1.2\n}",
     "t.conf:3: protocols: expected a protocol range"),
])
def test_server_errors(text, message, ctx):
    assert error(parse_server_tls, text, ctx).startswith(message)


@pytest.mark.parametrize("cert, key, message", [
    ("absent.pem", "key.pem", "cannot read certificate {d}/absent.pem: No such file or directory"),
    ("cert.pem", "absent.pem", "cannot read private key {d}/absent.pem: No such file or directory"),
    ("junk.pem", "key.pem", "{d}/junk.pem does not contain a PEM certificate"),
    ("cert.der", "key.pem", "{d}/cert.der does not contain a PEM certificate"),
    ("cert.pem", "junk.pem", "{d}/junk.pem does not contain a PEM private key"),
    ("cert.pem", "cert.pem", "{d}/cert.pem does not contain a PEM private key"),
    ("key.pem", "key.pem", "{d}/key.pem does not contain a PEM certificate"),
])
def test_server_certificate_files_are_checked(cert, key, message, ctx, pem):
    text = f"x\ntls file {cert} {key}"
    with pytest.raises(ConfigError) as e:
        parse_server_tls(parse_text(text, "t.conf", environ={})[1], ctx)
    assert str(e.value) == "t.conf:2: " + message.format(d=pem)


def test_server_file_that_is_a_directory(ctx, pem):
    assert error(parse_server_tls, f"tls {pem} key.pem", ctx).startswith(
        f"t.conf:1: cannot read certificate {pem}: ")


# -- client ---------------------------------------------------------------------------

def test_client_empty(ctx):
    assert client("tls_client", ctx) == TLSClientConfig()
    assert client("tls_client {\n}", ctx) == TLSClientConfig()


def test_client_everything(ctx, pem):
    cfg = client(f"tls_client {{\n  root_ca cert.pem {pem}/cert.pem\n"
                 "  cert cert.pem\n  key key.pem\n  protocols tls1.2 tls1.3\n"
                 "  ciphers A B\n  curves X25519\n}", ctx)
    assert cfg == TLSClientConfig(
        (str(pem / "cert.pem"), str(pem / "cert.pem")),
        str(pem / "cert.pem"), str(pem / "key.pem"),
        TLSProtocolSettings("tls1.2", "tls1.3", ("A", "B"), ("X25519",)))


@pytest.mark.parametrize("text, message", [
    ("tls_client x", "t.conf:1: tls_client takes a block, not arguments"),
    ("tls_client {\n  cert cert.pem\n}", "t.conf:2: tls_client: cert and key must be given together"),
    ("tls_client {\n  key key.pem\n}", "t.conf:2: tls_client: cert and key must be given together"),
    ("tls_client {\n  cert cert.pem cert.pem\n  key key.pem\n}", "t.conf:2: cert: expected one path"),
    ("tls_client {\n  cert cert.pem\n  key key.pem key.pem\n}", "t.conf:3: key: expected one path"),
    ("tls_client {\n  root_ca junk.pem\n}",
     "t.conf:2: {d}/junk.pem does not contain a PEM CA certificate"),
    ("tls_client {\n  root_ca absent.pem\n}", "t.conf:2: cannot read CA certificate {d}/absent.pem"),
    ("tls_client {\n  cert key.pem\n  key key.pem\n}",
     "t.conf:2: {d}/key.pem does not contain a PEM certificate"),
    ("tls_client {\n  cert cert.pem\n  key cert.pem\n}",
     "t.conf:3: {d}/cert.pem does not contain a PEM private key"),
    ("tls_client {\n  protocols tls2\n}", "t.conf:2: protocols: unknown protocol 'tls2'"),
    ("tls_client {\n  root_ca cert.pem\n  root_ca cert.pem\n}", "t.conf:3: duplicate directive: root_ca"),
    ("tls_client {\n  verify no\n}", "t.conf:2: unexpected directive: verify"),
])
def test_client_errors(text, message, ctx, pem):
    assert error(parse_client_tls, text, ctx).startswith(message.format(d=pem))


def test_tls_reference_is_refused_with_advice():
    from gmta.config.loader import Context
    from gmta.config.parser import parse_text
    from gmta.config.tls import parse_server_tls
    from gmta.errors import ConfigError

    [node] = parse_text("tls &shared_tls\n", "t.conf")
    with pytest.raises(ConfigError) as refused:
        parse_server_tls(node, Context("t.conf"))
    assert str(refused.value).startswith("t.conf:1: tls: references to tls blocks are not supported")

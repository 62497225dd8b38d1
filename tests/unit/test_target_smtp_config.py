"""target.smtp / target.lmtp configuration: defaults, synonyms and refused combinations."""

from __future__ import annotations

import pytest

import gmta.modules  # noqa: F401  (fills the module registry)
from gmta.config.loader import load_block
from gmta.errors import ConfigErrors


def load(tmp_path, block: str):
    config = tmp_path / "gmta.conf"
    config.write_text(f"hostname mx.example.org\nstate_dir {tmp_path}\n{block}\n")
    return load_block(str(config), "out")


def test_defaults(tmp_path):
    smtp = load(tmp_path, "target.smtp out {\n targets tcp://127.0.0.1:2525\n}")
    assert (smtp.attempt_starttls, smtp.require_tls, smtp.auth_mode) == (True, False, "off")
    assert (smtp.connect_timeout, smtp.command_timeout, smtp.submission_timeout) == (
        300.0, 300.0, 720.0)
    assert smtp.hostname == "mx.example.org"
    lmtp = load(tmp_path, "target.lmtp out {\n targets unix:///run/dovecot/lmtp\n}")
    assert lmtp.lmtp and not lmtp.attempt_starttls


def test_maddy_head_starttls_means_mandatory(tmp_path):
    smtp = load(tmp_path, "target.smtp out {\n targets tcp://127.0.0.1:25\n starttls yes\n}")
    assert smtp.attempt_starttls and smtp.require_tls


@pytest.mark.parametrize("block, message", [
    ("target.smtp out {\n}", "missing required directive: targets"),
    ("target.smtp out {\n targets tcp://a:1\n target tcp://b:1\n}", "either targets or target"),
    ("target.smtp out {\n targets tcp://a:1\n starttls yes\n attempt_starttls no\n}",
     "either starttls or attempt_starttls"),
    ("target.smtp out {\n targets tcp://a:1\n auth external\n}", "needs a client certificate"),
    ("target.smtp out {\n targets tcp://a:1\n auth plain onlyuser\n}", "username and a password"),
    ("target.smtp out {\n targets tcp://a:1\n auth kerberos\n}", "unknown method"),
    ("target.lmtp out {\n targets unix://x.sock\n require_tls yes\n}", "unix:// targets"),
    ("target.smtp out {\n targets smtp://a:1\n}", "unsupported scheme"),
])
def test_refused(tmp_path, block, message):
    with pytest.raises(ConfigErrors) as raised:
        load(tmp_path, block)
    assert message in str(raised.value)

"""Fixtures for the whole test suite."""

from __future__ import annotations

import pytest

import gmta.net.dns


@pytest.fixture(autouse=True)
def no_system_resolver(tmp_path_factory, monkeypatch):
    """No test may ask the machine's own resolver (it has no outside network).

    A resolver without ``dns_servers`` reads this file instead of
    /etc/resolv.conf: it does not exist, so such a lookup fails at once as
    "no DNS server configured" and sends nothing anywhere.
    """
    monkeypatch.setattr(gmta.net.dns, "RESOLV_CONF",
                        str(tmp_path_factory.getbasetemp() / "no-resolv.conf"))

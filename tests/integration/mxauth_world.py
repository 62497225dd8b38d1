"""One test world for the mx_auth policies: signed DNS, unbound, a test CA, an HTTPS server.

``world.zone()``/``sign()`` describe DNS, ``world.start()`` starts knotd and
unbound, ``world.policies("mtasts { cache ram }")`` loads an ``mx_auth`` block
through the real configuration loader with ``dns_servers`` pointing at
unbound and ``tls_client`` trusting the test CA.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gmta.config import module as registry
from gmta.config.loader import load_text
from gmta.config.module import Module
from gmta.mxauth import MX_AUTH_DIRECTIVE, PolicySet, policies_of
from tests.integration.policyserver import PolicyServer
from tests.integration.testca import issue, write_ca, write_chain

POLICY_SERVER_ADDRESS = "127.0.0.80"


class MXAuthUser(Module):
    """A throw-away endpoint that declares the directive target.remote will declare."""

    name = "ut.mx_auth_user"
    endpoint = True
    directives = (MX_AUTH_DIRECTIVE,)

    def configure(self, cfg, ctx):
        self.policies = policies_of(cfg.mx_auth)


class World:
    def __init__(self, tmp_path: Path, dns, start_resolver):
        self.tmp = tmp_path
        self.dns = dns
        self._start_resolver = start_resolver
        self.resolver = None
        self.ca = issue("gmta test CA", ca=True)
        self.ca_path = write_ca(tmp_path / "pki", "ca", self.ca)
        self.state_dir = tmp_path / "state"
        self.state_dir.mkdir()
        self.policy_server: PolicyServer | None = None

    def zone(self, origin: str, records: list[str], *, signed: bool = True) -> None:
        self.dns.zone(origin, records, signed=signed)

    def start(self) -> "World":
        self.dns.start()
        self.resolver = self._start_resolver(self.dns)
        return self

    def reload(self) -> None:
        self.dns.reload()

    def serve_policies(self, *domains: str) -> PolicyServer:
        """The HTTPS server, with a certificate from the test CA for mta-sts.<domain>..."""
        names = tuple(f"mta-sts.{d}" for d in domains)
        leaf = issue(names[0], issuer=self.ca, sans=names)
        cert, key = write_chain(self.tmp / "pki", "policy-server", leaf)
        self.policy_server = PolicyServer(self.tmp / "www", cert, key,
                                          POLICY_SERVER_ADDRESS).start()
        return self.policy_server

    def config(self, body: str) -> str:
        return (f"state_dir {self.state_dir}\ndns_servers {self.resolver.directive}\n"
                f"tls_client {{\n  root_ca {self.ca_path}\n}}\n"
                f"ut.mx_auth_user {{\n  mx_auth {{\n{body}\n  }}\n}}\n")

    def policies(self, body: str) -> PolicySet:
        """The policies of *body*; an ``mtasts`` policy is given the policy server's port."""
        if self.policy_server is not None:
            port = f"https_port {self.policy_server.port}"
            body = re.sub(r"^(\s*)mtasts\s*\{", rf"\1mtasts {{\n    {port}\n", body, flags=re.M)
            body = re.sub(r"^(\s*)mtasts\s*$", rf"\1mtasts {{ {port} }}", body, flags=re.M)
        return load_text(self.config(body), "t.conf").endpoints[0].policies

    def stop(self) -> None:
        if self.policy_server is not None:
            self.policy_server.stop()


@pytest.fixture
def world(tmp_path, signed_dns, signed_zone_resolver):
    registry.register(MXAuthUser)
    made = World(tmp_path, signed_dns, signed_zone_resolver)
    yield made
    made.stop()
    registry.unregister(MXAuthUser)

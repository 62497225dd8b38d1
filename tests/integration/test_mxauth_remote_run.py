"""mx_auth through the real ``gmta run``: target.queue → target.remote → TLS-capable MX hosts.

One signed world per module (and per xdist worker): knotd signing the test
zones, unbound validating them (gmta's ``dns_servers``), the HTTPS policy
server (policyserver.py) with a certificate from the test CA, and an *MX
farm*: one ``gmta run`` whose smtp endpoints listen on 127.0.0.11–16 with one
port (target.remote's ``smtp_port``), each with its own certificate and
Maildir tree, so a test sees which MX host got a message:

======  ==========================================  =====================================
name    address                                     TLS
======  ==========================================  =====================================
ca      127.0.0.11 (``mx1.*``), 127.0.0.12 (mx2)    a certificate from the test CA for all
                                                    the CA-trusted MX names
ee      127.0.0.13                                  self-signed (DANE-EE only)
ta      127.0.0.14                                  leaf ← intermediate ← a DANE root
                                                    (DANE-TA only), chain sent
plain   127.0.0.15                                  none (no STARTTLS)
tls13   127.0.0.16                                  the CA certificate, TLS 1.3 only
======  ==========================================  =====================================

and, started by the first test that needs it, a private Postfix (postfixmx.py)
on 127.0.0.19 with the same port and the CA certificate: a TLS MX that never
offers REQUIRETLS (Debian's Postfix 3.7 has none), for R15's strict case.

Senders are ``gmta run`` processes with an smtp endpoint in front of a queue
(retries an hour apart: only ``gmta queue flush`` retries) whose target is
target.remote with the ``mx_auth`` block under test; a sender is started once
per configuration and module. Every recipient address is used once, so tests
share senders without seeing each other's mail.

maddy-behaviour §3.5 R13–R16, plus an enforce policy (MTA-STS, and a
STARTTLS Everywhere list) excluding the first MX, a policy id change, an
expired cached policy, a bogus zone, DANE-TA with a chain, DANE-EE 3 1 1, and
a TLSA mismatch deferring until the zone is fixed.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import re
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import GMTA, GmtaProcess
from tests.integration.dnssec import ValidatingResolver
from tests.integration.dnsserver import AuthoritativeDNS
from tests.integration.policyserver import PolicyServer
from tests.integration.postfixmx import PostfixMX
from tests.integration.testca import issue, tlsa, write_ca, write_chain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POLICY_SERVER = "127.0.0.80"
FARM = {"mx1": "127.0.0.11", "mx2": "127.0.0.12", "ee": "127.0.0.13", "ta": "127.0.0.14",
        "plain": "127.0.0.15", "tls13": "127.0.0.16"}
#: The private Postfix MX (module docstring): TLS, no REQUIRETLS.
POSTFIX_MX = "127.0.0.19"
#: Seconds a test waits for one message's outcome in a sender's log.
OUTCOME_TIMEOUT = 30.0


def sts_policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    return f"version: STSv1\nmode: {mode}\nmax_age: {max_age}\n" + \
        "".join(f"mx: {m}\n" for m in mx)


def two_mx(domain: str, *extra: str) -> list[str]:
    """mx1 (preference 5, tried first) and mx2 (10), both with the CA certificate."""
    return ["@ MX 5 mx1", "@ MX 10 mx2", f"mx1 A {FARM['mx1']}", f"mx2 A {FARM['mx2']}", *extra]


def one_mx(farm_host: str, *extra: str) -> list[str]:
    return ["@ MX 10 mx", f"mx A {FARM[farm_host]}", *extra]


def sts_records(policy_id: str) -> list[str]:
    return [f'_mta-sts TXT "v=STSv1; id={policy_id};"', f"mta-sts A {POLICY_SERVER}"]


class World:
    """The module's DNS, policy server, MX farm and senders (module docstring)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.ca = issue("gmta test CA", ca=True)
        self.ca_path = write_ca(tmp / "pki", "ca", self.ca)
        self.ee = issue("mx.ee.test")   # self-signed: PKIX fails, DANE-EE does not care
        self.dane_root = issue("DANE root", ca=True)
        self.dane_intermediate = issue("DANE intermediate", issuer=self.dane_root, ca=True)
        self.ta_leaf = issue("mx.ta.test", issuer=self.dane_intermediate)
        self.other = issue("not the MX")   # a key no MX has: TLSA records that cannot match
        self.dns = AuthoritativeDNS(tmp / "dns", signed=True)
        self.resolver: ValidatingResolver | None = None
        self.policy_server: PolicyServer | None = None
        self.farm: GmtaProcess | None = None
        self.farm_ca_chain: tuple[Path, Path] | None = None
        self._postfix: PostfixMX | None = None
        self.port = 0
        self.senders: dict[tuple[str, str], GmtaProcess] = {}
        self._unsigned: set[str] = set()

    # -- DNS ---------------------------------------------------------------------------------

    def zones(self) -> None:
        w = self
        # R13 and the MTA-STS cache: unsigned zones (the MX level comes from MTA-STS alone).
        for domain, records in {
            "testing.test": two_mx("testing.test", *sts_records("1")),
            "enforce.test": two_mx("enforce.test", *sts_records("1")),
            "notlisted.test": two_mx("notlisted.test", *sts_records("1")),
            "stsplain.test": one_mx("plain", *sts_records("1")),
            "stsuntrusted.test": one_mx("ee", *sts_records("1")),
            "nosts.test": two_mx("nosts.test"),
            "preload.test": two_mx("preload.test"),
            "rotate.test": two_mx("rotate.test", *sts_records("1")),
            "expire.test": two_mx("expire.test", *sts_records("1")),
            "rt.test": two_mx("rt.test", *sts_records("1")),
            "rtplain.test": one_mx("plain", *sts_records("1")),
            "rttls12.test": ["@ MX 10 mx1", f"mx1 A {FARM['tls13']}", *sts_records("1")],
            "rtpostfix.test": ["@ MX 10 mx", f"mx A {POSTFIX_MX}", *sts_records("1")],
            "plain.test": one_mx("mx1"),
            "unsigned.test": one_mx("ee", f"_25._tcp.mx {tlsa(3, 1, 1, w.other)}"),
        }.items():
            self.dns.zone(domain, records, signed=False)
        # R14, R16: signed zones.
        self.dns.zone("signed.test", one_mx("mx1"))
        self.dns.zone("ee.test", one_mx("ee", f"_25._tcp.mx {tlsa(3, 1, 1, w.ee)}"))
        self.dns.zone("ta.test", one_mx("ta", f"_25._tcp.mx {tlsa(2, 0, 1, w.dane_intermediate)}"))
        self.dns.zone("fixme.test", self.fixme_records(w.other))
        self.dns.zone("cname.test", ["@ MX 10 mx", "mx CNAME real", f"real A {FARM['ee']}",
                                 f"_25._tcp.real {tlsa(3, 1, 1, w.ee)}"])
        self.dns.zone("nostarttls.test", one_mx("plain", f"_25._tcp.mx {tlsa(3, 1, 1, w.ee)}"))
        self.dns.zone("tls12.test", ["@ MX 10 mx", f"mx A {FARM['tls13']}",
                                 f"_25._tcp.mx {tlsa(3, 1, 1, w.ee)}"])
        # The TLSA name is a CNAME into the bogus zone: A is fine, TLSA fails.
        self.dns.zone("tlsafail.test", one_mx("ee", "_25._tcp.mx CNAME _25._tcp.mx.bogus.test."))
        self.dns.zone("bogus.test", one_mx("ee", f"_25._tcp.mx {tlsa(3, 1, 1, w.ee)}"))
        self.dns.bogus("bogus.test")

    @staticmethod
    def fixme_records(tlsa_for) -> list[str]:
        return one_mx("ee", f"_25._tcp.mx {tlsa(3, 1, 1, tlsa_for)}")

    def ca_names(self) -> tuple[str, ...]:
        """Every MX name that points at a farm host with the CA certificate."""
        return tuple(sorted({f"{label}.{d}" for d in self.dns._zones
                             for label in ("mx", "mx1", "mx2")}))

    # -- processes ---------------------------------------------------------------------------

    def start(self) -> "World":
        self.zones()
        self.dns.start()
        self.resolver = ValidatingResolver(self.tmp / "unbound", self.dns,
                                           self.dns.anchors()).start()
        names = tuple(f"mta-sts.{d}" for d in sorted(self.dns._zones))
        cert, key = write_chain(self.tmp / "pki", "policy-server",
                                issue(names[0], issuer=self.ca, sans=names))
        self.policy_server = PolicyServer(self.tmp / "www", cert, key, POLICY_SERVER).start()
        self.start_farm()
        return self

    def start_farm(self) -> None:
        pki = self.tmp / "pki"
        ca_cert = write_chain(pki, "farm-ca", issue("mx.farm.test", issuer=self.ca,
                                                    sans=self.ca_names()))
        self.farm_ca_chain = ca_cert
        certs = {"mx1": ca_cert, "mx2": ca_cert, "tls13": ca_cert,
                 "ee": write_chain(pki, "farm-ee", self.ee),
                 "ta": write_chain(pki, "farm-ta", self.ta_leaf, self.dane_intermediate)}
        state = self.tmp / "farm"
        state.mkdir()
        for _attempt in range(3):
            self.port = port_free_on([*FARM.values(), POSTFIX_MX])
            blocks = []
            for name, address in FARM.items():
                if name == "plain":
                    tls = "tls off"
                else:
                    cert, key = certs[name]
                    tls = f"tls file {cert} {key}"
                    if name == "tls13":
                        tls += " {\n        protocols tls1.3 tls1.3\n    }"
                blocks.append(f"""smtp tcp://{address}:{self.port} {{
    {tls}
    deliver_to target.maildir {{
        path maildir/{name}/{{domain}}/{{local}}
    }}
}}
""")
            config = state / "farm.conf"
            config.write_text(f"hostname farm.gmta.test\nstate_dir {state}\n"
                              f"runtime_dir {state}/run\nlog stderr\ntls off\n"
                              f"dns_servers {self.dns.directive}\n" + "".join(blocks))
            self.farm = GmtaProcess(config)
            try:
                self.farm.wait_for(r"event=started")
                return
            except AssertionError:
                self.farm.stop()   # a port taken in between: try another
        raise AssertionError("the MX farm did not start:\n" + "\n".join(self.farm.lines))

    def postfix(self) -> PostfixMX:
        """The Postfix MX on POSTFIX_MX (started on first use: it takes a few seconds)."""
        if self._postfix is None:
            self._postfix = PostfixMX(POSTFIX_MX, self.port, *self.farm_ca_chain,
                                      hostname="mx.rtpostfix.test")
            self._postfix.start()
        return self._postfix

    def stop(self) -> None:
        for process in [*self.senders.values(), self.farm]:
            if process is not None:
                process.stop()
        if self._postfix is not None:
            self._postfix.stop()
        for server in (self.policy_server, self.resolver, self.dns):
            if server is not None:
                server.stop()

    # -- senders -----------------------------------------------------------------------------

    def sender(self, mx_auth: str, tls_client: str = "", remote: str = "") -> GmtaProcess:
        """A running sender whose target.remote has ``mx_auth { <mx_auth> }``
        (and the directives in *remote*).

        A line ``mtasts`` in *mx_auth* becomes an mtasts block with the policy
        server's port and a RAM cache. Its DSNs go to the Maildir ``bounces/<local part>``
        in its state directory (:meth:`bounces`).
        """
        key = (mx_auth, tls_client, remote)
        if key in self.senders:
            return self.senders[key]
        body = re.sub(r"^mtasts$", f"mtasts {{\n            https_port {self.policy_server.port}"
                                   "\n            cache ram\n        }",
                      mx_auth, flags=re.M)
        state = self.tmp / f"sender-{len(self.senders)}"
        state.mkdir()
        config = state / "gmta.conf"
        config.write_text(f"""hostname client.gmta.test
state_dir {state}
runtime_dir {state}/run
log stderr
tls off
autogenerated_msg_domain gmta.test
dns_servers {self.resolver.directive}
tls_client {{
    root_ca {self.ca_path}
    {tls_client}
}}
target.remote out {{
    smtp_port {self.port}
    connect_timeout 5s
    command_timeout 5s
    {remote}
    mx_auth {{
        {body}
    }}
}}
target.queue q {{
    target &out
    initial_retry_time 1h
    retry_time_scale 1
    post_init_delay 0
    bounce {{
        deliver_to target.maildir {{
            path bounces/{{local}}
        }}
    }}
}}
smtp tcp://127.0.0.1:0 {{
    tls self_signed
    deliver_to &q
}}
""")
        process = GmtaProcess(config)
        self.senders[key] = process
        process.wait_for(r"event=started")
        return process

    @staticmethod
    def bounces(sender: GmtaProcess, rcpt: str) -> list[bytes]:
        """The DSNs *sender* sent to a@client.gmta.test about *rcpt*."""
        new = sender.config_path.parent / "bounces" / "a" / "new"
        found = [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []
        return [dsn for dsn in found if rcpt.encode() in dsn]

    def delivered_to(self, farm_host: str, rcpt: str) -> list[bytes]:
        local, domain = rcpt.split("@")
        new = self.tmp / "farm" / "maildir" / farm_host / domain / local / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def farm_hosts_with(self, rcpt: str) -> list[str]:
        return [name for name in FARM if self.delivered_to(name, rcpt)]


def port_free_on(addresses) -> int:
    """A TCP port free on every one of *addresses* now."""
    import socket
    for _ in range(50):
        sockets = []
        try:
            first = socket.socket()
            sockets.append(first)
            first.bind((next(iter(addresses)), 0))
            port = first.getsockname()[1]
            for address in list(addresses)[1:]:
                other = socket.socket()
                sockets.append(other)
                other.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no port free on all the farm addresses")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    made = World(tmp_path_factory.mktemp("mxauth-run"))
    try:
        yield made.start()
    finally:
        made.stop()


def send(sender: GmtaProcess, rcpt: str, *, requiretls: bool = False) -> None:
    """One message to *rcpt* through the sender's smtp endpoint (STARTTLS for REQUIRETLS)."""
    message = f"From: a@client.gmta.test\r\nTo: {rcpt}\r\nSubject: to {rcpt}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", sender.port(), timeout=30) as client:
        if requiretls:
            # RFC 8689 §4.1: REQUIRETLS may only be asked for over TLS.
            client.starttls(context=ssl._create_unverified_context())
        client.ehlo()
        client.sendmail("a@client.gmta.test", [rcpt], message.encode(),
                        mail_options=["REQUIRETLS"] if requiretls else [])


def outcome(sender: GmtaProcess, rcpt: str) -> str:
    """The queue's log line for *rcpt*'s first attempt: delivered, deferred or failed."""
    return sender.wait_for(rf"event=(delivered|deferred|failed) .*rcpt={re.escape(rcpt)}\b",
                           timeout=OUTCOME_TIMEOUT)


def attempt(world: World, sender: GmtaProcess, rcpt: str, **kw) -> str:
    send(sender, rcpt, **kw)
    return outcome(sender, rcpt)


def walk_lines(sender: GmtaProcess, domain: str, event: str) -> list[str]:
    return [line for line in sender.lines
            if f"event={event} " in line and f"domain={domain} " in line]


# --- R13: MTA-STS. -------------------------------------------------------------------------

MTASTS_MIN = "mtasts\nlocal_policy {\n  min_mx_level mtasts\n}"


def test_r13_testing_policy_listing_the_mx_delivers_with_mx_level_mtasts(world):
    world.policy_server.policy("testing.test", sts_policy("testing", "*.testing.test"))
    sender = world.sender(MTASTS_MIN)
    assert "event=delivered" in attempt(world, sender, "r13a@testing.test")
    assert world.farm_hosts_with("r13a@testing.test") == ["mx1"]
    [connected] = walk_lines(sender, "testing.test", "mx_connected")
    assert "mx_level=mtasts" in connected and "tls=authenticated" in connected


def test_r13_enforce_policy_excluding_the_first_mx_delivers_to_the_second(world):
    world.policy_server.policy("enforce.test", sts_policy("enforce", "mx2.enforce.test"))
    sender = world.sender(MTASTS_MIN)
    assert "event=delivered" in attempt(world, sender, "r13b@enforce.test")
    assert world.farm_hosts_with("r13b@enforce.test") == ["mx2"]
    # mx1 was refused before any connection: never a MAIL there.
    [refused] = walk_lines(sender, "enforce.test", "mx_failed")
    assert "mx=mx1.enforce.test" in refused and "kind=policy" in refused
    assert "(mtasts)" in refused and "not listed in the MTA-STS policy" in refused
    assert [line for line in walk_lines(sender, "enforce.test", "mx_connected")
            if "mx=mx1." in line] == []


@pytest.mark.parametrize("rcpt, policy, words", [
    # Testing policy not listing the MX + min_mx_level mtasts: refused before MAIL.
    ("r13c@notlisted.test", sts_policy("testing", "elsewhere.example"),
     ["(local_policy)", "min_mx_level is mtasts"]),
    # Enforce policy, server without STARTTLS.
    ("r13d@stsplain.test", sts_policy("enforce", "mx.stsplain.test"),
     ["(mtasts)", "TLS is required but unavailable"]),
    # Enforce policy, certificate not from a trusted CA.
    ("r13e@stsuntrusted.test", sts_policy("enforce", "mx.stsuntrusted.test"),
     ["(mtasts)", "certificate is not trusted"]),
    # No policy at all + min_mx_level mtasts: no connection.
    ("r13f@nosts.test", None, ["(local_policy)", "MX level none, min_mx_level is mtasts"]),
], ids=["testing-not-listed", "enforce-no-tls", "enforce-untrusted", "no-policy"])
def test_r13_refusals_defer_and_no_mail_reaches_the_mx(world, rcpt, policy, words):
    domain = rcpt.split("@")[1]
    if policy is not None:
        world.policy_server.policy(domain, policy)
    sender = world.sender(MTASTS_MIN)
    line = attempt(world, sender, rcpt)
    assert "event=deferred" in line and 'reply="451 4.7.' in line
    for word in words:
        assert word in line, line
    assert world.farm_hosts_with(rcpt) == []


def test_policy_id_change_fetches_the_policy_again(world):
    server = world.policy_server
    server.policy("rotate.test", sts_policy("enforce", "mx1.rotate.test"))
    sender = world.sender(MTASTS_MIN)
    assert "event=delivered" in attempt(world, sender, "rot1@rotate.test")
    assert world.farm_hosts_with("rot1@rotate.test") == ["mx1"]
    # A new policy under the same id: the cached one stays in force (RFC 8461 §5.1)...
    server.policy("rotate.test", sts_policy("enforce", "mx2.rotate.test"))
    assert "event=delivered" in attempt(world, sender, "rot2@rotate.test")
    assert world.farm_hosts_with("rot2@rotate.test") == ["mx1"]
    # ...until the TXT record announces a new id (RFC 8461 §3.1).
    world.dns.zone("rotate.test", two_mx("rotate.test", *sts_records("2")))
    world.dns.reload()
    assert "event=delivered" in attempt(world, sender, "rot3@rotate.test")
    assert world.farm_hosts_with("rot3@rotate.test") == ["mx2"]
    fetched = [line for line in sender.lines
               if "event=policy_fetched" in line and "domain=rotate.test" in line]
    assert len(fetched) == 2 and "id=2" in fetched[1] and "previous_id=1" in fetched[1]


def test_expired_cached_policy_is_fetched_again(world):
    server = world.policy_server
    server.policy("expire.test", sts_policy("enforce", "mx1.expire.test", max_age=1))
    sender = world.sender(MTASTS_MIN)
    assert "event=delivered" in attempt(world, sender, "exp1@expire.test")
    fetched_at = time.monotonic()
    assert world.farm_hosts_with("exp1@expire.test") == ["mx1"]
    # Same id, new content: only the expiry of the cached copy brings it in.
    server.policy("expire.test", sts_policy("enforce", "mx2.expire.test", max_age=1))
    time.sleep(max(0.0, 1.2 - (time.monotonic() - fetched_at)))
    assert "event=delivered" in attempt(world, sender, "exp2@expire.test")
    assert world.farm_hosts_with("exp2@expire.test") == ["mx2"]
    fetched = [line for line in sender.lines
               if "event=policy_fetched" in line and "domain=expire.test" in line]
    assert len(fetched) == 2


def test_sts_preload_list_excluding_the_first_mx_delivers_to_the_second(world):
    # A STARTTLS Everywhere list entry acts as an enforce policy for a domain without MTA-STS.
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=7)
    listing = world.tmp / "preload.json"
    listing.write_text(json.dumps({
        "timestamp": "2024-01-01T00:00:00Z", "author": "gmta tests", "version": "0.1",
        "expires": expires.isoformat(), "policy-aliases": {},
        "policies": {"preload.test": {"mode": "enforce", "mxs": ["mx2.preload.test"]}}}))
    sender = world.sender(f"sts_preload {{\n  source file://{listing}\n}}")
    assert "event=delivered" in attempt(world, sender, "pre@preload.test")
    assert world.farm_hosts_with("pre@preload.test") == ["mx2"]
    [refused] = walk_lines(sender, "preload.test", "mx_failed")
    assert "mx=mx1.preload.test" in refused and "(sts_preload)" in refused


# --- R14: DNSSEC. --------------------------------------------------------------------------

DNSSEC_MIN = "dnssec\nlocal_policy {\n  min_mx_level dnssec\n}"


def test_r14_signed_mx_delivers_and_unsigned_is_refused_before_mail(world):
    sender = world.sender(DNSSEC_MIN)
    assert "event=delivered" in attempt(world, sender, "r14a@signed.test")
    [connected] = walk_lines(sender, "signed.test", "mx_connected")
    assert "mx_level=dnssec" in connected
    line = attempt(world, sender, "r14b@plain.test")
    assert "event=deferred" in line and "(local_policy)" in line \
        and "min_mx_level is dnssec" in line
    assert world.farm_hosts_with("r14b@plain.test") == []
    assert walk_lines(sender, "plain.test", "mx_connected") == []


def test_bogus_zone_defers_naming_dnssec(world):
    sender = world.sender(DNSSEC_MIN)
    line = attempt(world, sender, "bog@bogus.test")
    assert "event=deferred" in line and 'reply="451 ' in line and "DNSSEC" in line, line
    assert world.farm_hosts_with("bog@bogus.test") == []


# --- R15: REQUIRETLS. ----------------------------------------------------------------------

def test_r15_requiretls_with_verified_tls_and_an_mtasts_match_is_delivered(world):
    world.policy_server.policy("rt.test", sts_policy("testing", "*.rt.test"))
    sender = world.sender("mtasts")
    assert "event=delivered" in attempt(world, sender, "r15a@rt.test", requiretls=True)
    assert world.farm_hosts_with("r15a@rt.test") == ["mx1"]


@pytest.mark.parametrize("rcpt, tls_client, event, words", [
    # relaxed_requiretls (the default) still needs MTA-STS or DNSSEC for the MX...
    ("r15b@nosts.test", "", "failed", ["550 5.7.30", "MX level none, at least mtasts needed"]),
    # ... and authenticated TLS: a server without STARTTLS cannot give it.
    ("r15c@rtplain.test", "", "failed", ["550 5.7.30", "authenticated TLS is required"]),
    # A failed handshake (TLS 1.2 client, TLS 1.3 server) has no plaintext fallback
    # under REQUIRETLS; it may work later, so it defers.
    ("r15d@rttls12.test", "protocols tls1.2 tls1.2", "deferred",
     ["451 4.7.5", "TLS handshake with 127.0.0.16"]),
], ids=["no-mtasts", "no-tls", "handshake-failure"])
def test_r15_requiretls_refusals_send_no_mail(world, rcpt, tls_client, event, words):
    domain = rcpt.split("@")[1]
    world.policy_server.policy(domain, sts_policy("testing", f"*.{domain}"))
    sender = world.sender("mtasts", tls_client)
    line = attempt(world, sender, rcpt, requiretls=True)
    assert f"event={event}" in line, line
    for word in words:
        assert word in line, line
    assert world.farm_hosts_with(rcpt) == []


# R15 against a real TLS MX without REQUIRETLS: Postfix (postfixmx.py).

def test_r15_strict_requiretls_gives_a_tls_mx_without_requiretls_nothing_and_bounces(world):
    postfix = world.postfix()
    world.policy_server.policy("rtpostfix.test", sts_policy("testing", "*.rtpostfix.test"))
    sender = world.sender("mtasts", remote="relaxed_requiretls no")
    sessions_before = len(postfix.smtpd_sessions())
    line = attempt(world, sender, "strict@rtpostfix.test", requiretls=True)
    # RFC 8689 §4.2.1 item 5: the EHLO after STARTTLS must offer REQUIRETLS; with no other
    # MX the client "MUST NOT transmit the message to the domain" and sends a non-delivery
    # notification, 5.7.30 for "REQUIRETLS not supported by server". Permanent: no retry.
    assert "event=failed" in line, line
    assert "550 5.7.30" in line and "does not offer REQUIRETLS" in line, line
    # The MX level and the TLS were fine: only REQUIRETLS was missing.
    [refused] = walk_lines(sender, "rtpostfix.test", "mx_failed")
    assert "kind=policy" in refused and "mx=mx.rtpostfix.test" in refused
    # Postfix saw EHLO, STARTTLS, EHLO and QUIT: no MAIL, nothing held.
    new = postfix.wait_for_sessions(sessions_before + 1)[sessions_before:]
    [session] = [s for s in new if "starttls=1" in s]
    assert "ehlo=2" in session and "quit=1" in session and "mail=" not in session, session
    assert postfix.held_for("strict@rtpostfix.test") == []
    sender.wait_for(r"event=dsn_sent .*rcpts=strict@rtpostfix\.test", timeout=OUTCOME_TIMEOUT)
    [dsn] = world.bounces(sender, "strict@rtpostfix.test")
    assert b"Status: 5.7.30" in dsn and b"Action: failed" in dsn, dsn


def test_r15_relaxed_requiretls_delivers_to_a_tls_mx_without_requiretls(world):
    postfix = world.postfix()
    world.policy_server.policy("rtpostfix.test", sts_policy("testing", "*.rtpostfix.test"))
    sender = world.sender("mtasts")   # relaxed_requiretls is on by default (maddy's)
    line = attempt(world, sender, "relaxed@rtpostfix.test", requiretls=True)
    assert "event=delivered" in line, line
    [connected] = walk_lines(sender, "rtpostfix.test", "mx_connected")
    assert "tls=authenticated" in connected and "mx_level=mtasts" in connected
    # Postfix took it (it refuses a MAIL parameter it does not know with 555, so the
    # REQUIRETLS flag was dropped for this MX, as relaxed_requiretls says).
    [held] = postfix.wait_for_held("relaxed@rtpostfix.test")
    assert "from=<a@client.gmta.test>" in held


# --- R16: DANE. ----------------------------------------------------------------------------

DANE_AUTHENTICATED = "dane\nlocal_policy {\n  min_tls_level authenticated\n}"


@pytest.mark.parametrize("rcpt, farm_host", [
    ("ee@ee.test", "ee"),          # DANE-EE, SPKI, SHA-256 (3 1 1), self-signed
    # DANE-TA (2 0 1) of the intermediate of a sent chain; gmta checks the chain with
    # cryptography's verifier (42 and later; older ones defer, saying so).
    pytest.param("ta@ta.test", "ta", marks=pytest.mark.skipif(
        importlib.util.find_spec("cryptography.x509.verification") is None,
        reason="DANE-TA needs cryptography 42 or later (cryptography.x509.verification)")),
    ("cn@cname.test", "ee"),       # CNAME'd MX: TLSA at the CNAME's target
], ids=["dane-ee-3-1-1", "dane-ta-chain", "cname"])
def test_r16_matching_tlsa_authenticates_the_mx(world, rcpt, farm_host):
    sender = world.sender(DANE_AUTHENTICATED)
    assert "event=delivered" in attempt(world, sender, rcpt)
    assert world.farm_hosts_with(rcpt) == [farm_host]
    [connected] = walk_lines(sender, rcpt.split("@")[1], "mx_connected")
    assert "tls=authenticated" in connected


def test_r16_unsigned_tlsa_records_are_ignored(world):
    sender = world.sender("dane")
    assert "event=delivered" in attempt(world, sender, "un@unsigned.test")
    [connected] = walk_lines(sender, "unsigned.test", "mx_connected")
    assert "tls=encrypted" in connected


@pytest.mark.parametrize("rcpt, tls_client, words", [
    ("nt@nostarttls.test", "", ["451 4.7.10", "(dane)"]),
    ("tf@tlsafail.test", "", ["451 ", "(dane)", "_25._tcp.mx.tlsafail.test"]),
    ("he@tls12.test", "protocols tls1.2 tls1.2", ["451 4.7.10", "(dane)"]),
], ids=["no-starttls", "tlsa-lookup-failure", "handshake-failure"])
def test_r16_dane_failures_defer(world, rcpt, tls_client, words):
    sender = world.sender("dane", tls_client)
    line = attempt(world, sender, rcpt)
    assert "event=deferred" in line, line
    for word in words:
        assert word in line, line
    assert world.farm_hosts_with(rcpt) == []


def test_tlsa_mismatch_defers_until_the_record_is_fixed_and_the_queue_flushed(world):
    sender = world.sender("dane")
    line = attempt(world, sender, "fix@fixme.test")
    assert "event=deferred" in line and "451 4.7.5" in line, line
    assert "No matching TLSA records (dane)" in line and "_25._tcp.mx.fixme.test" in line
    [refused] = walk_lines(sender, "fixme.test", "mx_failed")
    assert "kind=policy" in refused and "(dane)" in refused
    assert world.farm_hosts_with("fix@fixme.test") == []
    listed = subprocess.run(GMTA + ["queue", "list", "-c", str(sender.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert "fix@fixme.test" in listed.stdout and "4.7.5" in listed.stdout, listed.stdout
    # The operator publishes the right record (knotd signs it again) and flushes.
    world.dns.zone("fixme.test", World.fixme_records(world.ee))
    world.dns.reload()
    flushed = subprocess.run(GMTA + ["queue", "flush", "-c", str(sender.config_path)],
                             capture_output=True, text=True, timeout=60)
    assert flushed.returncode == 0, flushed.stderr
    sender.wait_for(r"event=delivered .*rcpt=fix@fixme\.test", timeout=OUTCOME_TIMEOUT)
    assert world.farm_hosts_with("fix@fixme.test") == ["ee"]

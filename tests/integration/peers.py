"""Real peers for the integration tests: Postfix's smtp-sink, a private Dovecot LMTP and a
private Dovecot submission server (AUTH EXTERNAL with client certificates).

Each peer is started on a free 127.0.0.1 port (or a unix socket) in a directory of its
own, waited for until it answers with a banner (with a deadline), and stopped at the
end of the test. Both run as unprivileged users when the tests run as root, so their
directories are created world-accessible under /tmp (pytest's tmp_path is private to
root).

Fixtures: ``smtp_sink`` (``smtp_sink(*options)`` → SmtpSink), ``dovecot_lmtp``
(``dovecot_lmtp(users)`` → DovecotLMTP), ``dovecot_submission``
(``dovecot_submission(ca, relay_port)`` → DovecotSubmission), ``free_port``, ``ca`` (a test
CA that issues server and client certificates).
"""

from __future__ import annotations

import datetime
import email
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A port the kernel says is free on 127.0.0.1 now (tiny race, as every such helper)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_banner(address, timeout: float = READY_TIMEOUT, process=None,
                    expect: bytes = b"220") -> None:
    """Wait until *address* (host, port) or a unix path answers with a 220 line
    (or the code in *expect*, for a peer scripted to refuse at the greeting)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"peer exited with {process.returncode} before answering")
        family = socket.AF_UNIX if isinstance(address, str) \
            else socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(address)
                if sock.recv(512).startswith(expect):
                    return
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"no banner from {address} within {timeout}s: {last}")


def world_dir(prefix: str) -> Path:
    """A fresh directory under /tmp that unprivileged peers can use."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o777)
    return path


def _need(binary: str) -> str:
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}")
                                     else None)
    if found is None:
        pytest.fail(f"{binary} is not installed: run the README's test command (bash tests/run)")
    return found


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --- smtp-sink ------------------------------------------------------------------------

class SmtpSink:
    """``smtp-sink`` (Postfix) on 127.0.0.1:port, dumping each message to ``dump_dir``."""

    def __init__(self, *options: str, host: str = "127.0.0.1", lmtp: bool = False,
                 port: int | None = None, banner: bytes = b"220"):
        self.dir = world_dir("gmta-sink-")
        self.dump_dir = self.dir / "dump"
        self.dump_dir.mkdir()
        self.dump_dir.chmod(0o777)
        self.host = host
        # A given port lets several sinks on 127.0.0.x share one (target.remote's smtp_port).
        self.port = port or free_port()
        command = [_need("smtp-sink"), "-h", "sink.test", "-d", f"{self.dump_dir}/msg."]
        if lmtp:
            command.append("-L")
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        # Postfix writes an IPv6 endpoint in brackets; -6 makes smtp-sink use IPv6.
        endpoint = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        if ":" in host:
            command.append("-6")
        command += [*options, endpoint, "16"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_banner((host, self.port), process=self.process, expect=banner)
        except AssertionError:
            self.stop()
            raise

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    def messages(self) -> list[email.message.Message]:
        """The dumped transactions: X-Mail-Args, X-Rcpt-Args, then the message."""
        return [email.message_from_bytes(p.read_bytes()) for p in sorted(self.dump_dir.iterdir())]

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"smtp-sink got {len(self.messages())} messages, not {count}")

    def stop(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)


def stopped_at_end(make):
    """A fixture's body: yield *make* (a peer's class) as the test's factory, and stop
    every peer it made when the test ends."""
    started = []

    def start(*args, **kwargs):
        peer = make(*args, **kwargs)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def smtp_sink():
    """``smtp_sink(*options, host=..., port=...)`` → a started :class:`SmtpSink`."""
    yield from stopped_at_end(SmtpSink)


# --- Dovecot LMTP --------------------------------------------------------------------

DOVECOT_CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
auth_mechanisms = plain
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 1
mail_location = maildir:{dir}/mail/%d/%n
mail_plugins = quota
lmtp_rcpt_check_quota = no
passdb {{
  driver = passwd-file
  args = {dir}/users
}}
userdb {{
  driver = passwd-file
  args = {dir}/users
  default_fields = uid={uid} gid={gid} home={dir}/home/%d/%n
}}
plugin {{
  quota = maildir:User quota
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
"""


class PrivateDovecot:
    """What every private Dovecot here shares: a world-accessible directory with
    run/, state/, mail/ and home/, a configuration from a template, ``dovecot -F``
    waited for until it greets on 127.0.0.1:port, its log, and its stop."""

    def _make_dir(self, prefix: str) -> None:
        self.dir = world_dir(prefix)
        for sub in ("run", "state", "mail", "home"):
            (self.dir / sub).mkdir()
            (self.dir / sub).chmod(0o777)
        self.port = free_port()

    def _start(self, binary: str, template: str, **fields) -> None:
        """Write *template* (with the fields every template has, and *fields*), start it."""
        nobody = pwd.getpwnam("nobody")
        self.config = self.dir / "dovecot.conf"
        self.config.write_text(template.format(
            dir=self.dir, port=self.port, uid=nobody.pw_uid, gid=nobody.pw_gid,
            internal=_user_or("dovecot", "nobody"), login=_user_or("dovenull", "nobody"),
            **fields))
        self.process = subprocess.Popen([binary, "-F", "-c", str(self.config)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        try:
            wait_for_banner(("127.0.0.1", self.port), process=self.process)
        except AssertionError as e:
            log = self.log()
            self.stop()
            raise AssertionError(f"{e}\n{log}") from None

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)


class DovecotLMTP(PrivateDovecot):
    """A private Dovecot serving LMTP on 127.0.0.1:port and on ``socket_path``.

    *users* maps an address to None or a quota rule such as ``*:storage=1K``.
    """

    def __init__(self, users: dict[str, str | None]):
        binary = _need("dovecot")
        self._make_dir("gmta-dovecot-")
        lines = []
        for address, quota in users.items():
            extra = f"userdb_quota_rule={quota}" if quota else ""
            lines.append(f"{address}:{{PLAIN}}unused::::::{extra}")
        (self.dir / "users").write_text("\n".join(lines) + "\n")
        self._start(binary, DOVECOT_CONF)

    @property
    def socket_path(self) -> str:
        return str(self.dir / "run" / "lmtp")

    def messages(self, address: str) -> list[bytes]:
        local, domain = address.split("@")
        found = []
        for sub in ("new", "cur"):
            folder = self.dir / "mail" / domain / local / sub
            if folder.is_dir():
                found += [p.read_bytes() for p in sorted(folder.iterdir())]
        return found


def _user_or(name: str, fallback: str) -> str:
    try:
        pwd.getpwnam(name)
        return name
    except KeyError:
        return fallback


@pytest.fixture
def dovecot_lmtp():
    """``dovecot_lmtp(users)`` → a started :class:`DovecotLMTP`."""
    yield from stopped_at_end(DovecotLMTP)


# --- Dovecot submission with AUTH EXTERNAL ------------------------------------------

# Dovecot's submission server (Debian dovecot-submissiond) is the real SMTP server in
# Debian 12 that offers SASL EXTERNAL: after STARTTLS it verifies the client certificate
# against ssl_ca and takes the user name from its commonName (auth_ssl_username_from_cert).
# Postfix's smtpd does not offer EXTERNAL, and Exim conflicts with Postfix. Authenticated
# mail is relayed to submission_relay_host, an smtp-sink the test reads.
DOVECOT_SUBMISSION_CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = submission
listen = 127.0.0.1
hostname = submission.test
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_ca = <{ca}
ssl_verify_client_cert = yes
# The test CA publishes no CRL; Dovecot's default insists on one for client certificates.
ssl_require_crl = no
auth_ssl_require_client_cert = yes
auth_ssl_username_from_cert = yes
ssl_cert_username_field = commonName
auth_mechanisms = external
auth_verbose = yes
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 1
mail_location = maildir:{dir}/mail/%u
submission_relay_host = 127.0.0.1
submission_relay_port = {relay_port}
submission_relay_trusted = yes
# EXTERNAL verifies an empty password: the certificate is the credential.
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u
}}
service submission-login {{
  inet_listener submission {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener submissions {{
    port = 0
  }}
}}
"""


class DovecotSubmission(PrivateDovecot):
    """A private Dovecot submission server on 127.0.0.1:port relaying to *relay_port*.

    Its server certificate (for ``submission.test`` and 127.0.0.1) and the CA it trusts for
    client certificates both come from *ca*.
    """

    def __init__(self, ca: "TestCA", relay_port: int):
        binary = _need("dovecot")
        if not os.path.exists("/usr/lib/dovecot/submission-login"):
            pytest.fail("dovecot-submissiond is not installed: run the README's test command "
                        "(bash tests/run)")
        self._make_dir("gmta-dovecot-submission-")
        # Dovecot's config process reads these files (as root) and hands their contents on.
        cert, key = ca.issue("submission.test")
        self._start(binary, DOVECOT_SUBMISSION_CONF, relay_port=relay_port, cert=cert,
                    key=key, ca=ca.cert_path)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in (found := self.log()):
                return found
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in Dovecot's log:\n{self.log()}")


@pytest.fixture
def dovecot_submission():
    """``dovecot_submission(ca, relay_port)`` → a started :class:`DovecotSubmission`."""
    yield from stopped_at_end(DovecotSubmission)


# --- A test CA ----------------------------------------------------------------------

def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TestCA:
    """A CA that issues server certificates (with 127.0.0.1 and a name) and client ones."""

    __test__ = False   # not a test class

    def __init__(self, directory: Path):
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gmta test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder()
                     .subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = directory / "ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, client: bool = False) -> tuple[Path, Path]:
        """Write NAME.pem and NAME.key; return their paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names = [x509.DNSName(name)]
        if not client:
            names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return cert_path, key_path


@pytest.fixture
def ca(tmp_path) -> TestCA:
    directory = tmp_path / "ca"
    directory.mkdir()
    return TestCA(directory)

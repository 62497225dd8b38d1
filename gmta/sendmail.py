"""``gmta sendmail``: the ``/usr/sbin/sendmail`` interface for local programs.

cron, mail(1), PHP's mail() and the like run ``sendmail [flags] [rcpt...]``
with the message on stdin. gmta keeps no separate drop directory: the message
goes over SMTP to the running ``gmta run``, and exit status 0 means the
daemon answered ``250`` to the end of data, i.e. the message is on its disk
(DESIGN §4.1). Otherwise the exit status is a sysexits(3) code and the
caller keeps the message (cron mails nothing, mail(1) saves dead.letter):
75 (EX_TEMPFAIL) when gmta is down or answers 4xx, 67 (EX_NOUSER) when a
recipient is refused, 69 (EX_UNAVAILABLE) for other permanent refusals.
Delivery is all or nothing: when any recipient is refused, nothing is sent.

Which listener: the first ``smtp`` endpoint of the configuration on a
``unix://`` address, else the first on a loopback ``tcp://`` address with a
fixed port. Only the configuration's text is read (not its certificates or
tables, which the user running sendmail usually may not read).
"""

from __future__ import annotations

import email.utils
import getopt
import ipaddress
import os
import pwd
import re
import smtplib
import socket
import sys
from dataclasses import dataclass, field

from gmta.config.parser import Node, Parser
from gmta.config.values import Endpoint, parse_endpoint
from gmta.errors import ConfigError

# sysexits(3)
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78

DEFAULT_CONFIG = "/etc/gmta/gmta.conf"
DEFAULT_RUNTIME_DIR = "/run/gmta"
#: Per operation; the reply to the end of data waits for gmta's fsync.
SMTP_TIMEOUT = 300.0

# sendmail's options, as getopt sees them; those not acted on are accepted
# and ignored like Postfix's sendmail does (-B, -N, -R, -V, -h, -L, -v ...).
_OPTSTRING = "B:b:C:d:F:f:h:iL:N:no:O:p:q:R:r:tUV:vX:"
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_RECIPIENT_FIELDS = (b"to", b"cc", b"bcc")
_LINE_END = re.compile(rb"\r\n|\n|\r")


class SendmailError(Exception):
    """A failure to report on stderr, with the exit status it maps to."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Options:
    recipients: list[str] = field(default_factory=list)
    extract_recipients: bool = False   # -t
    sender: str | None = None          # -f / -r
    full_name: str | None = None       # -F
    ignore_dots: bool = False          # -i / -oi
    config_path: str | None = None     # -C


def parse_args(argv: list[str]) -> Options:
    """sendmail's command line (getopt, so ``-ti``, ``-oi`` and ``-fuser`` work)."""
    try:
        pairs, rest = getopt.getopt(argv, _OPTSTRING)
    except getopt.GetoptError as e:
        raise SendmailError(EX_USAGE, f"sendmail: {e}") from None
    options = Options(recipients=list(rest))
    for flag, value in pairs:
        if flag == "-t":
            options.extract_recipients = True
        elif flag == "-i":
            options.ignore_dots = True
        elif flag == "-o":
            # -oi is -i; every other -oX (delivery mode, error mode...) is
            # ignored, as sendmail's own manual allows for unknown options.
            if value == "i":
                options.ignore_dots = True
        elif flag in ("-f", "-r"):
            options.sender = value
        elif flag == "-F":
            options.full_name = value
        elif flag == "-C":
            options.config_path = value
        elif flag == "-b" and value != "m":
            # -bm (deliver mail) is the default; -bp, -bs, -bi, -bd... are
            # other programs' jobs (gmta queue, gmta run).
            raise SendmailError(EX_USAGE, f"sendmail: -b{value} is not supported; "
                                          "gmta sendmail only delivers mail (-bm)")
        elif flag == "-q":
            raise SendmailError(EX_USAGE, "sendmail: -q is not supported; the queue is "
                                          "run by gmta run")
    return options


# -- the message ---------------------------------------------------------------------------

def read_message(stream, ignore_dots: bool) -> bytes:
    """The message from *stream* with LF line ends; a lone ``.`` line ends it unless -i."""
    lines = []
    for line in stream:
        if not ignore_dots and line.rstrip(b"\r\n") == b".":
            break
        lines.append(line.rstrip(b"\r\n") + b"\n" if line.endswith(b"\n") else line)
    return b"".join(lines)


def split_header(message: bytes) -> tuple[list[bytes], bytes]:
    """(header lines with their LF, the rest). The header ends at the first line that is
    neither a field nor a continuation; the empty line separating them stays in the rest."""
    lines = message.splitlines(keepends=True)
    header: list[bytes] = []
    for line in lines:
        if _HEADER_LINE.match(line) or (header and line[:1] in (b" ", b"\t")):
            header.append(line)
        else:
            break
    return header, b"".join(lines[len(header):])


def _fields(header: list[bytes]) -> list[list[bytes]]:
    """The header lines grouped per field (a field and its continuation lines)."""
    fields: list[list[bytes]] = []
    for line in header:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def _field_name(field_lines: list[bytes]) -> bytes:
    return field_lines[0].split(b":", 1)[0].strip().lower()


def _field_value(field_lines: list[bytes]) -> str:
    raw = b"".join(field_lines).split(b":", 1)[1]
    return raw.decode("utf-8", "replace").replace("\r", "").replace("\n", "")


@dataclass
class Prepared:
    message: bytes
    sender: str
    recipients: list[str]


def prepare(message: bytes, options: Options, login: str, gecos_name: str,
            hostname: str) -> Prepared:
    """Envelope and the message as submitted: recipients from -t, Bcc removed, and the
    From, Date and Message-ID fields sendmail adds to local mail that lacks them
    (From's name: -F, else the user's name from the password database)."""
    header, rest = split_header(message)
    fields = _fields(header)
    # An argument may hold several addresses ("a@x, b@y") or a display name.
    recipients = [qualify(address, hostname)
                  for _, address in email.utils.getaddresses(options.recipients) if address]
    if options.extract_recipients:
        values = [_field_value(f) for f in fields if _field_name(f) in _RECIPIENT_FIELDS]
        recipients += [qualify(address, hostname)
                       for _, address in email.utils.getaddresses(values) if address]
        # Bcc recipients must not see each other, nor the others them.
        fields = [f for f in fields if _field_name(f) != b"bcc"]
    seen: set[str] = set()
    recipients = [r for r in recipients if not (r.lower() in seen or seen.add(r.lower()))]
    if not recipients:
        raise SendmailError(EX_USAGE, "sendmail: no recipients (name them as arguments, "
                                      "or use -t to take them from To, Cc and Bcc)")
    if options.sender is not None:
        sender = options.sender.strip().removeprefix("<").removesuffix(">")
        sender = qualify(sender, hostname) if sender else ""
    else:
        sender = f"{login}@{hostname}"
    names = {_field_name(f) for f in fields}
    added = []
    if b"from" not in names:
        from_address = sender or f"{login}@{hostname}"
        name = options.full_name if options.full_name is not None else gecos_name
        added.append(f"From: {email.utils.formataddr((name, from_address))}\n")
    if b"date" not in names:
        added.append(f"Date: {email.utils.formatdate(localtime=True)}\n")
    if b"message-id" not in names:
        added.append(f"Message-ID: {email.utils.make_msgid(domain=hostname)}\n")
    body = rest
    if not rest.startswith((b"\n", b"\r\n")):
        # No header at all (echo text | sendmail bob), or a line that is not a
        # field where the header stops: the blank line makes it body.
        body = b"\n" + rest
    new_header = b"".join(a.encode("utf-8") for a in added) + b"".join(b"".join(f) for f in fields)
    return Prepared(new_header + body, sender, recipients)


def qualify(address: str, hostname: str) -> str:
    """``root`` → ``root@HOSTNAME``, as sendmail does for local names."""
    address = address.strip()
    return address if "@" in address else f"{address}@{hostname}"


# -- where to submit -----------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    endpoint: Endpoint
    hostname: str


def find_target(config_path: str) -> Target:
    """The listener to submit to, from the configuration's text (module docstring)."""
    try:
        nodes = Parser().parse_file(config_path)
    except ConfigError as e:
        raise SendmailError(EX_CONFIG, f"sendmail: {e}") from None
    config_dir = os.path.dirname(os.path.abspath(config_path))
    runtime_dir = DEFAULT_RUNTIME_DIR
    hostname = None
    for node in nodes:
        if node.name == "runtime_dir" and len(node.args) == 1:
            # As gmta run reads it: relative to the configuration's directory.
            runtime_dir = os.path.normpath(os.path.join(config_dir, node.args[0]))
        elif node.name == "hostname" and len(node.args) == 1:
            hostname = node.args[0]
    endpoints = [e for node in nodes if node.name == "smtp" for e in _addresses(node, runtime_dir)]
    unix = [e for e in endpoints if e.is_unix]
    loopback = [e for e in endpoints if e.scheme == "tcp" and e.port and _is_loopback(e.host)]
    chosen = (unix or loopback or [None])[0]
    if chosen is None:
        raise SendmailError(EX_CONFIG, f"sendmail: {config_path} has no smtp endpoint on a "
                                       "unix:// or loopback tcp:// address to submit to "
                                       "(such as 'smtp unix://sendmail.sock { ... }')")
    return Target(chosen, hostname or socket.getfqdn())


def _addresses(node: Node, runtime_dir: str) -> list[Endpoint]:
    found = []
    for arg in node.args:
        try:
            found.append(parse_endpoint(arg, runtime_dir))
        except ValueError:
            continue  # gmta run reports it; here it is simply not a candidate
    return found


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _SMTP(smtplib.SMTP):
    """smtplib over a unix socket as well as TCP."""

    def __init__(self, endpoint: Endpoint, local_hostname: str, timeout: float):
        self._endpoint = endpoint
        super().__init__(local_hostname=local_hostname, timeout=timeout)

    def _get_socket(self, host, port, timeout):
        if self._endpoint.is_unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self._endpoint.path)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection((host, port), timeout)


def submit(target: Target, prepared: Prepared, timeout: float = SMTP_TIMEOUT) -> None:
    """Send over SMTP; returns once gmta said 250 to the data, else raises SendmailError."""
    endpoint = target.endpoint
    where = str(endpoint)
    try:
        client = _SMTP(endpoint, target.hostname, timeout)
        host = "localhost" if endpoint.is_unix else endpoint.host
        code, reply = client.connect(host, endpoint.port or 25)
        if code != 220:
            client.close()
            raise smtplib.SMTPConnectError(code, reply)
    except (OSError, smtplib.SMTPException) as e:
        raise SendmailError(EX_TEMPFAIL, f"sendmail: cannot reach gmta at {where}: "
                                         f"{_reason(e)}; the message was not sent") from None
    try:
        with client:
            # Recipients one by one so a refusal names its recipient; all or
            # nothing: on any refusal the transaction is reset, nothing sent.
            client.ehlo_or_helo_if_needed()
            code, reply = client.mail(prepared.sender)
            _check(code, reply, f"sender <{prepared.sender}>", client)
            for rcpt in prepared.recipients:
                code, reply = client.rcpt(rcpt)
                _check(code, reply, f"recipient <{rcpt}>", client, EX_NOUSER)
            code, reply = client.data(to_crlf(prepared.message))
            _check(code, reply, "message", client)
    except (OSError, smtplib.SMTPException) as e:
        # The connection broke before a 250 to the data: not accepted.
        raise SendmailError(EX_TEMPFAIL, f"sendmail: connection to gmta at {where} failed: "
                                         f"{_reason(e)}; the message was not sent") from None


def to_crlf(message: bytes) -> bytes:
    """SMTP's line ends (RFC 5321 §2.3.8): smtplib converts str messages, not bytes."""
    return _LINE_END.sub(b"\r\n", message)


def _check(code: int, reply: bytes, what: str, client: smtplib.SMTP,
           permanent_status: int = EX_UNAVAILABLE) -> None:
    if 200 <= code < 300:
        return
    try:
        client.rset()
    except (OSError, smtplib.SMTPException):
        pass
    text = reply.decode("utf-8", "replace").replace("\n", " ")
    status = EX_TEMPFAIL if 400 <= code < 500 else permanent_status
    outcome = "try again later" if status == EX_TEMPFAIL else "refused"
    raise SendmailError(status, f"sendmail: {what} {outcome}: {code} {text}; "
                                "the message was not sent")


def _reason(e: BaseException) -> str:
    if isinstance(e, smtplib.SMTPResponseException):
        return f"{e.smtp_code} {e.smtp_error.decode('utf-8', 'replace')}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


# -- the command ---------------------------------------------------------------------------

def _login_and_name() -> tuple[str, str]:
    try:
        entry = pwd.getpwuid(os.getuid())
    except KeyError:
        return str(os.getuid()), ""
    return entry.pw_name, entry.pw_gecos.split(",", 1)[0]


def main(argv: list[str], stdin=None, config_default: str | None = None) -> int:
    """Run sendmail with *argv*; the exit status. Errors go to stderr."""
    try:
        options = parse_args(argv)
        config_path = options.config_path or config_default or DEFAULT_CONFIG
        target = find_target(config_path)
        message = read_message(stdin if stdin is not None else sys.stdin.buffer,
                               options.ignore_dots)
        login, gecos = _login_and_name()
        prepared = prepare(message, options, login, gecos, target.hostname)
        submit(target, prepared)
    except SendmailError as e:
        print(str(e), file=sys.stderr)
        return e.status
    return EX_OK

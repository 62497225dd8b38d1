"""SMTP replies: the Reply type, the server's catalogue, and a parser for the client.

A reply is a three-digit code, an optional RFC 3463 enhanced status code and a text
that may span several lines. RFC 2034 §3 asks for the enhanced code on every 2xx, 4xx
and 5xx reply line *except* the greeting and the answers to HELO/EHLO (whose lines
carry the server name and the capability keywords); 3xx replies (354, 334) carry none.

The catalogue texts follow maddy (reference/maddy-behaviour.md §2.1), corrected where
DESIGN §1.3 says maddy is wrong: oversize bodies get 552 5.3.4, a nested MAIL gets
503 5.5.1, and MAIL on submission without AUTH gets 530 5.7.0 (RFC 4954 §6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gmta.errors import SMTPError

Enhanced = tuple[int, int, int]


@dataclass(frozen=True)
class Reply:
    """One SMTP reply; ``text`` lines are separated by ``\\n``."""

    code: int
    enhanced: Enhanced | None
    text: str = ""

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code {self.code} is outside 200..599")
        # RFC 3463 §2: the class digit must agree with the reply code, and 3xx has none.
        if self.enhanced is not None and (
                self.enhanced[0] != self.code // 100 or self.code // 100 == 3):
            raise ValueError(f"enhanced code {self.enhanced} does not fit reply {self.code}")

    @classmethod
    def from_error(cls, error: SMTPError) -> Reply:
        return cls(error.code, error.enhanced, error.text)

    def to_error(self) -> SMTPError:
        """The failure this reply reports, for 4xx and 5xx replies."""
        return SMTPError(self.code, self.enhanced, self.text)

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    @property
    def _prefix(self) -> str:
        """The enhanced code as it starts each line's text, or nothing."""
        if self.enhanced is None:
            return ""
        return ".".join(map(str, self.enhanced)) + " "

    def to_bytes(self, *, utf8: bool = False) -> bytes:
        """Serialise as ``250-first`` … ``250 last`` lines, each ending in CRLF.

        Without ``utf8`` (the client did not ask for SMTPUTF8, RFC 6531 §3.7.4),
        non-ASCII characters become ``?`` as maddy does, so the reply stays 7-bit.
        """
        prefix = self._prefix
        # A CR inside the text would let whoever chose the text forge reply lines.
        lines = self.text.replace("\r", " ").split("\n")
        out = []
        for number, line in enumerate(lines):
            separator = " " if number == len(lines) - 1 else "-"
            out.append(f"{self.code}{separator}{prefix}{line}\r\n")
        text = "".join(out)
        if utf8:
            return text.encode("utf-8")
        return text.encode("ascii", errors="replace")

    def __str__(self) -> str:
        return f"{self.code} {self._prefix}{self.text}".rstrip()


# --- The catalogue of the replies the server machine sends itself. -----------------
# Replies that need a name or a number are functions; the rest are constants.

def greeting(hostname: str, *, lmtp: bool) -> Reply:
    service = "LMTP" if lmtp else "ESMTP"
    return Reply(220, None, f"{hostname} {service} Service Ready")


def helo_ok(hostname: str, client_name: str) -> Reply:
    # RFC 5321 §4.1.1.1: the first line of the answer starts with the server's name.
    return Reply(250, None, f"{hostname} Hello {client_name}")


def ehlo_ok(hostname: str, client_name: str, capabilities: list[str]) -> Reply:
    return Reply(250, None, "\n".join([f"{hostname} Hello {client_name}", *capabilities]))


def mail_ok(address: str) -> Reply:
    return Reply(250, (2, 0, 0), f"Roger, accepting mail from <{address}>")


def rcpt_ok(address: str) -> Reply:
    return Reply(250, (2, 0, 0), f"I'll make sure <{address}> gets this")


def lmtp_recipient_ok(address: str) -> Reply:
    return Reply(250, (2, 0, 0), f"<{address}> OK: queued")


def chunk_ok(size: int) -> Reply:
    return Reply(250, (2, 0, 0), f"{size} bytes received")


def too_many_recipients(limit: int) -> Reply:
    # RFC 5321 §4.5.3.1.10: too many recipients is a 452, so the client sends the
    # rest in another transaction.
    return Reply(452, (4, 5, 3), f"Maximum limit of {limit} recipients reached")


MESSAGE_OK = Reply(250, (2, 0, 0), "OK: queued")
RSET_OK = Reply(250, (2, 0, 0), "Session reset")
NOOP_OK = Reply(250, (2, 0, 0), "I have successfully done nothing")
VRFY_OK = Reply(252, (2, 5, 0), "Cannot VRFY user, but will accept message")
QUIT_OK = Reply(221, (2, 0, 0), "Bye")
AUTH_OK = Reply(235, (2, 7, 0), "Authentication successful")
START_DATA = Reply(354, None, "Go ahead. End your data with <CR><LF>.<CR><LF>")
START_TLS = Reply(220, (2, 0, 0), "Ready to start TLS")

# Sequence errors: RFC 5321 §4.1.4 answers commands in the wrong order with 503.
NEED_HELO_FIRST = Reply(503, (5, 5, 1), "Please introduce yourself first")
MISSING_MAIL = Reply(503, (5, 5, 1), "Missing MAIL FROM command")
MISSING_RCPT = Reply(503, (5, 5, 1), "Missing RCPT TO command")
NESTED_MAIL = Reply(503, (5, 5, 1), "Nested MAIL command")
RCPT_AFTER_BDAT = Reply(503, (5, 5, 1), "RCPT is not allowed after BDAT")
DATA_AFTER_BDAT = Reply(503, (5, 5, 1), "DATA is not allowed after BDAT")
AUTH_IN_TRANSACTION = Reply(503, (5, 5, 1), "AUTH is not allowed during a mail transaction")
STARTTLS_IN_TRANSACTION = Reply(503, (5, 5, 1), "STARTTLS is not allowed during a mail transaction")
ALREADY_AUTHENTICATED = Reply(503, (5, 5, 1), "Already authenticated")
ALREADY_TLS = Reply(503, (5, 5, 1), "Already running in TLS")

# Syntax and availability errors.
UNKNOWN_COMMAND = Reply(500, (5, 5, 2), "Syntax error, command unrecognized")
NOT_IMPLEMENTED = Reply(502, (5, 5, 1), "Command not implemented")
BAD_LINE = Reply(500, (5, 5, 2), "Command line is not valid UTF-8 or contains a bare CR or LF")
LMTP_NEEDS_LHLO = Reply(500, (5, 5, 1), "This is a LMTP server, use LHLO")
NOT_LMTP = Reply(500, (5, 5, 1), "This is not a LMTP server")
HELO_SYNTAX = Reply(501, (5, 5, 4), "Domain/address argument required")
VRFY_SYNTAX = Reply(501, (5, 5, 4), "Syntax: VRFY <address>")
BDAT_SYNTAX = Reply(501, (5, 5, 4), "Syntax: BDAT <size> [LAST], closing connection")


def no_arguments(verb: str) -> Reply:
    return Reply(501, (5, 5, 4), f"Syntax: {verb} (no arguments allowed)")


def help_text(lmtp: bool, *, starttls: bool = True, auth: bool = True) -> Reply:
    """The commands this session can use (RFC 5321 §4.1.1.8)."""
    verbs = ["LHLO"] if lmtp else ["EHLO", "HELO"]
    verbs += ["MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "HELP"]
    verbs += ["STARTTLS"] if starttls else []
    verbs += ["AUTH"] if auth else []
    return Reply(214, (2, 0, 0), "Commands: " + " ".join(verbs))


# Authentication (RFC 4954 §4 and §6).
AUTH_REQUIRED = Reply(530, (5, 7, 0), "Authentication required")
AUTH_NEEDS_TLS = Reply(523, (5, 7, 10), "TLS is required")
AUTH_UNKNOWN_MECHANISM = Reply(504, (5, 5, 4), "Unsupported authentication mechanism")
AUTH_CANCELLED = Reply(501, (5, 0, 0), "Authentication cancelled")

# Limits.
TOO_LONG_LINE = Reply(500, (5, 4, 0), "Too long line, closing connection")
MESSAGE_TOO_BIG = Reply(552, (5, 3, 4), "Max message size exceeded")
HEADER_TOO_BIG = Reply(552, (5, 3, 4), "Message header size exceeds limit")
TOO_MANY_ERRORS = Reply(421, (4, 7, 0), "Too many bad commands, closing connection")


# --- Parsing replies (the client side). -------------------------------------------

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)", re.DOTALL)
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")


def malformed_reply(line: bytes) -> SMTPError:
    # A server that answers gibberish may be fine tomorrow: treat it as temporary.
    return SMTPError(451, (4, 5, 0), f"Malformed reply from the server: {line[:80]!r}")


def parse_reply_line(line: bytes) -> tuple[int, bool, str]:
    """Split one reply line (without CRLF) into (code, is_last_line, text)."""
    match = _REPLY_LINE.fullmatch(line)
    if match is None:
        raise malformed_reply(line)
    code, separator, text = match.groups()
    if separator == b"" and text:
        raise malformed_reply(line)
    return int(code), separator != b"-", text.decode("utf-8", errors="replace")


class ReplyParser:
    """Collects reply lines until a reply is complete (RFC 5321 §4.2.1)."""

    def __init__(self) -> None:
        self._code: int | None = None
        self._texts: list[str] = []

    def feed_line(self, line: bytes) -> Reply | None:
        """Take one line without its CRLF; return the Reply when it is the last one."""
        code, last, text = parse_reply_line(line)
        if self._code is not None and code != self._code:
            raise malformed_reply(line)
        self._code = code
        self._texts.append(text)
        if not last:
            return None
        texts, self._code, self._texts = self._texts, None, []
        return _build_reply(code, texts)


def _build_reply(code: int, texts: list[str]) -> Reply:
    """Take the enhanced code off the lines when the first line carries a valid one."""
    match = _ENHANCED.match(texts[0])
    if match is None or int(match.group(1)) != code // 100 or code // 100 == 3:
        return Reply(code, None, "\n".join(texts))
    enhanced = tuple(int(part) for part in match.groups())
    stripped = []
    for text in texts:
        found = _ENHANCED.match(text)
        stripped.append(text[found.end():] if found else text)
    return Reply(code, enhanced, "\n".join(stripped))

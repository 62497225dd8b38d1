"""The arguments of MAIL, RCPT and BDAT, checked and turned into typed values.

Whether a command may be given now is the server machine's business; this module
only knows what a well-formed argument looks like. Failures are SMTPErrors.
"""

from __future__ import annotations

import re

from gmta.errors import SMTPError
from gmta.proto import replies
from gmta.proto.events import BodyType, DsnReturn, Mail, Notify, Rcpt
from gmta.proto.grammar import parse_forward_path, parse_params, parse_reverse_path, xtext_decode

_NUMBER = re.compile(r"[0-9]{1,18}")  # 18 digits: any larger size is nonsense anyway
_BDAT = re.compile(r"([0-9]{1,18})(?: +(LAST))?", re.IGNORECASE)
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")


def _expecting(verb: str, keyword: str) -> SMTPError:
    return SMTPError(501, (5, 5, 2), f"Was expecting {verb} arg syntax of {keyword}<address>")


def _bad_value(key: str) -> SMTPError:
    return SMTPError(501, (5, 5, 4), f"Invalid {key} parameter")


def _unsupported(key: str) -> SMTPError:
    # RFC 5321 §4.1.1.11: 555 is for parameters not recognised or not implemented.
    return SMTPError(555, (5, 5, 4), f"Unsupported parameter {key}")


def _split_path(argument: str, keyword: str, verb: str) -> str:
    """Strip ``FROM:``/``TO:``; return the text from the ``<`` on."""
    if argument[:len(keyword)].upper() != keyword:
        raise _expecting(verb, keyword)
    # RFC 5321 has no space after the colon, but many clients send one.
    path = argument[len(keyword):].lstrip(" ")
    if not path.startswith("<"):
        raise _expecting(verb, keyword)
    return path


def _parameters(rest: str, *, esmtp: bool, verb: str, keyword: str) -> dict[str, str | None]:
    if rest and not rest.startswith(" "):
        raise _expecting(verb, keyword)
    params = parse_params(rest)
    if params and not esmtp:
        # RFC 5321 §2.2.1: service extensions exist only in sessions opened with EHLO.
        raise SMTPError(555, (5, 5, 4), "Parameters are not allowed after HELO")
    return params


def _value(key: str, value: str | None) -> str:
    if value is None:
        raise _bad_value(key)
    return value


def _flag(key: str, value: str | None) -> bool:
    if value is not None:
        raise _bad_value(key)
    return True


_DSN_PARAMETERS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})


def parse_mail(argument: str, *, esmtp: bool, max_message_size: int, tls_active: bool,
               dsn: bool = True) -> Mail:
    """The argument of MAIL (``FROM:<path> [params]``) as a Mail event."""
    address, rest = parse_reverse_path(_split_path(argument, "FROM:", "MAIL"))
    fields: dict[str, object] = {}
    for key, value in _parameters(rest, esmtp=esmtp, verb="MAIL", keyword="FROM:").items():
        if key in _DSN_PARAMETERS and not dsn:
            # RFC 5321 §4.1.1.11: parameters of an extension not offered are refused.
            raise _unsupported(key)
        match key:
            case "SIZE":
                # RFC 1870 §6: a declared size over our limit is refused at once.
                if not _NUMBER.fullmatch(_value(key, value)):
                    raise _bad_value(key)
                if int(value) > max_message_size:
                    raise replies.MESSAGE_TOO_BIG.to_error()
                fields["size"] = int(value)
            case "BODY":
                body = _value(key, value).upper()
                if body == BodyType.BINARY_MIME:
                    # RFC 3030 §3: BINARYMIME is only for servers that advertise it.
                    raise _unsupported("BODY=BINARYMIME")
                if body not in (BodyType.SEVEN_BIT, BodyType.EIGHT_BIT_MIME):
                    raise _bad_value(key)
                fields["body"] = BodyType(body)
            case "SMTPUTF8":
                fields["smtputf8"] = _flag(key, value)
            case "REQUIRETLS":
                # RFC 8689 §2: only offered, hence only valid, over TLS.
                if not tls_active:
                    raise _unsupported(key)
                fields["requiretls"] = _flag(key, value)
            case "AUTH":
                # RFC 4954 §5: whether to trust it is the driver's decision.
                fields["auth"] = xtext_decode(_value(key, value))
            case "RET":
                ret = _value(key, value).upper()
                if ret not in (DsnReturn.FULL, DsnReturn.HEADERS):
                    raise _bad_value(key)
                fields["ret"] = DsnReturn(ret)
            case "ENVID":
                envid = xtext_decode(_value(key, value))
                if len(envid) > 100:  # RFC 3461 §4.4
                    raise _bad_value(key)
                fields["envid"] = envid
            case _:
                raise _unsupported(key)
    if not address.isascii() and not fields.get("smtputf8"):
        # RFC 6531 §3.5: UTF-8 addresses only in an SMTPUTF8 transaction.
        raise SMTPError(550, (5, 6, 7), "SMTPUTF8 is required for non-ASCII senders")
    return Mail(address, **fields)


def parse_rcpt(argument: str, *, esmtp: bool, smtputf8: bool, dsn: bool = True) -> Rcpt:
    """The argument of RCPT (``TO:<path> [params]``) as a Rcpt event."""
    address, rest = parse_forward_path(_split_path(argument, "TO:", "RCPT"))
    fields: dict[str, object] = {}
    for key, value in _parameters(rest, esmtp=esmtp, verb="RCPT", keyword="TO:").items():
        if key in _DSN_PARAMETERS and not dsn:
            raise _unsupported(key)
        match key:
            case "NOTIFY":
                fields["notify"] = _notify(_value(key, value))
            case "ORCPT":
                # RFC 3461 §4.2: addr-type ";" xtext.
                addr_type, semicolon, original = _value(key, value).partition(";")
                if not semicolon or not _ADDR_TYPE.fullmatch(addr_type):
                    raise _bad_value(key)
                fields["orcpt"] = (addr_type, xtext_decode(original))
            case _:
                raise _unsupported(key)
    if not address.isascii() and not smtputf8:
        raise SMTPError(553, (5, 6, 7), "SMTPUTF8 is required for non-ASCII recipients")
    return Rcpt(address, **fields)


def _notify(value: str) -> frozenset[Notify]:
    """RFC 3461 §4.1: NEVER alone, or a list of SUCCESS, FAILURE and DELAY."""
    try:
        notify = frozenset(Notify(word) for word in value.upper().split(","))
    except ValueError:
        raise _bad_value("NOTIFY") from None
    if Notify.NEVER in notify and len(notify) > 1:
        raise _bad_value("NOTIFY")
    return notify


def parse_bdat(argument: str) -> tuple[int, bool]:
    """``"1000 LAST"`` → ``(1000, True)`` (RFC 3030 §2)."""
    match = _BDAT.fullmatch(argument)
    if match is None:
        raise replies.BDAT_SYNTAX.to_error()
    return int(match.group(1)), match.group(2) is not None

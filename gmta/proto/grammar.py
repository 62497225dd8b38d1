"""The SMTP grammar shared by the server and the client machines.

Paths and mailboxes (RFC 5321 §4.1.2, with the UTF-8 extensions of RFC 6531 §3.3),
domains and address literals (RFC 5321 §4.1.3), ESMTP parameters (RFC 5321 §4.1.2
``esmtp-param``), xtext (RFC 3461 §4), IDNA conversions and address normalisation.

Addresses travel as plain strings: ``"local@domain"`` as written on the wire (a quoted
local part keeps its quotes), ``""`` for the null reverse path ``<>`` and
``"postmaster"`` for the bare postmaster. Every parse failure is an SMTPError with the
reply the server should give.

IDNA uses the stdlib ``idna`` codec, which implements IDNA 2003 (RFC 3490): it maps a
few characters IDNA 2008 keeps (``ß`` becomes ``ss``). That is the price of no
third-party dependency here.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata

from gmta.errors import SMTPError

# RFC 6531 §3.3 adds UTF8-non-ascii to atext, qtextSMTP and sub-domain.
_NON_ASCII = "\u0080-\U0010ffff"
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_NON_ASCII}]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED_STRING = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_NON_ASCII}]|\\[\x20-\x7e])*"'
# Loose on purpose: labels are checked by _check_domain, which also does IDNA.
_DOMAIN = rf"[A-Za-z0-9\-{_NON_ASCII}]+(?:\.[A-Za-z0-9\-{_NON_ASCII}]+)*"
# dcontent (RFC 5321 §4.1.3) is %d33-90 / %d94-126: printable ASCII except [ \ ].
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]*\]"
_MAILBOX = rf"(?P<local>{_DOT_STRING}|{_QUOTED_STRING})@(?P<domain>{_DOMAIN}|{_LITERAL})"
# RFC 5321 §4.1.2 A-d-l: a source route "@a,@b:" that §C says to accept and ignore.
_SOURCE_ROUTE = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"
_PATH = re.compile(rf"<(?:{_SOURCE_ROUTE})?{_MAILBOX}>")
_POSTMASTER = re.compile(r"<postmaster>", re.IGNORECASE)

_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9\-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
# esmtp-value: any CHAR but "=", SP and controls; RFC 6531 §3.3 adds UTF-8.
_ESMTP_VALUE = re.compile(rf"[\x21-\x3c\x3e-\x7e{_NON_ASCII}]+")

def _bad_path(*, sender: bool) -> SMTPError:
    # RFC 3463 §3.2: X.1.7 is a bad sender mailbox syntax, X.1.3 a bad destination one.
    if sender:
        return SMTPError(501, (5, 1, 7), "Bad sender address syntax")
    return SMTPError(501, (5, 1, 3), "Bad recipient address syntax")


def _bad_params(text: str) -> SMTPError:
    return SMTPError(501, (5, 5, 4), text)


# --- Paths. ----------------------------------------------------------------------

def parse_reverse_path(text: str) -> tuple[str, str]:
    """Parse the ``<...>`` after ``MAIL FROM:``; return (address, rest of the line).

    ``<>`` gives ``""``. The bare ``<postmaster>`` is accepted as maddy does.
    """
    if text.startswith("<>"):
        return "", text[2:]
    return _parse_path(text, sender=True)


def parse_forward_path(text: str) -> tuple[str, str]:
    """Parse the ``<...>`` after ``RCPT TO:``; return (address, rest of the line)."""
    return _parse_path(text, sender=False)


def _parse_path(text: str, *, sender: bool) -> tuple[str, str]:
    # RFC 5321 §4.1.1.3: "<Postmaster>" without a domain must be accepted.
    postmaster = _POSTMASTER.match(text)
    if postmaster:
        return "postmaster", text[postmaster.end():]
    match = _PATH.match(text)
    if match is None:
        raise _bad_path(sender=sender)
    domain = match.group("domain")
    try:
        check_domain_or_literal(domain)
    except SMTPError:
        raise _bad_path(sender=sender) from None
    return f"{match.group('local')}@{domain}", text[match.end():]


def split_address(address: str) -> tuple[str, str]:
    """``"a@b"`` → ``("a", "b")``; the bare postmaster and ``""`` have no domain.

    The domain is after the last ``@``: a quoted local part may hold ``@``, a domain
    never does.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain


# --- Domains. --------------------------------------------------------------------

def check_domain_or_literal(text: str) -> None:
    """Raise SMTPError(501 5.1.2) unless ``text`` is a domain or an address literal."""
    if text.startswith("["):
        _check_address_literal(text)
    else:
        domain_to_ascii(text)


def _check_address_literal(text: str) -> None:
    """``[1.2.3.4]``, ``[IPv6:...]`` or a general ``[tag:content]`` literal (§4.1.3)."""
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            # ipaddress accepts "%scope" suffixes that the RFC grammar does not.
            if "%" in inner:
                raise ValueError(inner)
            ipaddress.IPv6Address(inner[5:])
        elif not _GENERAL_LITERAL.fullmatch(inner):
            ipaddress.IPv4Address(inner)
    except ValueError:
        raise _bad_domain(text) from None


def _bad_domain(domain: str) -> SMTPError:
    return SMTPError(501, (5, 1, 2), f"Invalid domain name {domain[:80]!r}")


# The few domains of a server's traffic come back in every message (EHLO, MAIL,
# RCPT, routing), and IDNA conversion costs more than the rest of a command's
# parsing: a bounded cache of successes (a failure raises, and is not kept).
_DOMAIN_CACHE = 512


@functools.lru_cache(maxsize=_DOMAIN_CACHE)
def domain_to_ascii(domain: str) -> str:
    """The A-label form of a domain (IDNA ToASCII), checked against RFC 5321 §4.1.2.

    Labels must be letters, digits and inner hyphens, at most 63 octets; the name at
    most 255 octets (RFC 5321 §4.5.3.1.2).
    """
    if domain.isascii():
        ascii_domain = domain
    else:
        try:
            ascii_domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise _bad_domain(domain) from None
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 255 or not all(
            len(label) <= 63 and _LDH_LABEL.fullmatch(label) for label in labels):
        raise _bad_domain(domain)
    return ascii_domain


def domain_to_unicode(domain: str) -> str:
    """The U-label form of a domain (IDNA ToUnicode); literals are returned as they are."""
    if domain.startswith("["):
        return domain
    try:
        # The codec only recognises a lower-case "xn--" prefix.
        return domain.lower().encode("idna").decode("idna")
    except UnicodeError:
        raise _bad_domain(domain) from None


def address_to_ascii(address: str) -> str:
    """The address with an A-label domain, for a peer without SMTPUTF8.

    A non-ASCII local part has no ASCII form (RFC 6531 §3.2 forbids downgrading it).
    """
    local, domain = split_address(address)
    if not local.isascii():
        raise SMTPError(553, (5, 6, 7), "Non-ASCII local part needs SMTPUTF8")
    if not domain or domain.startswith("["):
        return address
    return f"{local}@{domain_to_ascii(domain)}"


# --- Normalisation (a separate step: parsing keeps what the client wrote). ---------

@functools.lru_cache(maxsize=_DOMAIN_CACHE)
def normalize_domain(domain: str) -> str:
    """U-label, lower case, NFC: the form the pipeline compares and routes on."""
    return unicodedata.normalize("NFC", domain_to_unicode(domain).lower())


def normalize_address(address: str, *, sender: bool = False) -> str:
    """Normalise an address for lookups: NFC local part, normalised domain.

    The local part keeps its case (RFC 5321 §2.4), except the reserved ``postmaster``
    which is case-insensitive. The errors are maddy's: 553 5.1.7 for a sender,
    501 5.1.2 for a recipient.
    """
    local, domain = split_address(address)
    local = unicodedata.normalize("NFC", local)
    if local.lower() == "postmaster":
        local = "postmaster"
    if not domain:
        return local
    try:
        domain = normalize_domain(domain)
    except SMTPError:
        if sender:
            raise SMTPError(553, (5, 1, 7), "Unable to normalize the sender address") from None
        raise SMTPError(501, (5, 1, 2), "Unable to normalize the recipient address") from None
    return f"{local}@{domain}"


# --- ESMTP parameters. -----------------------------------------------------------

def parse_params(text: str) -> dict[str, str | None]:
    """``"SIZE=10 SMTPUTF8"`` → ``{"SIZE": "10", "SMTPUTF8": None}``; keys upper-cased.

    Raises 501 5.5.4 on a malformed or repeated parameter (RFC 5321 §4.1.2).
    """
    params: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue  # be liberal about repeated spaces between parameters
        keyword, equals, value = word.partition("=")
        if not _ESMTP_KEYWORD.fullmatch(keyword) or (equals and not _ESMTP_VALUE.fullmatch(value)):
            raise _bad_params(f"Malformed parameter {word[:40]!r}")
        keyword = keyword.upper()
        if keyword in params:
            raise _bad_params(f"Duplicate parameter {keyword}")
        params[keyword] = value if equals else None
    return params


# --- xtext (RFC 3461 §4). ----------------------------------------------------------

_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})*")
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_decode(text: str) -> str:
    """Decode xtext; the octets must form UTF-8. Raises 501 5.5.4 when malformed.

    RFC 3461 asks for upper-case hex digits; lower case is accepted (robustness).
    """
    if not _XTEXT.fullmatch(text):
        raise _bad_params(f"Malformed xtext {text[:40]!r}")
    pieces = bytearray()
    position = 0
    for match in _HEXCHAR.finditer(text):
        pieces += text[position:match.start()].encode("ascii")
        pieces.append(int(match.group(1), 16))
        position = match.end()
    pieces += text[position:].encode("ascii")
    try:
        return pieces.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_params(f"xtext is not UTF-8: {text[:40]!r}") from None


def xtext_encode(text: str) -> str:
    """Encode as xtext: "+", "=", controls, space and non-ASCII octets become +HH."""
    out = []
    for octet in text.encode("utf-8"):
        if 33 <= octet <= 126 and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)

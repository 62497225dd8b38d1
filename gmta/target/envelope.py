"""What a forwarding target sends with MAIL, RCPT and the content, given what the server offers.

Shared by ``target.smtp``/``target.lmtp`` (one smarthost) and ``target.remote``
(MX hosts): the ESMTP parameters that travel on (SMTPUTF8, 8BITMIME, SIZE, DSN),
address conversion for servers without SMTPUTF8, and the checks on the content
before it is sent. REQUIRETLS is not here: when it may be passed on is each
target's own rule (a smarthost must offer it over TLS; an MX is judged by the
security levels, RFC 8689 §4.2.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gmta.buffer import Buffer
from gmta.errors import SMTPError
from gmta.net.client import SMTPClient
from gmta.proto.grammar import address_to_ascii, xtext_encode

#: Message content read from the buffer per write.
PIECE_SIZE = 64 * 1024


@dataclass
class MailParameters:
    """MAIL's parameters for one server, and what was decided while choosing them."""

    params: dict[str, str | None]
    #: SMTPUTF8 is used on this session: addresses go as they are.
    smtputf8: bool
    #: The client declared BODY=8BITMIME or BINARYMIME.
    declared_8bit: bool


def mail_parameters(client: SMTPClient, mail_params: dict, mail_from: str) -> MailParameters:
    """The MAIL parameters to give *client* for a message received with *mail_params*."""
    params: dict[str, str | None] = {}
    wants_utf8 = bool(mail_params.get("smtputf8")) or not mail_from.isascii()
    # RFC 6531 §3.4: SMTPUTF8 goes on to a server that has it; otherwise the
    # addresses are converted to A-label domains, and a non-ASCII local part
    # cannot be (553 5.6.7), as maddy does (maddy-behaviour §2.5).
    smtputf8 = wants_utf8 and client.supports("SMTPUTF8")
    if smtputf8:
        params["SMTPUTF8"] = None
    body_type = (mail_params.get("body") or "").upper()
    declared_8bit = body_type in ("8BITMIME", "BINARYMIME")
    if declared_8bit and client.supports("8BITMIME"):
        params["BODY"] = "8BITMIME"   # RFC 6152 §2 (BINARYMIME travels as 8BITMIME)
    size = mail_params.get("size")
    if size and client.supports("SIZE"):
        params["SIZE"] = str(size)   # RFC 1870 §6
    if client.supports("DSN"):
        # RFC 3461 §4: the DSN parameters go on to a server that understands them.
        if mail_params.get("ret"):
            params["RET"] = str(mail_params["ret"])
        if mail_params.get("envid"):
            params["ENVID"] = xtext_encode(mail_params["envid"])
    return MailParameters(params, smtputf8, declared_8bit)


def rcpt_parameters(client: SMTPClient, params: dict | None) -> dict[str, str | None]:
    """RCPT's parameters: NOTIFY and ORCPT to a server that offers DSN (RFC 3461 §4)."""
    params = params or {}
    result: dict[str, str | None] = {}
    if client.supports("DSN"):
        if params.get("notify"):
            result["NOTIFY"] = ",".join(params["notify"])
        if params.get("orcpt"):
            addr_type, original = params["orcpt"]
            result["ORCPT"] = f"{addr_type};{xtext_encode(original)}"
    return result


def server_address(address: str, smtputf8: bool, *, sender: bool = False,
                   server: str = "the downstream server") -> str:
    """*address* as a server without SMTPUTF8 can take it (A-label domain), or as it is."""
    if smtputf8 or address.isascii() or not address:
        return address
    try:
        return address_to_ascii(address)
    except SMTPError as error:
        code = 550 if sender else 553
        raise SMTPError(code, (5, 6, 7), f"SMTPUTF8 is unsupported by {server}: "
                                         f"{error.text}") from None


def peer_ip(peer: str) -> str | None:
    """The IP of the endpoint's ``host:port`` / ``[v6]:port`` peer text (limits' ip scope)."""
    host, colon, _ = peer.rpartition(":")
    if not colon:
        return None
    return host.strip("[]") or None


def temporary_552(error: SMTPError) -> SMTPError:
    """RFC 5321 §4.5.3.1.10: a 552 to RCPT means "too many recipients", i.e. 452."""
    if error.code != 552:
        return error
    return SMTPError(452, (4, *error.enhanced[1:]), error.text)


def is_8bit(header: bytes, body: Buffer) -> bool:
    if max(header, default=0) > 127:
        return True
    with body.open() as stream:
        while piece := stream.read(1 << 16):
            if not piece.isascii():
                return True
    return False


def check_content(client: SMTPClient, declared_8bit: bool, header: bytes, body: Buffer,
                  server: str = "the downstream server") -> None:
    """Refuse content *client*'s server cannot take, before sending any of it."""
    # RFC 6152 §3: 8-bit content to a server without 8BITMIME must be converted
    # or returned; gmta does not convert (RFC 3463 X.6.3: conversion required
    # but not supported).
    if declared_8bit and not client.supports("8BITMIME") and is_8bit(header, body):
        raise SMTPError(554, (5, 6, 3), f"8-bit content, but {server} does not support "
                                        "8BITMIME")
    limit = client.machine.max_message_size
    size = len(header) + body.size
    if limit is not None and size > limit:
        # RFC 1870 §6.1: the server said beforehand it would refuse this size.
        raise SMTPError(552, (5, 3, 4), f"Message too big for {server} "
                                        f"({size} > {limit} bytes)")


def content_pieces(header: bytes, body: Buffer) -> Iterator[bytes]:
    yield header
    with body.open() as stream:
        while piece := stream.read(PIECE_SIZE):
            yield piece

"""The HAProxy PROXY protocol header, versions 1 and 2, without any I/O (the h11 model).

A load balancer in front of an endpoint (``proxy_protocol`` in its block) writes one
header before the SMTP bytes, naming the client it relays. The reference is "The PROXY
protocol, Versions 1 & 2" (haproxy ``doc/proxy-protocol.txt``, revision 2020/03/05);
"spec §x" below is a section of it.

How a driver uses it
--------------------
* ``receive_data(bytes)`` hands over what the socket read.
* ``next_result()`` returns ``NEED_DATA`` while the header is incomplete, then the
  ``ProxyHeader``. It raises ``ProxyProtocolError`` as soon as the bytes can no longer
  become a header (spec §2.1: abort "as soon as possible" so the sender notices). The
  answer is final: asking again gives the same header or raises the same error.
* ``ProxyHeader.remaining`` holds what was read past the header: the start of the SMTP
  session, for ``ServerConnection.receive_data``. Nothing is lost or read twice, whatever
  the recv sizes. (aiosmtpd's v2 reader takes each part with a single ``read(n)``, which
  may return less, so a header split across segments is misread.)
* The input held while ``NEED_DATA`` is returned is at most ``max_header_size`` bytes:
  ``max_v1_length`` for v1, 16 + ``max_v2_length`` for v2. A v2 length field above the
  bound is refused when it arrives, not waited for.
* Spec §2: the receiver "MUST NOT start processing the connection" (no 220 banner)
  before the header is complete, and may drop a connection whose header is late (a
  timeout of at least 3 seconds). Both are the driver's business.
* Spec §2 and §5: an endpoint configured for the protocol requires the header on every
  connection (never guess whether one is there), and believes its addresses only from
  known proxies. As maddy does, the header is read from every peer and its addresses are
  used only when ``trusted(peer_ip, networks)``; an empty list trusts everyone.

A driver loop::

    parser = ProxyHeaderParser()
    with gevent.Timeout(10):                      # spec §2: at least 3 seconds
        while (header := parser.next_result()) is NEED_DATA:
            data = sock.recv(4096)
            if not data:
                raise ConnectionClosed()          # hung up before the header ended
            parser.receive_data(data)             # ProxyProtocolError: log, close
    client = peer
    if not header.is_local and trusted(peer[0], networks):
        client = header.source
    conn = ServerConnection(hostname)
    conn.receive_data(header.remaining)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from gmta.errors import GmtaError
from gmta.proto.events import NEED_DATA
from gmta.proto.server import LocalProtocolError

__all__ = [
    "V1_MAX_LENGTH", "V2_MAX_LENGTH", "V2_SIGNATURE", "ProxyHeader", "ProxyHeaderParser",
    "ProxyProtocolError", "ProxySSL", "crc32c", "trusted",
]

# Spec §2.1: the longest line a receiver must take, CRLF included (UNKNOWN with two
# full IPv6 addresses and ports); "PROXY UNKNOWN\r\n" is the shortest.
V1_MAX_LENGTH = 107
_V1_MIN_LENGTH = 15
_V1_PREFIX = b"PROXY "
# Spec §2.2: the v2 signature, then version/command, family/transport and a 16-bit length.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED_SIZE = 16
# The length field could announce 65535 bytes; a header needs the addresses (216 bytes
# at most, AF_UNIX) and a few TLVs, so more than this is refused rather than awaited.
V2_MAX_LENGTH = 4096

# Spec §2.2, 13th byte: the high nibble is the version, the low one the command.
_VERSION_2 = 0x2
_LOCAL = 0x0
_PROXY = 0x1
# Spec §2.2, 14th byte: address family (high nibble) and transport (low nibble), with
# the families named as v1 names them. Other values "must be rejected as invalid".
_FAMILY_UNSPEC = 0x0
_FAMILY_UNIX = 0x3
_FAMILIES = {0x0: "UNKNOWN", 0x1: "TCP4", 0x2: "TCP6", 0x3: "UNIX"}
_TRANSPORT_UNSPEC = 0x0
_TRANSPORTS = {0x0: "UNSPEC", 0x1: "STREAM", 0x2: "DGRAM"}
# Spec §2.2: two addresses and two ports (IPv4 2*4+2*2, IPv6 2*16+2*2), or two 108-byte
# AF_UNIX paths.
_ADDRESS_SIZES = {0x1: 12, 0x2: 36, 0x3: 216}
_UNIX_PATH_SIZE = 108

# Spec §2.2: the registered TLV types.
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30
# Spec §2.2.6: the bits of the SSL TLV's client field.
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04
# Spec §2.2.5: "an opaque byte sequence of up to 128 bytes".
_UNIQUE_ID_MAX = 128
_TLV_HEADER_SIZE = 3     # spec §2.2: type, length_hi, length_lo
_SSL_FIXED_SIZE = 5      # spec §2.2.6: client (1 byte), verify (4 bytes)
_CRC32C_SIZE = 4         # spec §2.2.3: "a 32-bit number"


class ProxyProtocolError(GmtaError):
    """The peer sent something that is not exactly a PROXY header: drop the connection.

    Spec §2.1: "Any sequence which does not exactly match the protocol must be discarded
    and cause the receiver to abort the connection." ``reason`` is for the log line.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ProxySSL:
    """The PP2_TYPE_SSL TLV (spec §2.2.6): the TLS the client spoke to the proxy."""
    client: int                          # PP2_CLIENT_* bits
    verify: int                          # 0: the client certificate, if any, verified
    version: str | None = None           # PP2_SUBTYPE_SSL_VERSION, e.g. "TLSv1.3"
    common_name: str | None = None       # PP2_SUBTYPE_SSL_CN of the client certificate
    tlvs: dict[int, bytes] = field(default_factory=dict)   # every sub-TLV, raw

    @property
    def tls(self) -> bool:
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def client_certificate(self) -> bool:
        return bool(self.client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS))

    @property
    def certificate_verified(self) -> bool:
        # A zero verify alone proves nothing: OpenSSL reports X509_V_OK when no
        # certificate was presented, and HAProxy forwards that result as it is.
        return self.client_certificate and self.verify == 0


@dataclass(frozen=True)
class ProxyHeader:
    """A complete, valid PROXY header.

    ``source`` and ``destination`` are ``(host, port)`` for TCP4/TCP6 (the host in
    ipaddress's canonical text; an IPv4-mapped one stays TCP6), the raw ``bytes`` path for
    UNIX (a Linux abstract name keeps its leading NUL), and None when ``is_local``.
    ``tlvs`` maps each v2 TLV type to its raw value (NOOP padding left out); the ones
    gmta uses are decoded into ``ssl`` and ``authority``.
    """
    version: int                                   # 1 or 2
    command: str                                   # "PROXY" or "LOCAL" (v2 only)
    family: str                                    # "TCP4", "TCP6", "UNIX", "UNKNOWN"
    source: tuple[str, int] | bytes | None = None
    destination: tuple[str, int] | bytes | None = None
    transport: str = "STREAM"                      # "STREAM", "DGRAM" or "UNSPEC"
    tlvs: dict[int, bytes] = field(default_factory=dict)
    ssl: ProxySSL | None = None                    # PP2_TYPE_SSL
    authority: str | None = None                   # PP2_TYPE_AUTHORITY (the client's SNI)
    remaining: bytes = field(default=b"", repr=False)   # the SMTP bytes after the header

    @property
    def is_local(self) -> bool:
        """The header names no relayed client: the real peer address applies.

        Spec §2.2: LOCAL is the proxy's own connection (a health check); UNSPEC, and
        v1 UNKNOWN (§2.1), mean "use the real connection's parameters". DGRAM is a valid
        combination gmta does not serve (SMTP is a stream), and §2.2 says to fall back to
        the UNSPEC behaviour for those.
        """
        return self.command == "LOCAL" or self.family == "UNKNOWN" or self.transport != "STREAM"


class ProxyHeaderParser:
    """Reads one PROXY header, v1 or v2, from the start of a connection."""

    def __init__(self, max_v1_length: int = V1_MAX_LENGTH, max_v2_length: int = V2_MAX_LENGTH):
        # Below these, valid headers could not be read at all: the shortest v1 line
        # ("PROXY UNKNOWN\r\n") or the largest v2 address block (two AF_UNIX paths).
        if max_v1_length < _V1_MIN_LENGTH or max_v2_length < _ADDRESS_SIZES[_FAMILY_UNIX]:
            raise ValueError("PROXY header limits too small for valid headers")
        self.max_v1_length = max_v1_length
        self.max_v2_length = max_v2_length
        self._input = bytearray()
        self._header: ProxyHeader | None = None
        self._error: ProxyProtocolError | None = None

    @property
    def max_header_size(self) -> int:
        """The most input held while ``next_result()`` returns NEED_DATA."""
        return max(self.max_v1_length, _V2_FIXED_SIZE + self.max_v2_length)

    @property
    def buffered_bytes(self) -> int:
        """Input held back; at most ``max_header_size`` whenever NEED_DATA is returned."""
        return len(self._input)

    def receive_data(self, data: bytes) -> None:
        if self._header is not None:
            # Bytes after the header belong to the SMTP machine; taking them here
            # would lose them.
            raise LocalProtocolError("the PROXY header is complete: feed the SMTP machine")
        if self._error is None:   # after an error the connection is being dropped
            self._input += data

    def next_result(self) -> ProxyHeader | object:
        """``NEED_DATA`` or the ``ProxyHeader``; raises ``ProxyProtocolError``."""
        if self._header is not None:
            return self._header
        if self._error is not None:
            raise self._error
        try:
            header = self._parse()
        except ProxyProtocolError as error:
            self._error = error
            self._input = bytearray()
            raise
        if header is None:
            return NEED_DATA
        self._header = header
        self._input = bytearray()
        return header

    # --- Parsing. -----------------------------------------------------------------

    def _parse(self) -> ProxyHeader | None:
        if not self._input:
            return None
        # Spec §2.2 (end): v2 starts with "\r", v1 with "P"; anything else is "not
        # covered by this specification and the connection must be dropped". One byte
        # decides, so a client speaking SMTP to a proxy_protocol port fails at once.
        first = self._input[0]
        if first == _V1_PREFIX[0]:
            return self._parse_v1()
        if first == V2_SIGNATURE[0]:
            return self._parse_v2()
        raise ProxyProtocolError("not a PROXY protocol header")

    def _parse_v1(self) -> ProxyHeader | None:
        data = self._input
        # Spec §2.1: "PROXY" then exactly one space.
        if not _V1_PREFIX.startswith(bytes(data[:len(_V1_PREFIX)])):
            raise ProxyProtocolError("v1: the line does not start with 'PROXY '")
        window = bytes(data[:self.max_v1_length])
        cr = window.find(b"\r")
        lf = window.find(b"\n")
        # Spec §2.1: "must not tolerate a single CR or LF character to end the line".
        # CR and LF appear only as the final CRLF, even in an UNKNOWN line's tail.
        if lf != -1 and (cr == -1 or lf < cr):
            raise ProxyProtocolError("v1: LF without CR")
        if cr != -1 and cr + 1 < len(window):
            if window[cr + 1] != ord("\n"):
                raise ProxyProtocolError("v1: CR without LF")
            return _v1_header(window[:cr], bytes(data[cr + 2:]))
        # Spec §2.1: "If the CRLF sequence is not found in the first 107 characters,
        # the receiver should declare the line invalid."
        if len(data) >= self.max_v1_length:
            raise ProxyProtocolError(f"v1: no CRLF in the first {self.max_v1_length} bytes")
        return None

    def _parse_v2(self) -> ProxyHeader | None:
        data = self._input
        # Spec §2.2: the constant 12-byte signature (it holds a NUL, so no C strings).
        if not V2_SIGNATURE.startswith(bytes(data[:len(V2_SIGNATURE)])):
            raise ProxyProtocolError("v2: bad signature")
        if len(data) < 13:
            return None
        # Spec §2.2, 13th byte: the version "must always be sent as \x2 and the receiver
        # must only accept this value"; commands other than LOCAL and PROXY "must drop".
        if data[12] >> 4 != _VERSION_2:
            raise ProxyProtocolError(f"v2: version {data[12] >> 4} is not 2")
        command = data[12] & 0x0F
        if command not in (_LOCAL, _PROXY):
            raise ProxyProtocolError(f"v2: unknown command {command:#x}")
        if len(data) < 14:
            return None
        family = data[13] >> 4
        transport = data[13] & 0x0F
        # Spec §2.2, 14th byte: unknown families and transports "must be rejected as
        # invalid". LOCAL is exempt: its "protocol block including the family ... is
        # ignored".
        if command == _PROXY:
            if family not in _FAMILIES:
                raise ProxyProtocolError(f"v2: unknown address family {family:#x}")
            if transport not in _TRANSPORTS:
                raise ProxyProtocolError(f"v2: unknown transport {transport:#x}")
        if len(data) < _V2_FIXED_SIZE:
            return None
        # Spec §2.2, bytes 15-16: the length of what follows, in network order. Check it
        # now, so that a hostile length is refused instead of waited for.
        length = int.from_bytes(data[14:16], "big")
        if length > self.max_v2_length:
            raise ProxyProtocolError(f"v2: header length {length} over the limit "
                                     f"of {self.max_v2_length}")
        end = _V2_FIXED_SIZE + length
        # Spec §2.2: "The receiver must not start to parse an address before the whole
        # address block is received."
        if len(data) < end:
            return None
        header = bytes(data[:end])
        remaining = bytes(data[end:])
        if command == _LOCAL:
            # Spec §2.2: for LOCAL the receiver "must use the real connection endpoints
            # and discard the protocol block"; receivers "must not assume zero is
            # presented for LOCAL", so the length was honoured above.
            return ProxyHeader(2, "LOCAL", "UNKNOWN", transport="UNSPEC", remaining=remaining)
        if family == _FAMILY_UNSPEC or transport == _TRANSPORT_UNSPEC:
            # Spec §2.2: with UNSPEC "the receiver should ignore address information";
            # where TLVs would start is unknown then, so the whole block is skipped.
            return ProxyHeader(2, "PROXY", "UNKNOWN", transport="UNSPEC", remaining=remaining)
        size = _ADDRESS_SIZES[family]
        if length < size:
            raise ProxyProtocolError(f"v2: address block of {length} bytes, "
                                     f"{_FAMILIES[family]} needs {size}")
        source, destination = _v2_addresses(family, header[_V2_FIXED_SIZE:_V2_FIXED_SIZE + size])
        tlvs = _tlv_map(header, _V2_FIXED_SIZE + size, "TLV")
        if PP2_TYPE_CRC32C in tlvs:
            _check_crc32c(header, *tlvs[PP2_TYPE_CRC32C])
        values = {kind: value for kind, (_, value) in tlvs.items()}
        # Spec §2.2.5: a unique ID is "up to 128 bytes".
        if len(values.get(PP2_TYPE_UNIQUE_ID, b"")) > _UNIQUE_ID_MAX:
            raise ProxyProtocolError("v2: unique ID longer than 128 bytes")
        return ProxyHeader(
            2, "PROXY", _FAMILIES[family], source, destination, _TRANSPORTS[transport], values,
            ssl=_ssl(values[PP2_TYPE_SSL]) if PP2_TYPE_SSL in values else None,
            # Spec §2.2.2: the authority (SNI) is "an UTF8-encoded string".
            authority=_text(values, PP2_TYPE_AUTHORITY, "utf-8"),
            remaining=remaining)


# --- Version 1 (spec §2.1). --------------------------------------------------------

# Spec §2.1: IPv4 is "exactly 4 integers in the range [0..255]" with "exactly one dot"
# between them; "Heading zeroes are not permitted ... to avoid any possible confusion
# with octal numbers".
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rb"%s(?:\.%s){3}" % (_OCTET, _OCTET))
# Spec §2.1: IPv6 is groups of hex digits with at most one "::"; ipaddress checks that.
# Only these characters: no "%zone", which ipaddress would take. Dots stay allowed:
# inet_ntop, which senders such as HAProxy use, writes IPv4-mapped addresses as
# ::ffff:192.0.2.1 (ipaddress refuses heading zeroes in that part too).
_IPV6_CHARACTERS = re.compile(rb"[0-9A-Fa-f:.]+")
# Spec §2.1: ports are "in the range [0..65535]" without heading zeroes.
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")


def _v1_header(line: bytes, remaining: bytes) -> ProxyHeader:
    """Parse the line without its CRLF; the "PROXY " prefix is already checked."""
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        # Spec §2.1: after UNKNOWN "the receiver must ignore anything presented before
        # the CRLF" and use the real connection's parameters.
        return ProxyHeader(1, "PROXY", "UNKNOWN", transport="UNSPEC", remaining=remaining)
    fields = line.split(b" ")
    # Spec §2.1: every field is separated by "exactly one space".
    if b"" in fields:
        raise ProxyProtocolError("v1: fields must be separated by exactly one space")
    # Spec §2.1: "only TCP4 ... and TCP6 ... are allowed" besides UNKNOWN.
    if fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"v1: unknown protocol {fields[1]!r}")
    if len(fields) != 6:
        raise ProxyProtocolError("v1: expected protocol, two addresses and two ports")
    _, protocol, source, destination, source_port, destination_port = fields
    # Spec §2.1: "The advertised protocol family dictates what format to use."
    address = _v1_ipv4 if protocol == b"TCP4" else _v1_ipv6
    return ProxyHeader(1, "PROXY", protocol.decode("ascii"),
                       (address(source), _v1_port(source_port)),
                       (address(destination), _v1_port(destination_port)),
                       remaining=remaining)


def _v1_ipv4(text: bytes) -> str:
    if _IPV4.fullmatch(text) is None:
        raise ProxyProtocolError(f"v1: bad IPv4 address {text!r}")
    return str(ipaddress.IPv4Address(text.decode("ascii")))


def _v1_ipv6(text: bytes) -> str:
    if _IPV6_CHARACTERS.fullmatch(text) is not None:
        try:
            return str(ipaddress.IPv6Address(text.decode("ascii")))
        except ValueError:
            pass
    raise ProxyProtocolError(f"v1: bad IPv6 address {text!r}")


def _v1_port(text: bytes) -> int:
    if _PORT.fullmatch(text) is None or int(text) > 65535:
        raise ProxyProtocolError(f"v1: bad port {text!r}")
    return int(text)


# --- Version 2 (spec §2.2). --------------------------------------------------------

def _v2_addresses(family: int, block: bytes) -> tuple[tuple[str, int] | bytes, tuple[str, int] | bytes]:
    if family == _FAMILY_UNIX:
        return _unix_path(block[:_UNIX_PATH_SIZE]), _unix_path(block[_UNIX_PATH_SIZE:])
    # Spec §2.2: source address, destination address, source port, destination port,
    # all in network byte order; 4-byte addresses for IPv4, 16-byte for IPv6.
    width = (len(block) - 4) // 2
    ports = block[2 * width:]
    return ((str(ipaddress.ip_address(block[:width])), int.from_bytes(ports[:2], "big")),
            (str(ipaddress.ip_address(block[width:2 * width])), int.from_bytes(ports[2:], "big")))


def _unix_path(raw: bytes) -> bytes:
    """A 108-byte sun_path: a NUL-terminated path, or a Linux abstract name (leading NUL)."""
    if raw[:1] != b"\x00":
        return raw.split(b"\x00", 1)[0]
    name = raw[1:].rstrip(b"\x00")
    return b"\x00" + name if name else b""   # all NULs: an unnamed socket


def _tlv_map(data: bytes, start: int, what: str) -> dict[int, tuple[int, bytes]]:
    """The TLVs in ``data[start:]``: type -> (offset of the value in ``data``, value)."""
    found: dict[int, tuple[int, bytes]] = {}
    position = start
    while position < len(data):
        # Spec §2.2: each TLV is a type byte, a 2-byte length in network order and the
        # value; the TLVs must fill the rest of the header exactly.
        if len(data) - position < _TLV_HEADER_SIZE:
            raise ProxyProtocolError(f"v2: truncated {what} header")
        kind = data[position]
        value_start = position + _TLV_HEADER_SIZE
        position = value_start + int.from_bytes(data[position + 1:value_start], "big")
        if position > len(data):
            raise ProxyProtocolError(f"v2: {what} {kind:#04x} runs past the header")
        # Spec §2.2.4: NOOP "should be ignored when parsed" (padding; may repeat).
        if kind == PP2_TYPE_NOOP:
            continue
        # A second AUTHORITY or SSL would leave two answers to one question; no
        # sender writes one, so it is taken for a forgery or a broken proxy.
        if kind in found:
            raise ProxyProtocolError(f"v2: {what} {kind:#04x} given twice")
        found[kind] = (value_start, data[value_start:position])
    return found


def _check_crc32c(header: bytes, offset: int, value: bytes) -> None:
    # Spec §2.2.3: the CRC32c of the whole header computed with the checksum field set
    # to zeros; on a mismatch the receiver "MUST treat the TCP connection ... as invalid".
    if len(value) != _CRC32C_SIZE:
        raise ProxyProtocolError("v2: CRC32C TLV is not 4 bytes")
    zeroed = header[:offset] + bytes(_CRC32C_SIZE) + header[offset + _CRC32C_SIZE:]
    if crc32c(zeroed) != int.from_bytes(value, "big"):
        raise ProxyProtocolError("v2: CRC32C mismatch")


def _ssl(value: bytes) -> ProxySSL:
    # Spec §2.2.6: client (1 byte), verify (4 bytes, network order), then sub-TLVs in
    # the same format as the TLVs around them.
    # A short value is an error, not a shorter verify field (aiosmtpd reads one).
    if len(value) < _SSL_FIXED_SIZE:
        raise ProxyProtocolError("v2: SSL TLV shorter than 5 bytes")
    subtypes = {kind: sub for kind, (_, sub) in _tlv_map(value, _SSL_FIXED_SIZE, "SSL sub-TLV").items()}
    return ProxySSL(
        client=value[0], verify=int.from_bytes(value[1:_SSL_FIXED_SIZE], "big"),
        # Spec §2.2.6: the version is a "US-ASCII string", the CN is UTF-8.
        version=_text(subtypes, PP2_SUBTYPE_SSL_VERSION, "ascii"),
        common_name=_text(subtypes, PP2_SUBTYPE_SSL_CN, "utf-8"),
        tlvs=subtypes)


def _text(values: dict[int, bytes], kind: int, encoding: str) -> str | None:
    if kind not in values:
        return None
    try:
        return values[kind].decode(encoding)
    except UnicodeDecodeError:
        raise ProxyProtocolError(f"v2: TLV {kind:#04x} is not {encoding}") from None


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            # 0x82F63B78: the Castagnoli polynomial, bit-reversed (RFC 4960 Appendix B).
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32c as RFC 4960 Appendix B defines it (spec §2.2.3 points there)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- Trust. ------------------------------------------------------------------------

def trusted(peer_ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
            networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether the addresses in a header from ``peer_ip`` may be believed.

    Spec §5: accept the header "only from a number of known sources". maddy's rule for
    ``proxy_protocol { trust ... }``: an empty list trusts every peer. A peer that is
    not an IP address (a UNIX socket) is trusted only by the empty list. An
    IPv4-mapped IPv6 peer (a dual-stack socket) also matches the IPv4 networks.
    """
    networks = tuple(networks)
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    candidates = [address]
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        candidates.append(mapped)
    return any(candidate in network for candidate in candidates for network in networks)

"""The PROXY protocol header parser (gmta.proto.proxy), v1 and v2, fed in every way.

The spec is haproxy's doc/proxy-protocol.txt (2020/03/05); aiosmtpd's
test_proxyprotocol.py (peers-and-style §2.4) lists the kinds of cases: valid and
malformed headers, truncation, bad families and ports, TLVs and "hiccup" partial sends.
"""

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gmta.errors import GmtaError
from gmta.proto import (
    NEED_DATA, Ehlo, LocalProtocolError, ProxyHeader, ProxyHeaderParser, ProxyProtocolError,
    ProxySSL, ServerConnection, trusted)
from gmta.proto.proxy import (
    PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS, PP2_CLIENT_SSL, PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN, PP2_SUBTYPE_SSL_VERSION, PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C, PP2_TYPE_NOOP, PP2_TYPE_SSL, PP2_TYPE_UNIQUE_ID, V1_MAX_LENGTH,
    V2_MAX_LENGTH, V2_SIGNATURE, crc32c)

SMTP = b"EHLO client.example\r\n"


# --- Helpers. ------------------------------------------------------------------------

def parse(data: bytes, **limits):
    """Feed ``data`` at once; return the header, NEED_DATA, or raise ProxyProtocolError."""
    parser = ProxyHeaderParser(**limits)
    parser.receive_data(data)
    return parser.next_result()


def error_of(data: bytes, **limits) -> str:
    with pytest.raises(ProxyProtocolError) as caught:
        parse(data, **limits)
    return caught.value.reason


def parse_bytewise(data: bytes, **limits):
    """Feed one byte at a time; every step before the last must ask for more."""
    parser = ProxyHeaderParser(**limits)
    results = []
    for index in range(len(data)):
        parser.receive_data(data[index:index + 1])
        result = parser.next_result()
        results.append(result)
        if result is not NEED_DATA:
            break
        assert parser.buffered_bytes <= parser.max_header_size
    return results


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def v2(ver_cmd: int = 0x21, fam: int = 0x11, block: bytes = b"", length: int | None = None) -> bytes:
    size = len(block) if length is None else length
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + block


def ipv4_block(src="192.0.2.1", dst="198.51.100.2", sport=56324, dport=25) -> bytes:
    return (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))


def ipv6_block(src="2001:db8::1", dst="2001:db8::25", sport=40000, dport=587) -> bytes:
    return (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))


def unix_block(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\x00") + dst.ljust(108, b"\x00")


def with_crc(block_before_crc: bytes, ver_cmd=0x21, fam=0x11, after: bytes = b"") -> bytes:
    """A v2 header whose CRC32C TLV (spec §2.2.3) is correct."""
    zeroed = v2(ver_cmd, fam, block_before_crc + tlv(PP2_TYPE_CRC32C, bytes(4)) + after)
    offset = len(V2_SIGNATURE) + 4 + len(block_before_crc) + 3
    checksum = crc32c(zeroed).to_bytes(4, "big")
    return zeroed[:offset] + checksum + zeroed[offset + 4:]


def ssl_value(client: int, verify: int, subtlvs: bytes = b"") -> bytes:
    return bytes([client]) + verify.to_bytes(4, "big") + subtlvs


# --- Version 1: valid headers (spec §2.1). -----------------------------------------

@pytest.mark.parametrize("line, family, source, destination", [
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", "TCP4",
     ("192.168.0.1", 56324), ("192.168.0.11", 443)),                 # the spec's example
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", "TCP4",
     ("0.0.0.0", 0), ("255.255.255.255", 65535)),                     # the bounds
    (b"PROXY TCP4 10.0.0.1 10.20.100.249 1 25\r\n", "TCP4",
     ("10.0.0.1", 1), ("10.20.100.249", 25)),
    (b"PROXY TCP6 2001:DB8::1 2001:db8:0:0:0:0:0:25 40000 587\r\n", "TCP6",
     ("2001:db8::1", 40000), ("2001:db8::25", 587)),                  # canonical form
    (b"PROXY TCP6 :: ::1 9 10\r\n", "TCP6", ("::", 9), ("::1", 10)),
    # inet_ntop (HAProxy's sender) writes IPv4-mapped addresses with dots.
    (b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:192.0.2.2 1024 25\r\n", "TCP6",
     (str(ipaddress.IPv6Address("::ffff:192.0.2.1")), 1024),
     (str(ipaddress.IPv6Address("::ffff:192.0.2.2")), 25)),
])
def test_v1_tcp(line, family, source, destination):
    header = parse(line + SMTP)
    assert header == ProxyHeader(1, "PROXY", family, source, destination, "STREAM",
                                 remaining=SMTP)
    assert header.remaining == SMTP
    assert not header.is_local
    assert header.tlvs == {} and header.ssl is None and header.authority is None


@pytest.mark.parametrize("line", [
    b"PROXY UNKNOWN\r\n",                                              # the short form
    b"PROXY UNKNOWN 192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY UNKNOWN anything \x00\xff goes  here\r\n",               # ignored (spec §2.1)
    # The spec's worst case: exactly 107 bytes with the CRLF.
    b"PROXY UNKNOWN " + b"f" * 39 + b" " + b"f" * 39 + b" 65535 65535\r\n",
])
def test_v1_unknown_uses_the_real_peer(line):
    header = parse(line + SMTP)
    assert (header.version, header.command, header.family) == (1, "PROXY", "UNKNOWN")
    assert header.source is None and header.destination is None
    assert header.is_local
    assert header.remaining == SMTP


def test_v1_longest_tcp6_line_fits():
    address = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = b"PROXY TCP6 " + address + b" " + address + b" 65535 65535\r\n"
    assert len(line) == 104                                            # spec §2.1
    assert parse(line).source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)


def test_v1_line_of_exactly_the_limit_is_accepted_one_more_is_not():
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n"
    assert len(line) == V1_MAX_LENGTH
    assert parse(line).family == "UNKNOWN"
    longer = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n"
    assert "no CRLF in the first 107 bytes" in error_of(longer)


def test_v1_custom_limit():
    line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"
    assert parse(line, max_v1_length=len(line)).family == "TCP6"
    assert "no CRLF in the first" in error_of(line, max_v1_length=len(line) - 1)


# --- Version 1: malformed headers. -------------------------------------------------

@pytest.mark.parametrize("line, reason", [
    # Spacing (spec §2.1: "exactly one space").
    (b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n", "exactly one space"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n", "exactly one space"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1  2\r\n", "exactly one space"),
    (b"PROXY  TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "exactly one space"),
    (b"PROXY \r\n", "exactly one space"),
    (b"PROXY TCP4\t192.0.2.1 192.0.2.2 1 2\r\n", "unknown protocol"),
    # Protocols.
    (b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n", "unknown protocol"),
    (b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n", "unknown protocol"),
    (b"PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n", "unknown protocol"),
    (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
    (b"PROXY unknown\r\n", "unknown protocol"),
    # Field count.
    (b"PROXY TCP4\r\n", "expected protocol"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n", "expected protocol"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n", "expected protocol"),
    # IPv4 (spec §2.1: four integers 0..255, one dot apart, no heading zeroes).
    (b"PROXY TCP4 01.2.3.4 192.0.2.2 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.02 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 00.0.0.0 192.0.2.2 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 256.0.0.1 192.0.2.2 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 192.0.2 192.0.2.2 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 192.0.2.1.5 192.0.2.2 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 192.0.2.1. 192.0.2.2 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 192..2.1 192.0.2.2 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 0x7f.0.0.1 192.0.2.2 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 localhost 192.0.2.2 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 \xd9\xa1.2.3.4 192.0.2.2 1 2\r\n", "bad IPv4 address"),  # Arabic-Indic digit
    (b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n", "bad IPv4 address"),     # family mismatch
    # IPv6.
    (b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n", "bad IPv6 address"),     # family mismatch
    (b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n", "bad IPv6 address"),  # no zones
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 2001:db8::2 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 1::2::3 2001:db8::2 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 ::: 2001:db8::2 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 g::1 2001:db8::2 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 00001::1 2001:db8::2 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 ::ffff:01.2.3.4 2001:db8::2 1 2\r\n", "bad IPv6 address"),
    # Ports (spec §2.1: 0..65535, no heading zeroes).
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 99999\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 00\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 +1 2\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1e3 2\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 100000 2\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 http\r\n", "bad port"),
    # Line ends (spec §2.1: no single CR or LF ends the line).
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n", "LF without CR"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\rX", "CR without LF"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\r\n", "CR without LF"),
    (b"PROXY UNKNOWN a\nb\r\n", "LF without CR"),
    (b"PROXY UNKNOWN a\rb\r\n", "CR without LF"),
    # The prefix.
    (b"PROXY\r\n", "does not start with 'PROXY '"),
    (b"PROXX TCP4", "does not start with 'PROXY '"),
    (b"PROXY\tTCP4", "does not start with 'PROXY '"),
    (b"Proxy TCP4", "does not start with 'PROXY '"),
])
def test_v1_malformed(line, reason):
    assert reason in error_of(line)


def test_v1_without_crlf_waits_then_fails_at_the_limit():
    parser = ProxyHeaderParser()
    parser.receive_data(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2")
    assert parser.next_result() is NEED_DATA
    parser.receive_data(b" " * (V1_MAX_LENGTH - parser.buffered_bytes - 1))
    assert parser.next_result() is NEED_DATA
    assert parser.buffered_bytes == V1_MAX_LENGTH - 1
    parser.receive_data(b" ")
    with pytest.raises(ProxyProtocolError, match="no CRLF"):
        parser.next_result()


def test_v1_cr_as_the_last_byte_waits_for_its_lf():
    parser = ProxyHeaderParser()
    parser.receive_data(b"PROXY UNKNOWN\r")
    assert parser.next_result() is NEED_DATA
    parser.receive_data(b"\n")
    assert parser.next_result().family == "UNKNOWN"


def test_v1_crlf_must_end_within_the_limit():
    # CR is byte 107, LF byte 108: the line is one byte too long.
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n"
    parser = ProxyHeaderParser()
    parser.receive_data(line[:-1])
    with pytest.raises(ProxyProtocolError, match="no CRLF"):
        parser.next_result()


@pytest.mark.parametrize("data", [b"EHLO x\r\n", b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1", b"\x00",
                                  b" PROXY TCP4", b"proxy "])
def test_anything_else_is_refused_on_its_first_byte(data):
    parser = ProxyHeaderParser()
    parser.receive_data(data[:1])
    with pytest.raises(ProxyProtocolError, match="not a PROXY protocol header"):
        parser.next_result()


@pytest.mark.parametrize("prefix", [b"PROX", b"PROXY", b"PROXY ", b"PROXY TCP4 1",
                                    V2_SIGNATURE[:1], V2_SIGNATURE[:5], V2_SIGNATURE])
def test_a_valid_prefix_waits(prefix):
    assert parse(prefix) is NEED_DATA


# --- Version 2: valid headers (spec §2.2). -----------------------------------------

def test_v2_tcp4():
    header = parse(v2(0x21, 0x11, ipv4_block()) + SMTP)
    assert header == ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.1", 56324), ("198.51.100.2", 25),
                                 "STREAM", remaining=SMTP)
    assert not header.is_local


def test_v2_tcp6():
    header = parse(v2(0x21, 0x21, ipv6_block()) + SMTP)
    assert header == ProxyHeader(2, "PROXY", "TCP6", ("2001:db8::1", 40000), ("2001:db8::25", 587),
                                 "STREAM", remaining=SMTP)


def test_v2_tcp6_ports_at_the_bounds():
    header = parse(v2(0x21, 0x21, ipv6_block("::", "::1", 0, 65535)))
    assert (header.source, header.destination) == (("::", 0), ("::1", 65535))


@pytest.mark.parametrize("src, dst, source, destination", [
    (b"/run/haproxy/client.sock", b"/run/gmta/smtp.sock",
     b"/run/haproxy/client.sock", b"/run/gmta/smtp.sock"),
    (b"/a\x00junk after the terminator", b"/b", b"/a", b"/b"),          # a C string
    (b"\x00abstract", b"\x00other\x00", b"\x00abstract", b"\x00other"),  # Linux abstract
    (b"", b"", b"", b""),                                                 # unnamed
    (b"p" * 108, b"q" * 108, b"p" * 108, b"q" * 108),                     # no NUL at all
])
def test_v2_unix(src, dst, source, destination):
    header = parse(v2(0x21, 0x31, unix_block(src, dst)) + SMTP)
    assert (header.family, header.transport) == ("UNIX", "STREAM")
    assert (header.source, header.destination) == (source, destination)
    assert not header.is_local
    assert header.remaining == SMTP


def test_v2_datagram_falls_back_to_the_real_peer():
    # Spec §2.2: valid combinations a receiver does not serve fall back to UNSPEC.
    header = parse(v2(0x21, 0x12, ipv4_block()))
    assert (header.family, header.transport, header.source) == ("TCP4", "DGRAM", ("192.0.2.1", 56324))
    assert header.is_local
    assert parse(v2(0x21, 0x32, unix_block(b"/a", b"/b"))).is_local


@pytest.mark.parametrize("fam, block", [
    (0x00, b""),
    (0x00, b"ignored address information"),
    (0x01, b"\x01\x02"),          # AF_UNSPEC with a stream transport
    (0x10, ipv4_block()),         # AF_INET, transport UNSPEC
    (0x30, b""),
])
def test_v2_proxy_unspec_uses_the_real_peer(fam, block):
    header = parse(v2(0x21, fam, block) + SMTP)
    assert (header.version, header.command, header.family) == (2, "PROXY", "UNKNOWN")
    assert header.source is None and header.tlvs == {}
    assert header.is_local
    assert header.remaining == SMTP


@pytest.mark.parametrize("fam, block", [
    (0x00, b""),                                       # what senders should send
    (0x11, ipv4_block()),                              # an address block is discarded
    (0xFF, b"\x00\x01"),                               # the family is ignored (spec §2.2)
    (0x11, b"\x01"),                                   # even a short one
    (0x21, ipv6_block() + b"\x02\x00"),                # and a broken TLV area
])
def test_v2_local(fam, block):
    header = parse(v2(0x20, fam, block) + SMTP)
    assert header == ProxyHeader(2, "LOCAL", "UNKNOWN", transport="UNSPEC", remaining=SMTP)
    assert header.is_local
    assert header.remaining == SMTP


def test_v2_tlvs():
    tlvs = (tlv(PP2_TYPE_ALPN, b"smtp") + tlv(PP2_TYPE_NOOP, b"")
            + tlv(PP2_TYPE_AUTHORITY, "mx.exämple".encode()) + tlv(PP2_TYPE_UNIQUE_ID, b"u" * 128)
            + tlv(PP2_TYPE_NOOP, b"pad") + tlv(0xE0, b"\x00\xff")
            + tlv(0x30, b""))
    header = parse(v2(0x21, 0x11, ipv4_block() + tlvs) + SMTP)
    assert header.tlvs == {PP2_TYPE_ALPN: b"smtp", PP2_TYPE_AUTHORITY: "mx.exämple".encode(),
                           PP2_TYPE_UNIQUE_ID: b"u" * 128, 0xE0: b"\x00\xff", 0x30: b""}
    assert header.authority == "mx.exämple"
    assert header.ssl is None
    assert header.remaining == SMTP


def test_v2_ssl_tlv():
    subtlvs = (tlv(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3") + tlv(PP2_SUBTYPE_SSL_CN, "client.exämple".encode())
               + tlv(PP2_SUBTYPE_SSL_CIPHER, b"TLS_AES_256_GCM_SHA384"))
    value = ssl_value(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0, subtlvs)
    header = parse(v2(0x21, 0x21, ipv6_block() + tlv(PP2_TYPE_SSL, value)))
    assert header.tlvs == {PP2_TYPE_SSL: value}
    assert header.ssl == ProxySSL(
        client=PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, verify=0, version="TLSv1.3",
        common_name="client.exämple",
        tlvs={PP2_SUBTYPE_SSL_VERSION: b"TLSv1.3", PP2_SUBTYPE_SSL_CN: "client.exämple".encode(),
              PP2_SUBTYPE_SSL_CIPHER: b"TLS_AES_256_GCM_SHA384"})
    assert header.ssl.tls and header.ssl.client_certificate and header.ssl.certificate_verified


@pytest.mark.parametrize("client, verify, tls, certificate, verified", [
    (0, 0, False, False, False),
    (PP2_CLIENT_SSL, 0, True, False, False),                   # verify 0 without a certificate
    (PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS, 0, True, True, True),
    (PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 18, True, True, False),   # X509 error 18
])
def test_v2_ssl_bits(client, verify, tls, certificate, verified):
    header = parse(v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_SSL, ssl_value(client, verify))))
    assert header.ssl == ProxySSL(client, verify)
    assert header.ssl.version is None and header.ssl.common_name is None
    assert (header.ssl.tls, header.ssl.client_certificate, header.ssl.certificate_verified) == (
        tls, certificate, verified)


@pytest.mark.parametrize("before, after", [
    (tlv(PP2_TYPE_ALPN, b"smtp"), b""),
    (b"", tlv(PP2_TYPE_AUTHORITY, b"mx.example")),
    (b"", b""),
])
def test_v2_crc32c_verified(before, after):
    data = with_crc(ipv4_block() + before, after=after)
    header = parse(data + SMTP)
    assert PP2_TYPE_CRC32C in header.tlvs
    assert header.remaining == SMTP


def test_v2_crc32c_covers_every_byte_of_the_header():
    data = with_crc(ipv4_block())
    crc_type = 16 + 12
    for index in range(len(data)):
        if 12 <= index < 16 or index == crc_type:
            continue   # another version, family, length or TLV type: not a CRC question
        corrupt = bytearray(data)
        corrupt[index] ^= 0x01
        with pytest.raises(ProxyProtocolError):
            parse(bytes(corrupt))


def test_v2_largest_header_within_the_bound():
    block = ipv4_block() + tlv(0xE1, b"x" * (V2_MAX_LENGTH - 12 - 3))
    header = parse(v2(0x21, 0x11, block) + SMTP)
    assert len(header.tlvs[0xE1]) == V2_MAX_LENGTH - 15
    assert header.remaining == SMTP


# --- Version 2: malformed headers. -------------------------------------------------

@pytest.mark.parametrize("data, reason", [
    # The signature (spec §2.2), refused at its first wrong byte.
    (b"\r\r", "bad signature"),
    (b"\r\n\r\n\x01", "bad signature"),
    (b"\r\n\r\n\x00\r\nquit\n", "bad signature"),
    (V2_SIGNATURE[:-1] + b"\r" + b"\x21\x11\x00\x0c" + ipv4_block(), "bad signature"),
    # The version (spec §2.2: "the receiver must only accept" 2).
    (V2_SIGNATURE + b"\x11", "version 1 is not 2"),
    (V2_SIGNATURE + b"\x31", "version 3 is not 2"),
    (V2_SIGNATURE + b"\x01", "version 0 is not 2"),
    (V2_SIGNATURE + b"\xf1", "version 15 is not 2"),
    # The command (spec §2.2: others "must drop").
    (V2_SIGNATURE + b"\x22", "unknown command 0x2"),
    (V2_SIGNATURE + b"\x2f", "unknown command 0xf"),
    # Family and transport (spec §2.2: others "must be rejected as invalid").
    (V2_SIGNATURE + b"\x21\x41", "unknown address family 0x4"),
    (V2_SIGNATURE + b"\x21\xf1", "unknown address family 0xf"),
    (V2_SIGNATURE + b"\x21\x13", "unknown transport 0x3"),
    (V2_SIGNATURE + b"\x21\x0f", "unknown transport 0xf"),
    # The length bound: refused as soon as the length field is complete.
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "header length 65535 over the limit of 4096"),
    (V2_SIGNATURE + b"\x20\x00\x10\x01", "header length 4097 over the limit"),
    # Address blocks shorter than their family needs.
    (v2(0x21, 0x11, ipv4_block()[:11]), "address block of 11 bytes, TCP4 needs 12"),
    (v2(0x21, 0x12, b""), "address block of 0 bytes, TCP4 needs 12"),
    (v2(0x21, 0x21, ipv4_block()), "address block of 12 bytes, TCP6 needs 36"),
    (v2(0x21, 0x31, b"/a".ljust(200, b"\x00")), "address block of 200 bytes, UNIX needs 216"),
    # The TLV area (spec §2.2).
    (v2(0x21, 0x11, ipv4_block() + b"\x01"), "truncated TLV header"),
    (v2(0x21, 0x11, ipv4_block() + b"\x01\x00"), "truncated TLV header"),
    (v2(0x21, 0x11, ipv4_block() + b"\x01\x00\x05abcd"), "TLV 0x01 runs past the header"),
    (v2(0x21, 0x11, ipv4_block() + tlv(1, b"a") + b"\x02\xff\xff"), "TLV 0x02 runs past"),
    (v2(0x21, 0x11, ipv4_block() + tlv(1, b"a") + b"\x04"), "truncated TLV header"),
    (v2(0x21, 0x11, ipv4_block() + tlv(2, b"a") + tlv(2, b"b")), "TLV 0x02 given twice"),
    (v2(0x21, 0x11, ipv4_block() + tlv(0x20, ssl_value(1, 0)) * 2), "TLV 0x20 given twice"),
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_AUTHORITY, b"\xff")), "TLV 0x02 is not utf-8"),
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_UNIQUE_ID, b"u" * 129)), "unique ID longer"),
    # CRC32C (spec §2.2.3).
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_CRC32C, b"\x00\x00\x00")), "not 4 bytes"),
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_CRC32C, b"\x00" * 5)), "not 4 bytes"),
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_CRC32C, b"\x00" * 4)), "CRC32C mismatch"),
    # SSL (spec §2.2.6).
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_SSL, b"\x01\x00\x00\x00")), "shorter than 5"),
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_SSL, ssl_value(1, 0, b"\x21\x00"))),
     "truncated SSL sub-TLV header"),
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_SSL, ssl_value(1, 0, b"\x21\x00\x09TLS"))),
     "SSL sub-TLV 0x21 runs past"),
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_SSL, ssl_value(
        1, 0, tlv(0x22, b"a") + tlv(0x22, b"b")))), "SSL sub-TLV 0x22 given twice"),
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_SSL, ssl_value(1, 0, tlv(0x21, "TLSv1.3é".encode())))),
     "TLV 0x21 is not ascii"),
    (v2(0x21, 0x11, ipv4_block() + tlv(PP2_TYPE_SSL, ssl_value(1, 0, tlv(0x22, b"\xc3")))),
     "TLV 0x22 is not utf-8"),
])
def test_v2_malformed(data, reason):
    assert reason in error_of(data + SMTP)


def test_v2_hostile_length_is_refused_before_any_of_its_bytes():
    parser = ProxyHeaderParser()
    parser.receive_data(V2_SIGNATURE + b"\x21\x11\x10")
    assert parser.next_result() is NEED_DATA
    parser.receive_data(b"\x01")                     # length 4097
    with pytest.raises(ProxyProtocolError, match="over the limit"):
        parser.next_result()
    assert parser.buffered_bytes == 0


def test_v2_custom_bound():
    data = v2(0x21, 0x11, ipv4_block() + tlv(0xE0, b"x" * 300))
    assert parse(data, max_v2_length=315).tlvs[0xE0] == b"x" * 300
    assert "over the limit of 314" in error_of(data, max_v2_length=314)


def test_v2_truncated_header_waits():
    data = v2(0x21, 0x21, ipv6_block() + tlv(PP2_TYPE_ALPN, b"smtp"))
    for cut in range(len(data)):
        assert parse(data[:cut]) is NEED_DATA


# --- Arrival in pieces; the bytes after the header. --------------------------------

VALID_HEADERS = [
    b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 25\r\n",
    b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 25\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN " + b"f" * 39 + b" " + b"f" * 39 + b" 65535 65535\r\n",
    v2(0x21, 0x11, ipv4_block()),
    v2(0x21, 0x21, ipv6_block() + tlv(PP2_TYPE_AUTHORITY, b"mx.example")),
    v2(0x21, 0x31, unix_block(b"/a", b"/b")),
    v2(0x20, 0x00),
    v2(0x20, 0x11, ipv4_block()),
    v2(0x21, 0x00),
    with_crc(ipv6_block(), fam=0x21, after=tlv(PP2_TYPE_SSL, ssl_value(1, 0, tlv(0x21, b"TLSv1.2")))),
    v2(0x21, 0x11, ipv4_block() + tlv(0xE0, b"x" * (V2_MAX_LENGTH - 15))),
]


@pytest.mark.parametrize("data", VALID_HEADERS)
def test_one_byte_at_a_time(data):
    results = parse_bytewise(data + SMTP)
    assert len(results) == len(data)                  # complete exactly at its last byte
    assert all(result is NEED_DATA for result in results[:-1])
    assert results[-1] == parse(data)
    assert results[-1].remaining == b""


@pytest.mark.parametrize("data", VALID_HEADERS)
@pytest.mark.parametrize("trailing", [b"", SMTP, b"\r\n\r\n\x00PROXY TCP4 x\r\n", b"\x00" * 70000])
def test_the_bytes_after_the_header_are_handed_on(data, trailing):
    header = parse(data + trailing)
    assert header.remaining == trailing
    assert replace(header, remaining=b"") == parse(data)
    parser = ProxyHeaderParser()
    parser.receive_data(data[:-1])
    assert parser.next_result() is NEED_DATA
    parser.receive_data(data[-1:] + trailing)
    assert parser.next_result().remaining == trailing


def test_remaining_starts_the_smtp_session():
    parser = ProxyHeaderParser()
    parser.receive_data(b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 25\r\nEH")
    header = parser.next_result()
    conn = ServerConnection("mx.example.org")
    conn.next_event()          # Connected
    conn.accept()
    conn.receive_data(header.remaining)
    conn.receive_data(b"LO client.example\r\n")
    assert conn.next_event() == Ehlo("client.example")


def test_the_answer_is_final():
    parser = ProxyHeaderParser()
    parser.receive_data(b"PROXY UNKNOWN\r\nQUIT\r\n")
    header = parser.next_result()
    assert parser.next_result() is header
    assert parser.buffered_bytes == 0
    with pytest.raises(LocalProtocolError):
        parser.receive_data(b"more")


def test_an_error_is_final():
    parser = ProxyHeaderParser()
    parser.receive_data(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n")
    with pytest.raises(ProxyProtocolError) as first:
        parser.next_result()
    assert parser.buffered_bytes == 0
    parser.receive_data(b"PROXY UNKNOWN\r\n")      # ignored: the connection is going away
    assert parser.buffered_bytes == 0
    with pytest.raises(ProxyProtocolError) as second:
        parser.next_result()
    assert second.value is first.value
    assert isinstance(first.value, GmtaError)
    assert str(first.value) == first.value.reason == "v1: LF without CR"


def test_nothing_received_yet():
    parser = ProxyHeaderParser()
    assert parser.next_result() is NEED_DATA
    parser.receive_data(b"")
    assert parser.next_result() is NEED_DATA


def test_limits():
    parser = ProxyHeaderParser()
    assert (parser.max_v1_length, parser.max_v2_length) == (107, 4096)
    assert parser.max_header_size == 16 + 4096
    assert ProxyHeaderParser(max_v1_length=200, max_v2_length=216).max_header_size == 232
    for limits in ({"max_v1_length": 14}, {"max_v2_length": 215}):
        with pytest.raises(ValueError):
            ProxyHeaderParser(**limits)


def test_remaining_is_left_out_of_the_repr():
    assert "SECRET" not in repr(parse(b"PROXY UNKNOWN\r\nAUTH PLAIN SECRET\r\n"))


# --- crc32c (RFC 4960 Appendix B; vectors from RFC 3720 §B.4). ---------------------

@pytest.mark.parametrize("data, checksum", [
    (b"", 0),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c(data, checksum):
    assert crc32c(data) == checksum


# --- trusted() ---------------------------------------------------------------------

NETWORKS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"),
            ipaddress.ip_network("2001:db8:1::/48")]


@pytest.mark.parametrize("peer, networks, expected", [
    ("203.0.113.9", [], True),                        # maddy: an empty list trusts everyone
    ("not an address", [], True),
    ("10.1.2.3", NETWORKS, True),
    ("192.0.2.7", NETWORKS, True),
    ("192.0.2.8", NETWORKS, False),
    ("11.0.0.1", NETWORKS, False),
    ("2001:db8:1:ffff::1", NETWORKS, True),
    ("2001:db8:2::1", NETWORKS, False),
    ("::ffff:10.9.9.9", NETWORKS, True),              # IPv4-mapped, from a dual-stack socket
    ("::ffff:11.9.9.9", NETWORKS, False),
    ("::a00:1", NETWORKS, False),                     # IPv4-compatible is not mapped
    ("fe80::1%eth0", [ipaddress.ip_network("fe80::/10")], True),
    ("10.0.0.1", [ipaddress.ip_network("::/0")], False),        # families never mix
    ("2001:db8::1", [ipaddress.ip_network("0.0.0.0/0")], False),
    ("", NETWORKS, False),
    ("/run/haproxy.sock", NETWORKS, False),           # a UNIX peer is not an IP
    ("010.0.0.1", NETWORKS, False),
    (ipaddress.ip_address("10.0.0.1"), NETWORKS, True),
    (ipaddress.ip_address("2001:db8:1::5"), NETWORKS, True),
])
def test_trusted(peer, networks, expected):
    assert trusted(peer, networks) is expected


def test_trusted_takes_any_iterable():
    assert trusted("10.0.0.1", (network for network in NETWORKS))
    assert trusted("10.0.0.1", iter([]))
    assert not trusted("11.0.0.1", (network for network in NETWORKS))


def test_untrusted_peer_keeps_its_real_address():
    # maddy E3: a header from an untrusted peer is read, but its addresses are not used.
    header = parse(b"PROXY TCP4 127.0.0.17 127.0.0.1 5000 25\r\n")
    real_peer = ("192.0.2.50", 40000)
    networks = [ipaddress.ip_network("192.0.2.1/32")]
    client = header.source if not header.is_local and trusted(real_peer[0], networks) else real_peer
    assert client == real_peer
    networks = [ipaddress.ip_network("192.0.2.0/24")]
    client = header.source if not header.is_local and trusted(real_peer[0], networks) else real_peer
    assert client == ("127.0.0.17", 5000)


# --- Fuzzing. ----------------------------------------------------------------------

def run(data: bytes, sizes: list[int], **limits):
    """Feed ``data`` in pieces of ``sizes`` (then the rest); return the outcome.

    Checks on the way that only NEED_DATA, a header or ProxyProtocolError come out, and
    that NEED_DATA never leaves more than the bound buffered.
    """
    parser = ProxyHeaderParser(**limits)
    position = 0
    pieces = [size for size in sizes if size > 0] + [len(data)]
    for size in pieces:
        piece = data[position:position + size]
        position += len(piece)
        parser.receive_data(piece)
        try:
            result = parser.next_result()
        except ProxyProtocolError as error:
            assert error.reason
            assert parser.buffered_bytes == 0
            return "error", position
        if result is not NEED_DATA:
            assert isinstance(result, ProxyHeader)
            assert parser.buffered_bytes == 0
            return result, position
        assert parser.buffered_bytes <= parser.max_header_size
        if position == len(data):
            return NEED_DATA, position
    raise AssertionError("unreachable")   # pragma: no cover


def without_remaining(outcome):
    return replace(outcome, remaining=b"") if isinstance(outcome, ProxyHeader) else outcome


def mutate(data: bytes, edits) -> bytes:
    buffer = bytearray(data)
    for index, value in edits:
        if buffer:
            buffer[index % len(buffer)] = value
    return bytes(buffer)


@st.composite
def inputs(draw):
    """Random bytes, or a valid header (plus SMTP bytes) with a few bytes changed."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    base = draw(st.sampled_from(VALID_HEADERS)) + draw(st.sampled_from([b"", SMTP]))
    edits = draw(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3))
    cut = draw(st.integers(0, len(base)))
    data = mutate(base, edits)
    return data[:cut] if draw(st.booleans()) else data


@given(data=inputs(), sizes=st.lists(st.integers(0, 64), max_size=20),
       limits=st.sampled_from([{}, {"max_v1_length": 15, "max_v2_length": 216},
                               {"max_v1_length": 56, "max_v2_length": 300}]))
def test_fuzz(data, sizes, limits):
    outcome, consumed = run(data, sizes, **limits)
    # However the bytes are cut, the outcome is the same.
    whole, _ = run(data, [], **limits)
    bytewise, _ = run(data, [1] * len(data), **limits)
    assert without_remaining(outcome) == without_remaining(whole) == without_remaining(bytewise)
    if isinstance(outcome, ProxyHeader):
        # The remaining bytes are exactly the ones after the header: nothing lost.
        assert data[:consumed].endswith(outcome.remaining)
        header_size = consumed - len(outcome.remaining)
        assert header_size <= max(limits.get("max_v1_length", 107), 16 + limits.get("max_v2_length", 4096))
        assert run(data[:header_size], [], **limits)[0] == replace(outcome, remaining=b"")
        assert outcome.is_local == (outcome.source is None or outcome.transport != "STREAM")


@given(st.binary(min_size=1, max_size=200))
def test_fuzz_v2_bodies(body):
    """Any address block and TLV area after a valid fixed part: no other exception."""
    for fam in (0x11, 0x21, 0x31, 0x12, 0x00):
        for ver_cmd in (0x20, 0x21):
            try:
                result = parse(v2(ver_cmd, fam, body))
            except ProxyProtocolError:
                continue
            assert isinstance(result, ProxyHeader)


@given(st.binary(max_size=120))
def test_fuzz_v1_lines(tail):
    """Any tail after "PROXY ": no other exception, never more than 107 bytes held."""
    try:
        result = parse(b"PROXY " + tail)
    except ProxyProtocolError:
        return
    assert result is NEED_DATA or isinstance(result, ProxyHeader)

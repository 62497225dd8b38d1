"""Paths, domains, parameters, xtext, IDNA and normalisation (gmta.proto.grammar)."""

import pytest

from gmta.errors import SMTPError
from gmta.proto.grammar import (
    address_to_ascii, check_domain_or_literal, domain_to_ascii, domain_to_unicode,
    normalize_address, normalize_domain, parse_forward_path, parse_params, parse_reverse_path,
    split_address, xtext_decode, xtext_encode)


@pytest.mark.parametrize("text, address, rest", [
    ("<a@example.com>", "a@example.com", ""),
    ("<a@example.com> SIZE=10", "a@example.com", " SIZE=10"),
    ("<first.last+tag@sub.example.com>", "first.last+tag@sub.example.com", ""),
    ("<!#$%&'*+-/=?^_`{|}~@example.com>", "!#$%&'*+-/=?^_`{|}~@example.com", ""),
    # RFC 5321 §4.1.2 quoted local parts, with a space, a quoted pair and a ">".
    ('<"john doe"@example.com>', '"john doe"@example.com', ""),
    ('<"a\\"b"@example.com>', '"a\\"b"@example.com', ""),
    ('<"a>b"@example.com> X', '"a>b"@example.com', " X"),
    ('<"a@b"@example.com>', '"a@b"@example.com', ""),
    # RFC 5321 §C: source routes are accepted and dropped.
    ("<@relay.example:a@example.com>", "a@example.com", ""),
    ("<@one.example,@two.example:a@example.com>", "a@example.com", ""),
    # RFC 5321 §4.1.3 address literals.
    ("<a@[192.0.2.1]>", "a@[192.0.2.1]", ""),
    ("<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", ""),
    ("<a@[ipv6:::ffff:192.0.2.1]>", "a@[ipv6:::ffff:192.0.2.1]", ""),
    ("<a@[x-tag:content]>", "a@[x-tag:content]", ""),
    # RFC 6531: UTF-8 local parts and U-label domains.
    ("<δοκιμή@παράδειγμα.δοκιμή>", "δοκιμή@παράδειγμα.δοκιμή", ""),
    ("<用户@例子.广告>", "用户@例子.广告", ""),
    # RFC 5321 §4.1.1.3: the bare postmaster, any case (maddy #384).
    ("<postmaster>", "postmaster", ""),
    ("<PostMaster> NOTIFY=NEVER", "postmaster", " NOTIFY=NEVER"),
])
def test_forward_paths(text, address, rest):
    assert parse_forward_path(text) == (address, rest)


@pytest.mark.parametrize("text", [
    "<>", "", "a@example.com", "<a@example.com", "<a@example.com>>"[:-2], "<a>", "<@example.com>",
    "<a@>", "<a@example..com>", "<a@.example.com>", "<a@-example.com>", "<a@example-.com>",
    "<a@example.com.>", "<.a@example.com>", "<a.@example.com>", "<a..b@example.com>",
    '<"unterminated@example.com>', "<a b@example.com>", "<a@exa mple.com>",
    "<a@[192.0.2.256]>", "<a@[192.0.2]>", "<a@[IPv6:2001:db8::g]>", "<a@[IPv6:fe80::1%eth0]>",
    "<a@[]>", "<a@" + "x" * 64 + ".com>", "<a@" + ("x" * 60 + ".") * 5 + "com>",
    "<a@\u2603\u0301\u0000.com>", "<@relay.example a@example.com>", "<postmaster@>",
])
def test_bad_forward_paths(text):
    with pytest.raises(SMTPError) as caught:
        parse_forward_path(text)
    # RFC 3463 §3.2: X.1.3 is a bad destination mailbox address syntax.
    assert (caught.value.code, caught.value.enhanced) == (501, (5, 1, 3))


def test_reverse_path_allows_null_sender():
    assert parse_reverse_path("<>") == ("", "")
    assert parse_reverse_path("<> BODY=8BITMIME") == ("", " BODY=8BITMIME")
    assert parse_reverse_path("<postmaster>") == ("postmaster", "")


def test_bad_reverse_path_is_a_sender_error():
    with pytest.raises(SMTPError) as caught:
        parse_reverse_path("<a@@example.com>")
    assert (caught.value.code, caught.value.enhanced) == (501, (5, 1, 7))


@pytest.mark.parametrize("address, parts", [
    ("a@example.com", ("a", "example.com")),
    ('"a@b"@example.com', ('"a@b"', "example.com")),
    ("postmaster", ("postmaster", "")),
    ("", ("", "")),
])
def test_split_address(address, parts):
    assert split_address(address) == parts


@pytest.mark.parametrize("domain, ascii_form", [
    ("example.com", "example.com"),
    ("EXAMPLE.com", "EXAMPLE.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("☃.net", "xn--n3h.net"),
    ("x" * 63 + ".com", "x" * 63 + ".com"),
])
def test_domain_to_ascii(domain, ascii_form):
    assert domain_to_ascii(domain) == ascii_form


@pytest.mark.parametrize("domain", [
    "", "a..b", "-a.com", "a_b.com", "x" * 64 + ".com", ("abc." * 64) + "com", "a\u0000b.com",
    "b\u00fccher..example",
])
def test_bad_domains(domain):
    with pytest.raises(SMTPError) as caught:
        domain_to_ascii(domain)
    assert (caught.value.code, caught.value.enhanced) == (501, (5, 1, 2))


@pytest.mark.parametrize("domain, unicode_form", [
    ("xn--bcher-kva.example", "bücher.example"),
    ("XN--BCHER-KVA.example", "bücher.example"),
    ("example.com", "example.com"),
    ("[192.0.2.1]", "[192.0.2.1]"),
])
def test_domain_to_unicode(domain, unicode_form):
    assert domain_to_unicode(domain) == unicode_form


@pytest.mark.parametrize("domain", ["xn--zz.example", "xn--a.example", "xn--abc-.example"])
def test_bad_a_labels(domain):
    with pytest.raises(SMTPError):
        domain_to_unicode(domain)


def test_check_domain_or_literal():
    check_domain_or_literal("example.com")
    check_domain_or_literal("[IPv6:::1]")
    with pytest.raises(SMTPError):
        check_domain_or_literal("[not a literal]")


@pytest.mark.parametrize("address, normal", [
    ("User@EXAMPLE.COM", "User@example.com"),            # local part keeps its case
    ("a@XN--BCHER-KVA.example", "a@bücher.example"),     # U-label, lower case
    ("a@BÜCHER.example", "a@bücher.example"),
    ("e\u0301@example.com", "\u00e9@example.com"),       # NFC
    ("PostMaster", "postmaster"),                        # RFC 5321 §2.4
    ("POSTMASTER@Example.com", "postmaster@example.com"),
    ("a@[192.0.2.1]", "a@[192.0.2.1]"),
    ("", ""),
])
def test_normalize_address(address, normal):
    assert normalize_address(address) == normal


def test_normalize_domain():
    assert normalize_domain("B\u00dcCHER.Example") == "bücher.example"


def test_normalize_errors_follow_maddy():
    with pytest.raises(SMTPError) as caught:
        normalize_address("a@xn--zz.example", sender=True)
    assert str(caught.value) == "553 5.1.7 Unable to normalize the sender address"
    with pytest.raises(SMTPError) as caught:
        normalize_address("a@xn--zz.example")
    assert str(caught.value) == "501 5.1.2 Unable to normalize the recipient address"


@pytest.mark.parametrize("address, ascii_form", [
    ("a@bücher.example", "a@xn--bcher-kva.example"),
    ("a@example.com", "a@example.com"),
    ("postmaster", "postmaster"),
    ("a@[192.0.2.1]", "a@[192.0.2.1]"),
])
def test_address_to_ascii(address, ascii_form):
    assert address_to_ascii(address) == ascii_form


def test_address_to_ascii_refuses_utf8_local_parts():
    with pytest.raises(SMTPError) as caught:
        address_to_ascii("δοκιμή@example.com")
    assert caught.value.code == 553 and caught.value.enhanced == (5, 6, 7)


@pytest.mark.parametrize("text, params", [
    ("", {}),
    (" ", {}),
    (" SIZE=1000", {"SIZE": "1000"}),
    (" size=1000  body=8BITMIME smtputf8", {"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": None}),
    (" X-FOO=bar-baz", {"X-FOO": "bar-baz"}),
    (" AUTH=<>", {"AUTH": "<>"}),
    (" ENVID=é", {"ENVID": "é"}),  # RFC 6531 §3.3 allows UTF-8 in esmtp-value
])
def test_params(text, params):
    assert parse_params(text) == params


@pytest.mark.parametrize("text", [
    " SIZE=", " =1", " -X=1", " SIZE=1=2", " A\tB", " SIZE=1 size=2", " X=\u0001",
])
def test_bad_params(text):
    with pytest.raises(SMTPError) as caught:
        parse_params(text)
    assert (caught.value.code, caught.value.enhanced) == (501, (5, 5, 4))


@pytest.mark.parametrize("decoded, encoded", [
    ("", ""),
    ("plain", "plain"),
    ("a+b=c", "a+2Bb+3Dc"),
    ("with space", "with+20space"),
    ("é", "+C3+A9"),
    ("<a@example.com>", "<a@example.com>"),
])
def test_xtext_round_trip(decoded, encoded):
    assert xtext_encode(decoded) == encoded
    assert xtext_decode(encoded) == decoded


def test_xtext_decode_accepts_lower_case_hex():
    assert xtext_decode("a+2bb") == "a+b"


@pytest.mark.parametrize("text", ["a+", "a+2", "a+ZZ", "a b", "a=b", "+FF", "é"])
def test_bad_xtext(text):
    with pytest.raises(SMTPError) as caught:
        xtext_decode(text)
    assert (caught.value.code, caught.value.enhanced) == (501, (5, 5, 4))

"""Value formats: booleans, durations, sizes, integers, endpoints (maddy-behaviour §1.3)."""

from __future__ import annotations

import pytest

from gmta.config.values import (Endpoint, parse_bool, parse_duration, parse_endpoint, parse_int,
                                parse_size)


@pytest.mark.parametrize("words, expected", [
    ([], True),                              # a bare directive means yes
    (["yes"], True), (["true"], True), (["on"], True), (["1"], True),
    (["no"], False), (["false"], False), (["off"], False), (["0"], False),
    (["YES"], True), (["True"], True), (["oN"], True),
    (["NO"], False), (["False"], False), (["OFF"], False),
])
def test_bool(words, expected):
    assert parse_bool(words) is expected


@pytest.mark.parametrize("words, message", [
    (["maybe"], "invalid boolean 'maybe'"),
    (["2"], "invalid boolean '2'"),
    ([""], "invalid boolean ''"),
    (["yes", "no"], "expected one boolean value"),
])
def test_bool_errors(words, message):
    with pytest.raises(ValueError, match=message):
        parse_bool(words)


@pytest.mark.parametrize("words, seconds", [
    (["1h"], 3600.0),
    (["1h", "5m"], 3900.0),
    (["1h5m"], 3900.0),
    (["500ms"], 0.5),
    (["1.5h"], 5400.0),
    ([".5s"], 0.5),
    (["0"], 0.0),
    (["+0"], 0.0),
    (["0s"], 0.0),
    (["+5s"], 5.0),
    (["1m30s"], 90.0),
    (["2us"], 2e-6), (["3µs"], 3e-6), (["4ns"], 4e-9),
    (["1h", "30m", "15s"], 5415.0),
])
def test_duration(words, seconds):
    assert parse_duration(words) == pytest.approx(seconds)


@pytest.mark.parametrize("words, message", [
    (["-1h"], "duration '-1h' is negative"),
    (["-0"], "is negative"),
    (["1d"], "invalid duration '1d'"),          # no days, as in Go
    (["1w"], "invalid duration '1w'"),
    (["abc"], "invalid duration 'abc'"),
    (["10"], "invalid duration '10'"),          # only 0 may lack a unit
    (["1h", "x"], "invalid duration '1h x'"),
    (["5m", "-1s"], "invalid duration"),
    (["h"], "invalid duration 'h'"),
    (["+"], "expected a duration"),
    ([], "expected a duration"),
])
def test_duration_errors(words, message):
    with pytest.raises(ValueError, match=message):
        parse_duration(words)


@pytest.mark.parametrize("words, size", [
    (["32M"], 32 * 1024 ** 2),
    (["3M", "5K"], 3 * 1024 ** 2 + 5 * 1024),
    (["5b"], 5),
    (["5B"], 5),
    (["0"], 0),
    (["0K"], 0),
    (["2G"], 2 * 1024 ** 3),
    (["1k"], 1024),
    (["1g", "1m", "1k", "1b"], 1024 ** 3 + 1024 ** 2 + 1024 + 1),
])
def test_size(words, size):
    assert parse_size(words) == size


@pytest.mark.parametrize("words, message", [
    (["32M5K"], "invalid size '32M5K'"),        # one unit per argument
    (["10"], "invalid size '10'"),              # only 0 may lack a unit
    (["00"], "invalid size '00'"),
    (["-1M"], "invalid size '-1M'"),
    (["1.5M"], "invalid size '1.5M'"),
    (["32MB"], "invalid size '32MB'"),
    (["1T"], "invalid size '1T'"),
    ([], "expected a size"),
])
def test_size_errors(words, message):
    with pytest.raises(ValueError, match=message):
        parse_size(words)


@pytest.mark.parametrize("words, bounds, expected", [
    (["5"], (None, None), 5),
    (["-5"], (None, None), -5),
    (["0"], (0, 10), 0),
    (["10"], (0, 10), 10),
])
def test_int(words, bounds, expected):
    assert parse_int(words, *bounds) == expected


@pytest.mark.parametrize("words, bounds, message", [
    (["-1"], (0, 10), "-1 is too small: the minimum is 0"),
    (["11"], (0, 10), "11 is too large: the maximum is 10"),
    (["x"], (None, None), "invalid integer 'x'"),
    (["1.0"], (None, None), "invalid integer '1.0'"),
    ([], (None, None), "expected one integer"),
    (["1", "2"], (None, None), "expected one integer"),
])
def test_int_errors(words, bounds, message):
    with pytest.raises(ValueError, match=message):
        parse_int(words, *bounds)


@pytest.mark.parametrize("word, expected", [
    ("tcp://127.0.0.1:25", Endpoint("tcp", "127.0.0.1", 25)),
    ("tls://mx.example.org:465", Endpoint("tls", "mx.example.org", 465)),
    ("TCP://h:1", Endpoint("tcp", "h", 1)),
    ("tcp://[::1]:2525", Endpoint("tcp", "::1", 2525)),
    ("tcp://[2001:db8::1]:0", Endpoint("tcp", "2001:db8::1", 0)),
    ("tcp://:25", Endpoint("tcp", "", 25)),                  # every address
    ("tcp://h:65535", Endpoint("tcp", "h", 65535)),
    ("unix:///var/run/lmtp.sock", Endpoint("unix", path="/var/run/lmtp.sock")),
    ("unix://lmtp.sock", Endpoint("unix", path="/run/gmta/lmtp.sock")),   # under runtime_dir
    ("unix://sub/dir.sock", Endpoint("unix", path="/run/gmta/sub/dir.sock")),
])
def test_endpoint(word, expected):
    assert parse_endpoint(word, "/run/gmta/") == expected


def test_relative_unix_endpoint_without_runtime_dir_stays_relative():
    assert parse_endpoint("unix://x.sock").path == "x.sock"


@pytest.mark.parametrize("word, message", [
    ("smtp://h:25", "unsupported scheme smtp://"),
    ("http://h:80", "unsupported scheme http://"),
    ("h:25", "expected tcp://HOST:PORT"),
    ("tcp://h", "the port is missing"),
    ("tcp://h:", "invalid port ''"),
    ("tcp://h:x", "invalid port 'x'"),
    ("tcp://h:70000", "invalid port '70000'"),
    ("tcp://h:-1", "invalid port '-1'"),
    ("tcp://h:+1", r"invalid port '\+1'"),
    ("tcp://h:\u0663", "invalid port"),            # ARABIC-INDIC DIGIT THREE
    ("tcp://h:\u00b2", "invalid port"),            # SUPERSCRIPT TWO
    ("tcp://::1:25", "write IPv6 addresses in brackets"),
    ("tcp://[::1]", r"expected \[IPv6\]:PORT"),
    ("tcp://[::1]x25", r"expected \[IPv6\]:PORT"),
    ("tcp://[::1:25", r"expected \[IPv6\]:PORT"),
    ("tcp://[zz]:25", "invalid IPv6 address 'zz'"),
    ("tcp://[1.2.3.4]:25", "invalid IPv6 address"),
    ("tcp://a/b:25", "invalid host 'a/b'"),
    ("unix://", "the unix socket path is empty"),
])
def test_endpoint_errors(word, message):
    with pytest.raises(ValueError, match=message):
        parse_endpoint(word, "/run/gmta")


@pytest.mark.parametrize("endpoint, text, tls, unix", [
    (Endpoint("tcp", "127.0.0.1", 25), "tcp://127.0.0.1:25", False, False),
    (Endpoint("tls", "::1", 465), "tls://[::1]:465", True, False),
    (Endpoint("unix", path="/run/x.sock"), "unix:///run/x.sock", False, True),
])
def test_endpoint_properties(endpoint, text, tls, unix):
    assert (str(endpoint), endpoint.tls, endpoint.is_unix) == (text, tls, unix)
    assert parse_endpoint(text) == endpoint                 # str() is parseable again

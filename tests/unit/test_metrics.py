"""The metrics registry, its two text formats, and the HTTP request handling of
the ``openmetrics`` endpoint (no sockets)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

import gmta.metrics
from gmta.endpoint.openmetrics import (MAX_REQUEST_SIZE, HTTPError, parse_request, request_head,
                                       response_bytes, route)
from gmta.metrics.registry import Registry, escape_label_value, format_value
from tests.exposition import ParseError, parse, value

DOCS = Path(__file__).resolve().parents[2] / "docs"


def registry() -> Registry:
    return Registry(dropped_metric="t_dropped_total", failed_metric="t_failed_total")


def test_counter_gauge_and_labels_render_and_parse_in_both_formats():
    r = registry()
    sent = r.counter("t_sent_total", "Messages sent", ("endpoint", "code_class"))
    sent.labels("smtp", "2xx").inc()
    sent.labels(endpoint="smtp", code_class="2xx").inc(2)
    active = r.gauge("t_active", "Open sessions")
    active.inc()
    active.inc()
    active.dec()
    r.info("t_build_info", "Version", {"version": "1.2"})
    for openmetrics in (False, True):
        samples = parse(r.render(openmetrics), openmetrics)
        assert value(samples, "t_sent_total", endpoint="smtp", code_class="2xx") == 3
        assert value(samples, "t_active") == 1
        assert value(samples, "t_build_info", version="1.2") == 1
    text = r.render()
    assert "# TYPE t_sent_total counter\n" in text and "# TYPE t_build_info gauge\n" in text
    om = r.render(openmetrics=True)
    assert "# TYPE t_sent counter\n" in om and "# TYPE t_build info\n" in om
    assert om.endswith("# EOF\n") and not text.endswith("# EOF\n")


def test_label_values_and_help_are_escaped():
    r = registry()
    family = r.counter("t_odd_total", 'Help with \\ and "quotes"\nand a line', ("key",))
    odd = 'back\\slash "quote"\nnewline'
    family.labels(odd).inc()
    text = r.render()
    assert 't_odd_total{key="back\\\\slash \\"quote\\"\\nnewline"} 1' in text
    assert '# HELP t_odd_total Help with \\\\ and "quotes"\\nand a line' in text
    assert '# HELP t_odd Help with \\\\ and \\"quotes\\"\\nand a line' in r.render(True)
    for openmetrics in (False, True):
        assert value(parse(r.render(openmetrics), openmetrics), "t_odd_total", key=odd) == 1
    assert escape_label_value("a\\b") == "a\\\\b"


def test_label_sets_are_bounded_and_drops_counted():
    r = registry()
    family = r.counter("t_keys_total", "Keys", ("key",), max_label_sets=3)
    for i in range(10):
        family.labels(f"k{i}").inc()
    samples = parse(r.render())
    assert [k for k in samples if k[0] == "t_keys_total"] == [
        ("t_keys_total", (("key", f"k{i}"),)) for i in range(3)]
    assert value(samples, "t_dropped_total", metric="t_keys_total") == 7


def test_gauge_functions_are_read_at_scrape_time_and_failures_do_not_break_it():
    r = registry()
    family = r.gauge_function("t_entries", "Entries", ("queue",))
    size = [5]
    family.track(("a",), lambda: size[0])
    family.track(("b",), lambda: 1 / 0)
    size[0] = 7
    samples = parse(r.render())
    assert value(samples, "t_entries", queue="a") == 7
    assert ("t_entries", (("queue", "b"),)) not in samples
    assert value(samples, "t_failed_total", metric="t_entries") == 1
    family.remove("a")
    assert ("t_entries", (("queue", "a"),)) not in parse(r.render())


@pytest.mark.parametrize("name, labels, type_", [
    ("bad-name_total", (), "counter"),
    ("t_no_suffix", (), "counter"),
    ("t_x_total", ("__reserved",), "counter"),
    ("t_x_total", ("a", "a"), "counter"),
    ("t_x_total", ("bad-label",), "counter"),
])
def test_bad_names_are_refused(name, labels, type_):
    with pytest.raises(ValueError):
        registry().counter(name, "x", labels)


def test_misuse_is_refused():
    r = registry()
    family = r.counter("t_c_total", "c", ("a",))
    with pytest.raises(ValueError):
        family.labels("x").inc(-1)
    with pytest.raises(TypeError):
        family.labels("x", "y")
    with pytest.raises(TypeError):
        family.labels(b="x")
    with pytest.raises(ValueError):
        r.counter("t_c_total", "again")


@pytest.mark.parametrize("number, text", [
    (0, "0"), (3.0, "3"), (-2, "-2"), (0.25, "0.25"), (1.5e20, "1.5e+20"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"),
])
def test_sample_values(number, text):
    assert format_value(number) == text


@pytest.mark.parametrize("bad", [
    "t_x 1\n",                                            # no TYPE
    "# TYPE t_x gauge\nt_x{a=\"b\\q\"} 1\n",              # bad escape
    "# TYPE t_x gauge\nt_x 1\nt_x 2\n",                   # repeated series
    "# TYPE t_x gauge\nt_x one\n",                        # not a number
    "# TYPE t_x gauge\n# TYPE t_x gauge\n",               # second TYPE
    "# TYPE t_x gauge\nt_x 1",                            # no final line feed
])
def test_the_test_parser_is_strict(bad):
    with pytest.raises(ParseError):
        parse(bad)


def test_every_gmta_metric_is_documented():
    page = (DOCS / "reference" / "openmetrics.md").read_text()
    for family in gmta.metrics.REGISTRY.families():
        assert f"`{family.name}`" in page, family.name
        for label in family.labelnames:
            assert re.search(rf"`{family.name}`.*`{label}`", page), (family.name, label)


def test_gmta_exposition_parses():
    gmta.metrics.count_reply(gmta.metrics.MESSAGES_ACCEPTED, gmta.metrics.MESSAGES_REJECTED,
                             "smtp tcp://[::1]:25", 451)
    for openmetrics in (False, True):
        samples = parse(gmta.metrics.REGISTRY.render(openmetrics), openmetrics)
        assert value(samples, "gmta_messages_rejected_total", endpoint="smtp tcp://[::1]:25",
                     code_class="4xx") >= 1


# -- HTTP --------------------------------------------------------------------------------

def test_request_head_waits_for_the_empty_line_and_is_bounded():
    assert request_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n") is None
    assert request_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == \
        b"GET /metrics HTTP/1.1\r\nHost: x"
    assert request_head(b"GET /metrics HTTP/1.0\n\n") == b"GET /metrics HTTP/1.0"
    with pytest.raises(HTTPError) as e:
        request_head(b"GET /" + b"a" * MAX_REQUEST_SIZE)
    assert e.value.status == 414
    with pytest.raises(HTTPError) as e:
        request_head(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_SIZE)
    assert e.value.status == 431


@pytest.mark.parametrize("head, status", [
    (b"GET /metrics", 400),
    (b"GET  /metrics HTTP/1.1", 400),
    (b"GET /metrics HTTP/1.1\r\nNo colon here", 400),
    (b"GET /metrics HTTP/1.1\r\nBad name : x", 400),
    (b"GET /metrics FTP/1.1", 400),
    (b"GET /metrics HTTP/3", 505),
    (b"GET /m\xc3\xa9trics HTTP/1.1", 400),
])
def test_malformed_requests(head, status):
    with pytest.raises(HTTPError) as e:
        parse_request(head)
    assert e.value.status == status


def test_routes():
    def answer(head):
        return route(parse_request(head))

    status, headers, body = answer(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    parse(body.decode())
    status, headers, body = answer(b"GET /metrics HTTP/1.1\r\n"
                                   b"Accept: application/openmetrics-text;version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert answer(b"HEAD /metrics HTTP/1.0")[0] == 200
    assert answer(b"POST /metrics HTTP/1.1")[:2] == (405, {"Allow": "GET, HEAD"})
    assert answer(b"GET / HTTP/1.1")[0] == 404


def test_response_bytes():
    data = response_bytes(404, {}, b"nope\n")
    assert data == (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Length: 5\r\nConnection: close\r\n\r\nnope\n")
    assert response_bytes(200, {}, b"body", head_only=True).endswith(
        b"Content-Length: 4\r\nConnection: close\r\n\r\n")


def test_gmta_route_skips_the_openmetrics_endpoint(tmp_path):
    import gmta.modules  # noqa: F401  (fills the module registry)
    from gmta.config.loader import load_text
    from gmta.pipeline.route import find_pipeline

    config = load_text(f"hostname mx.test\nstate_dir {tmp_path}\ntls off\n"
                       "openmetrics tcp://127.0.0.1:9749 { }\n"
                       "smtp tcp://127.0.0.1:2525 { deliver_to dummy }\n")
    assert find_pipeline(config, None)[1].startswith("smtp tcp://127.0.0.1:2525")
    with pytest.raises(LookupError):
        find_pipeline(config, "openmetrics")


def test_openmetrics_refuses_tls_and_needs_an_address(tmp_path):
    import gmta.modules  # noqa: F401
    from gmta.config.loader import load_text
    from gmta.errors import ConfigErrors

    base = f"hostname mx.test\nstate_dir {tmp_path}\ntls off\n"
    for block, message in (("openmetrics tls://127.0.0.1:9749 { }", "plain HTTP only"),
                           ("openmetrics { }", "expected at least one listen address"),
                           ("openmetrics tcp://127.0.0.1:9749 { debug }",
                            "unexpected directive: debug")):
        with pytest.raises(ConfigErrors) as e:
            load_text(base + block + "\n")
        assert message in str(e.value)


# -- the counting places (the integration test covers endpoints, queues, targets) ---------

def test_limits_count_waits_and_refusals():
    import gevent

    from gmta.errors import SMTPError
    from gmta.limits import LimitSet, Rule

    limits = LimitSet([Rule("ip", "concurrency", 1), Rule("all", "rate", 1, 0.05)],
                      wait_timeout=0.5, label="t_limits", max_keys=1)
    waits, refusals = gmta.metrics.LIMIT_WAITS, gmta.metrics.LIMIT_REFUSALS
    start_rate = waits.value("t_limits", "all", "rate")
    start_slot = waits.value("t_limits", "ip", "concurrency")
    first = limits.take(ip="192.0.2.1")
    # Waits for a rate token (the burst is 1), then for the slot, which comes back
    # only once the second take is surely waiting for it (not on a timer: the
    # loop's cached clock can be stale after a slow test and fire it early).
    second = gevent.spawn(limits.take, ip="192.0.2.1")
    gevent.sleep(0.2)
    assert not second.ready()
    first.release()
    second.get(timeout=5).release()
    assert waits.value("t_limits", "all", "rate") == start_rate + 1
    assert waits.value("t_limits", "ip", "concurrency") == start_slot + 1
    held = limits.take(ip="192.0.2.1")
    keys_full = refusals.value("t_limits", "ip", "keys_full")
    with pytest.raises(SMTPError):
        limits.take(ip="192.0.2.2")   # the one key of the ip map is busy
    assert refusals.value("t_limits", "ip", "keys_full") == keys_full + 1
    timeouts = refusals.value("t_limits", "ip", "concurrency")
    with pytest.raises(SMTPError):
        limits.acquire({"ip": "192.0.2.1"}, timeout=0.05)
    assert refusals.value("t_limits", "ip", "concurrency") == timeouts + 1
    held.release()


def test_dns_failures_are_counted_by_kind_and_type():
    from gmta.net.dns import DNSError, Resolver

    # A port nobody answers on: the lookup times out.
    resolver = Resolver((("127.0.0.1", 9),), query_timeout=0.1, lifetime=0.3)
    def failures():
        # Port 9 may refuse (ICMP) rather than drop: either is a failed MX lookup.
        return sum(gmta.metrics.DNS_FAILURES.value(kind, "MX") for kind in ("timeout", "servfail"))

    before = failures()
    with pytest.raises(DNSError):
        resolver.mx("example.test")
    assert failures() == before + 1

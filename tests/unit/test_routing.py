"""Routing: source/destination rules, tables, reroute, modifiers, checks, and how the
results of several targets become one answer (maddy-behaviour §2.2, §3.3 P1–P6).

Pipelines are loaded from configuration text through the real loader; targets are
``dummy`` blocks (which record their recipients) or, for failures, small targets
defined here that answer as a real LMTP or queue target would.
"""

from __future__ import annotations

import re

import pytest

import gmta.modules  # noqa: F401
from gmta.config import module as registry
from gmta.config.loader import load_text
from gmta.delivery import MessageMeta, PartialDeliveryError
from gmta.errors import ConfigErrors, SMTPError
from gmta.pipeline.check import Check, CheckResult, CheckState
from gmta.pipeline.pipeline import DestinationBlock
from gmta.pipeline.route import route as dry_route

HEAD = "hostname mx.test\ntls off\nstate_dir {state}\n"


def load(tmp_path, body: str, top: str = ""):
    text = HEAD.format(state=tmp_path) + top + "\nsmtp tcp://127.0.0.1:0 {\n" + body + "\n}\n"
    # A second endpoint refers to every dummy block, so that a test need not use them
    # all ("unused configuration block" is an error).
    names = re.findall(r"^dummy (\w+) \{", top, re.MULTILINE)
    if names:
        text += "lmtp tcp://127.0.0.1:0 {\n" + "".join(f" deliver_to &{n}\n" for n in names) + "}\n"
    return load_text(text, "r.conf")


def pipeline_of(tmp_path, body: str, top: str = ""):
    return load(tmp_path, body, top).endpoints[0].pipeline


def config_error(tmp_path, body: str, top: str = "") -> str:
    with pytest.raises(ConfigErrors) as e:
        load(tmp_path, body, top)
    return str(e.value)


def deliver(pipeline, sender: str, rcpts: list[str], meta: MessageMeta | None = None):
    """Route *rcpts*; returns (delivery, {target name: recipients}, {rcpt: error})."""
    delivery = pipeline.start_delivery(meta or MessageMeta("m1"), sender)
    refused = {}
    for rcpt in rcpts:
        try:
            delivery.add_rcpt(rcpt)
        except SMTPError as e:
            refused[rcpt] = e
    got = {td.target.instance_name: list(td.delivery.rcpts) for td in delivery.targets.values()}
    return delivery, got, refused


TWO_TARGETS = "dummy a {\n}\ndummy b {\n}\n"


# -- P1, P2: rewriting happens before matching ----------------------------------------

@pytest.mark.parametrize("module", ["replace_rcpt", "modify.replace_rcpt"])
def test_p1_root_replace_rcpt_then_destination_matching(tmp_path, module):
    pipeline = pipeline_of(tmp_path, f"""
    modify {{
        {module} static {{
            entry a@maddy.test b@maddy.test
        }}
    }}
    destination a@maddy.test {{
        reject
    }}
    destination b@maddy.test {{
        deliver_to &a
    }}
    default_destination {{
        reject
    }}""", TWO_TARGETS)
    delivery, got, refused = deliver(pipeline, "x@y.test", ["a@maddy.test"])
    assert refused == {}
    assert got == {"a": ["b@maddy.test"]}
    assert delivery.meta.original_rcpts == {"b@maddy.test": "a@maddy.test"}


def test_p2_root_replace_sender_then_source_matching(tmp_path):
    pipeline = pipeline_of(tmp_path, """
    modify {
        replace_sender static {
            entry a@maddy.test b@maddy.test
        }
    }
    source a@maddy.test {
        reject
    }
    source b@maddy.test {
        destination rcpt@maddy.test {
            deliver_to &a
        }
        default_destination {
            reject
        }
    }
    default_source {
        reject
    }""", TWO_TARGETS)
    delivery, got, refused = deliver(pipeline, "a@maddy.test", ["rcpt@maddy.test"])
    assert refused == {} and got == {"a": ["rcpt@maddy.test"]}
    assert [td.sender for td in delivery.targets.values()] == ["b@maddy.test"]


# -- P4: matching -------------------------------------------------------------------------

MATCHING = """
    source postmaster {
        deliver_to &a
    }
    source sender@example.com {
        deliver_to &b
    }
    source example.com {
        deliver_to &c
    }
    default_source {
        destination postmaster {
            deliver_to &a
        }
        destination rcpt@é.example.com {
            deliver_to &b
        }
        destination example.com {
            deliver_to &c
        }
        default_destination {
            reject 550 5.1.1 "No"
        }
    }"""
THREE = TWO_TARGETS + "dummy c {\n}\n"


@pytest.mark.parametrize("sender, target", [
    ("POSTMastER", "a"), ("postmaster", "a"),
    ("SenDeR@EXAMPLE.com", "b"), ("sender@exAMPle.com", "b"),
    ("other@example.COM", "c"), ("other@xn--exmple-cua.com", None), ("", None)])
def test_p4_source_matching_is_case_insensitive_and_address_beats_domain(tmp_path, sender,
                                                                         target):
    pipeline = pipeline_of(tmp_path, MATCHING, THREE)
    _, got, refused = deliver(pipeline, sender, ["rcpt@example.com"])
    if target is None:   # the default source: routed by its destination rules
        assert got == {"c": ["rcpt@example.com"]} and refused == {}
    else:
        assert got == {target: ["rcpt@example.com"]}


@pytest.mark.parametrize("rcpt, target", [
    ("POSTMASTER", "a"), ("rcpt@E\u0301.EXAMPLE.com", "b"), ("rcpt@xn--9ca.example.com", "b"),
    ("RCPT@é.example.com", "b"), ("x@EXAMPLE.com", "c"), ("rcpt@example.net", None)])
def test_p4_destination_matching_normalises_case_nfc_and_idna(tmp_path, rcpt, target):
    pipeline = pipeline_of(tmp_path, MATCHING, THREE)
    _, got, refused = deliver(pipeline, "", [rcpt])
    if target is None:
        assert refused[rcpt] == SMTPError(550, (5, 1, 1), "No") and got == {}
    else:
        assert list(got) == [target]


def test_p4_destination_in_table_is_checked_before_rules(tmp_path):
    aliases = tmp_path / "vips"
    aliases.write_text("vip@example.com: yes\n")
    pipeline = pipeline_of(tmp_path, f"""
    destination vip@example.com example.com {{
        deliver_to &b
    }}
    destination_in file {aliases} {{
        deliver_to &a
    }}
    default_destination {{
        reject
    }}""", TWO_TARGETS)
    _, got, _ = deliver(pipeline, "", ["VIP@example.com", "other@example.com"])
    assert got == {"a": ["VIP@example.com"], "b": ["other@example.com"]}


def test_p4_two_recipients_in_two_blocks_with_one_target_make_one_delivery(tmp_path):
    pipeline = pipeline_of(tmp_path, """
    destination one@example.com {
        deliver_to &a
    }
    destination two@example.com {
        deliver_to &a
    }
    default_destination {
        reject
    }""", TWO_TARGETS)
    delivery, got, _ = deliver(pipeline, "", ["one@example.com", "two@example.com"])
    assert got == {"a": ["one@example.com", "two@example.com"]}
    assert len(delivery.targets) == 1


def test_p4_one_recipient_expanded_across_domains_each_target_gets_its_own(tmp_path):
    pipeline = pipeline_of(tmp_path, """
    modify {
        replace_rcpt static {
            entry list@example.com a@one.test b@two.test
        }
    }
    destination one.test {
        deliver_to &a
    }
    destination two.test {
        deliver_to &b
    }
    default_destination {
        reject
    }""", TWO_TARGETS)
    delivery, got, _ = deliver(pipeline, "", ["list@example.com"])
    assert got == {"a": ["a@one.test"], "b": ["b@two.test"]}
    assert delivery.meta.original_rcpts == {"a@one.test": "list@example.com",
                                            "b@two.test": "list@example.com"}


def test_p4_per_source_split_and_per_rcpt_reject(tmp_path):
    pipeline = pipeline_of(tmp_path, """
    source one.test {
        destination example.com {
            deliver_to &a
        }
        default_destination {
            reject 550 5.7.1 "one: no"
        }
    }
    source two@two.test {
        deliver_to &b
    }
    default_source {
        reject 550 5.7.1 "nobody"
    }""", TWO_TARGETS)
    assert deliver(pipeline, "x@one.test", ["r@example.com"])[1] == {"a": ["r@example.com"]}
    assert deliver(pipeline, "x@one.test", ["r@other.com"])[2]["r@other.com"].text == "one: no"
    assert deliver(pipeline, "two@two.test", ["r@other.com"])[1] == {"b": ["r@other.com"]}
    assert deliver(pipeline, "x@two.test", ["r@example.com"])[2]["r@example.com"].text == \
        "nobody"


def test_a_refused_address_of_an_expansion_refuses_the_rcpt_and_touches_no_target(tmp_path):
    pipeline = pipeline_of(tmp_path, """
    modify {
        replace_rcpt static {
            entry list@example.com a@one.test b@nowhere.test
        }
    }
    destination one.test {
        deliver_to &a
    }
    default_destination {
        reject 550 5.1.1 "unknown"
    }""", TWO_TARGETS)
    delivery, got, refused = deliver(pipeline, "", ["list@example.com"])
    assert refused["list@example.com"].code == 550
    assert got == {} and delivery.meta.original_rcpts == {}


def test_duplicate_final_recipients_are_delivered_once(tmp_path):
    pipeline = pipeline_of(tmp_path, """
    modify {
        replace_rcpt static {
            entry one@example.com same@example.com
            entry two@example.com same@example.com other@example.com
        }
    }
    deliver_to &a""", TWO_TARGETS)
    _, got, _ = deliver(pipeline, "", ["one@example.com", "two@example.com", "one@example.com"])
    assert got == {"a": ["same@example.com", "other@example.com"]}


def test_local_part_fallback_keeps_the_domain(tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("info: alice, bob@other.test\n")
    pipeline = pipeline_of(tmp_path, f"""
    modify {{
        replace_rcpt file {aliases}
    }}
    deliver_to &a""", TWO_TARGETS)
    _, got, _ = deliver(pipeline, "", ["info@example.com"])
    assert got == {"a": ["alice@example.com", "bob@other.test"]}


@pytest.mark.parametrize("value", ["@x.test", "nobody", "a@b@"])
def test_invalid_replacement_is_a_temporary_refusal(tmp_path, value, log_lines):
    pipeline = pipeline_of(tmp_path, f"""
    modify {{
        replace_rcpt static {{
            entry a@example.com "{value}"
        }}
    }}
    deliver_to &a""", TWO_TARGETS)
    _, got, refused = deliver(pipeline, "", ["a@example.com"])
    assert refused["a@example.com"] == SMTPError(
        451, (4, 3, 5), "Address rewriting is misconfigured, try again later")
    assert any("event=invalid_replacement" in line for line in log_lines)


# -- reroute ------------------------------------------------------------------------------

REROUTE = """
    destination example.org {
        modify {
            replace_rcpt static {
                entry foxcpp@example.org foxcpp@example.com
            }
        }
        %s
    }
    default_destination {
        reject 550 5.1.1 "User not local"
    }"""


def test_without_reroute_the_rewritten_address_stays_in_its_block(tmp_path):
    pipeline = pipeline_of(tmp_path, REROUTE % "deliver_to &a", TWO_TARGETS)
    assert deliver(pipeline, "", ["foxcpp@example.org"])[1] == {"a": ["foxcpp@example.com"]}


def test_reroute_matches_the_rewritten_address_again(tmp_path):
    pipeline = pipeline_of(tmp_path, REROUTE % """reroute {
            destination example.org {
                deliver_to &a
            }
            default_destination {
                deliver_to &b
            }
        }""", TWO_TARGETS)
    delivery, got, refused = deliver(pipeline, "s@x.test",
                                     ["foxcpp@example.org", "alice@example.org",
                                      "bob@example.net"])
    assert got == {"b": ["foxcpp@example.com"], "a": ["alice@example.org"]}
    assert refused["bob@example.net"] == SMTPError(550, (5, 1, 1), "User not local")
    assert delivery.meta.original_rcpts["foxcpp@example.com"] == "foxcpp@example.org"


def test_a_pipeline_delivering_to_itself_stops_with_a_routing_loop(tmp_path, log_lines):
    pipeline = pipeline_of(tmp_path, "deliver_to &loop",
                           "msgpipeline loop {\n deliver_to &loop\n}\n")
    _, _, refused = deliver(pipeline, "", ["a@example.com"])
    assert refused["a@example.com"] == SMTPError(554, (5, 4, 6), "Routing loop detected")
    assert any("event=routing_loop" in line for line in log_lines)


def test_msgpipeline_as_a_target(tmp_path):
    pipeline = pipeline_of(tmp_path, """
    destination example.com {
        deliver_to &local_routing
    }
    default_destination {
        reject
    }""", TWO_TARGETS + """msgpipeline local_routing {
    destination postmaster@example.com {
        deliver_to &b
    }
    default_destination {
        deliver_to &a
    }
}
""")
    delivery = pipeline.start_delivery(MessageMeta("m"), "")
    delivery.add_rcpt("postmaster@example.com")
    delivery.add_rcpt("x@example.com")
    [inner] = [td.delivery for td in delivery.targets.values()]
    assert {td.target.instance_name: td.delivery.rcpts for td in inner.targets.values()} == \
        {"b": ["postmaster@example.com"], "a": ["x@example.com"]}


# -- P5: configuration errors -------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    ("source example.com {\n deliver_to dummy\n}",
     "r.conf:6: missing or empty default source block"),
    ("destination example.com {\n deliver_to dummy\n}",
     "r.conf:6: missing or empty default destination block"),
    ("destination .. {\n deliver_to dummy\n}\ndefault_destination {\n reject\n}",
     "r.conf:6: invalid rule '..'"),
    ("destination @example. {\n deliver_to dummy\n}\ndefault_destination {\n reject\n}",
     "r.conf:6: invalid rule '@example.'"),
    ("destination example. {\n deliver_to dummy\n}\ndefault_destination {\n reject\n}",
     "r.conf:6: invalid rule 'example.'"),
    ("destination example.com {\n reject 200\n}\ndefault_destination {\n reject\n}",
     "r.conf:7: reject: invalid reply code '200'"),
    ("source a.test {\n reject\n}\ndefault_source {\n reject\n}\n"
     "destination b.test {\n reject\n}",
     "r.conf:12: can't put handling directives together with source rules: destination"),
    ("destination {\n deliver_to dummy\n}\ndefault_destination {\n reject\n}",
     "r.conf:6: destination: expected at least one rule"),
    ("destination a.test {\n deliver_to dummy\n}\ndefault_destination {\n reject\n}\n"
     "deliver_to dummy",
     "r.conf:12: can't put handling directives together with destination rules: deliver_to"),
    ("destination a.test {\n deliver_to dummy\n}\ndestination A.TEST {\n reject\n}\n"
     "default_destination {\n reject\n}",
     "r.conf:9: duplicate rule a.test"),
    ("destination a.test {\n source b.test {\n  reject\n }\n}\ndefault_destination {\n reject\n}",
     "r.conf:7: source rules are only allowed at the top level of a pipeline: source"),
    ("destination a.test {\n}\ndefault_destination {\n reject\n}",
     "r.conf:6: empty pipeline configuration"),
    ("destination a.test {\n reject\n reroute {\n  reject\n }\n}\n"
     "default_destination {\n reject\n}",
     "r.conf:7: a block cannot both reject and deliver_to or reroute"),
    ("check {\n rspamd\n}\ndeliver_to dummy",
     "r.conf:7: unknown check module: rspamd"),
    ("modify {\n no_such_modifier\n}\ndeliver_to dummy",
     "r.conf:7: unknown modify module: no_such_modifier"),
    # The block of destination_in is the routing block: the table cannot have one.
    ("destination_in static {\n entry a b\n}\ndefault_destination {\n reject\n}",
     "r.conf:7: unexpected directive: entry"),
])
def test_p5_config_errors_name_file_and_line(tmp_path, body, expected):
    assert expected in config_error(tmp_path, body)


def test_p5_reject_410_is_accepted(tmp_path):
    pipeline = pipeline_of(tmp_path, "destination a.test {\n reject 410\n}\n"
                                     "default_destination {\n reject\n}")
    block = pipeline.sources.default.destinations.by_key["a.test"]
    assert isinstance(block, DestinationBlock) and block.reject.code == 410


def test_p3_cycle_through_references_loads(tmp_path):
    config = load(tmp_path, "deliver_to &local_routing",
                  "msgpipeline local_routing {\n destination example.com {\n"
                  "  deliver_to &other\n }\n default_destination {\n  reject\n }\n}\n"
                  "msgpipeline other {\n deliver_to &local_routing\n}\n")
    assert config.endpoints[0].pipeline.targets[0].instance_name == "local_routing"


# -- P6: checks ---------------------------------------------------------------------------

class RecordingCheck(Check):
    """A check module for tests: records each stage it is asked about, and can refuse
    the recipient ``bad@...``, quarantine, and add a header field."""

    name = "check.test_recording"
    calls: list = []

    def configure(self, cfg, ctx) -> None:
        self.label = self.inline_args[0] if self.inline_args else self.instance_name

    max_inline_args = 1

    def check_state(self, meta, mail_from):
        calls, label = self.calls, self.label

        class State(CheckState):
            def check_connection(self):
                calls.append((label, "connection"))
                return CheckResult()

            def check_sender(self, sender):
                calls.append((label, "sender", sender))
                return CheckResult()

            def check_rcpt(self, rcpt):
                calls.append((label, "rcpt", rcpt))
                if rcpt.startswith("bad@"):
                    return CheckResult(reject=SMTPError(550, (5, 7, 1), f"{label} says no"))
                return CheckResult(quarantine=rcpt.startswith("spam@"))

            def check_body(self, header, body):
                calls.append((label, "body"))
                return CheckResult(header=f"X-Checked: {label}\r\n".encode())

            def close(self):
                calls.append((label, "close"))

        return State()


@pytest.fixture
def recording_check():
    registry.register(RecordingCheck)
    RecordingCheck.calls = []
    yield RecordingCheck.calls
    registry.unregister(RecordingCheck)


def test_p6_checks_run_once_per_stage_and_headers_are_merged(tmp_path, recording_check):
    pipeline = pipeline_of(tmp_path, """
    check {
        test_recording root
    }
    destination example.com {
        check {
            test_recording dest
        }
        deliver_to &a
    }
    default_destination {
        reject
    }""", TWO_TARGETS)
    meta = MessageMeta("m")
    delivery, got, refused = deliver(pipeline, "s@x.test",
                                     ["one@example.com", "bad@example.com", "spam@example.com"],
                                     meta)
    assert list(refused) == ["bad@example.com"] and refused["bad@example.com"].text == \
        "root says no"
    assert meta.quarantine
    received = []

    class Keep:
        def add_rcpt(self, rcpt, params=None):
            pass

        def body(self, header, body):
            received.append(header)

        def commit(self):
            pass

        def abort(self):
            pass

    [td] = delivery.targets.values()
    td.delivery = Keep()
    delivery.body(b"Subject: x\r\n\r\n", None)
    delivery.commit()
    assert received == [b"X-Checked: root\r\nX-Checked: dest\r\nSubject: x\r\n\r\n"]
    calls = recording_check
    for label in ("root", "dest"):
        stages = [c[1] for c in calls if c[0] == label]
        assert stages.count("body") == 1 and stages.count("close") == 1
    assert [c[1] for c in calls if c[0] == "root"][:2] == ["connection", "sender"]
    # The destination block's check sees only the recipients routed to it.
    assert [c[2] for c in calls if c[0] == "dest" and c[1] == "rcpt"] == \
        ["one@example.com", "spam@example.com"]


# -- results of several targets ---------------------------------------------------------

class AnswerTarget:
    """A target that answers body()/commit() per recipient, as LMTP or a queue would:
    *fail* maps a recipient to its error; *stage* is where the answer comes."""

    def __init__(self, name, fail=None, stage="body", all_fail=None):
        self.instance_name, self.is_inline = name, True
        self.fail, self.stage, self.all_fail = fail or {}, stage, all_fail
        self.committed, self.aborted = [], []

    def start_delivery(self, meta, mail_from):
        target = self

        class D:
            rcpts: list = []

            def __init__(self):
                self.rcpts = []

            def add_rcpt(self, rcpt, params=None):
                self.rcpts.append(rcpt)

            def _answer(self, stage):
                if stage != target.stage:
                    return
                if target.all_fail is not None:
                    raise target.all_fail
                results = {r: target.fail.get(r) for r in self.rcpts}
                if any(results.values()):
                    raise PartialDeliveryError(results)

            def body(self, header, body):
                self._answer("body")

            def commit(self):
                self._answer("commit")
                target.committed.append(list(self.rcpts))

            def abort(self):
                target.aborted.append(list(self.rcpts))

        return D()


def pipeline_with(tmp_path, targets: dict):
    """Recipients @a.test go to targets['a'], @b.test to targets['b']."""
    pipeline = pipeline_of(tmp_path, """
    destination a.test {
        deliver_to &a
    }
    destination b.test {
        deliver_to &b
    }
    default_destination {
        reject
    }""", TWO_TARGETS)
    for name, target in targets.items():
        pipeline.sources.default.destinations.by_key[f"{name}.test"].targets = [target]
    return pipeline


TEMP = SMTPError(452, (4, 2, 2), "mailbox full")
PERM = SMTPError(550, (5, 1, 1), "no such user")


def run_message(pipeline, rcpts, atomic=True):
    delivery = pipeline.start_delivery(MessageMeta("m"), "s@x.test", atomic=atomic)
    for rcpt in rcpts:
        delivery.add_rcpt(rcpt)
    delivery.body(b"\r\n", None)
    delivery.commit()


def test_smtp_refuses_the_whole_message_when_a_target_refuses_before_delivering(tmp_path):
    a, b = AnswerTarget("a"), AnswerTarget("b", all_fail=TEMP)
    with pytest.raises(SMTPError) as e:
        run_message(pipeline_with(tmp_path, {"a": a, "b": b}), ["x@a.test", "y@b.test"])
    assert e.value == TEMP
    assert a.committed == [] and a.aborted == [["x@a.test"]]


def test_lmtp_commits_the_others_and_reports_per_recipient(tmp_path):
    a, b = AnswerTarget("a"), AnswerTarget("b", all_fail=TEMP)
    with pytest.raises(PartialDeliveryError) as e:
        run_message(pipeline_with(tmp_path, {"a": a, "b": b}), ["x@a.test", "y@b.test"],
                    atomic=False)
    assert e.value.results == {"x@a.test": None, "y@b.test": TEMP}
    assert a.committed == [["x@a.test"]]


def test_issue_704_delivered_recipients_are_never_reported_failed(tmp_path):
    """Target b delivered one recipient at body time (LMTP downstream) and refused the
    other; target a refuses nothing. Even over SMTP the rest is committed."""
    a = AnswerTarget("a")
    b = AnswerTarget("b", fail={"bad@b.test": PERM})
    with pytest.raises(PartialDeliveryError) as e:
        run_message(pipeline_with(tmp_path, {"a": a, "b": b}),
                    ["x@a.test", "good@b.test", "bad@b.test"])
    assert e.value.results == {"x@a.test": None, "good@b.test": None, "bad@b.test": PERM}
    assert e.value.delivered == ["x@a.test", "good@b.test"]
    assert a.committed == [["x@a.test"]]


def test_commit_results_per_recipient_are_merged(tmp_path):
    a = AnswerTarget("a", fail={"x@a.test": TEMP}, stage="commit")
    b = AnswerTarget("b", stage="commit")
    with pytest.raises(PartialDeliveryError) as e:
        run_message(pipeline_with(tmp_path, {"a": a, "b": b}), ["x@a.test", "y@b.test"])
    assert e.value.results == {"x@a.test": TEMP, "y@b.test": None}
    assert e.value.temporary


def test_an_rcpt_counts_as_delivered_if_any_of_its_addresses_was(tmp_path):
    a, b = AnswerTarget("a"), AnswerTarget("b", fail={"l@b.test": PERM}, stage="commit")
    rewritten = pipeline_of(tmp_path, """
    modify {
        replace_rcpt static {
            entry list@a.test l@a.test l@b.test
        }
    }
    destination a.test {
        deliver_to &a
    }
    destination b.test {
        deliver_to &b
    }
    default_destination {
        reject
    }""", TWO_TARGETS)
    rewritten.sources.default.destinations.by_key["a.test"].targets = [a]
    rewritten.sources.default.destinations.by_key["b.test"].targets = [b]
    run_message(rewritten, ["list@a.test"])     # no error: l@a.test was delivered
    assert a.committed == [["l@a.test"]]


# -- gmta route ---------------------------------------------------------------------------

def test_route_starts_no_target_and_shows_blocks_with_lines(tmp_path):
    class NeverStart(AnswerTarget):
        def start_delivery(self, meta, mail_from):
            raise AssertionError("gmta route must not start deliveries")

    pipeline = pipeline_with(tmp_path, {"a": NeverStart("a")})
    result = dry_route(pipeline, "", "X@A.TEST")
    assert result.error is None and result.deliveries == [("a", "X@a.test")]
    assert any("destination a.test (r.conf:11) [domain rule a.test]" in text
               for _, text in result.lines)
    refused = dry_route(pipeline, "", "x@c.test")
    assert refused.error == SMTPError(554, (5, 7, 0), "Message rejected due to a local policy")

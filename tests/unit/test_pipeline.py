"""The handling part of a pipeline block: ``reject``, ``deliver_to`` and PipelineDelivery.

Routing rules (source/destination), checks and modifiers are in test_routing.py.
"""

from __future__ import annotations


import pytest

import gmta.modules  # noqa: F401  (registers smtp, dummy, target.maildir...)
from gmta.config.loader import Context, load_text
from gmta.config.parser import parse_text
from gmta.config.reader import read_block
from gmta.delivery import MessageMeta
from gmta.errors import ConfigError, ConfigErrors, SMTPError
from gmta.pipeline.pipeline import DEFAULT_REJECT, HANDLING_DIRECTIVES, Pipeline, parse_reject
from gmta.target.dummy import DummyTarget


def node(text: str):
    return parse_text(text, "t.conf", environ={})[0]


def reject(text: str) -> SMTPError:
    return parse_reject(node(text), None)


def reject_error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        reject(text)
    return str(e.value)


# -- parse_reject ---------------------------------------------------------------------

def test_reject_defaults_to_554_5_7_0():
    error = reject("reject")
    assert error == DEFAULT_REJECT
    assert (error.code, error.enhanced, error.text) == (
        554, (5, 7, 0), "Message rejected due to a local policy")


def test_reject_code_only_gets_the_class_enhanced_code_and_default_text():
    assert reject("reject 450") == SMTPError(450, (4, 0, 0), DEFAULT_REJECT.text)
    assert reject("reject 550") == SMTPError(550, (5, 0, 0), DEFAULT_REJECT.text)


def test_reject_code_and_enhanced_code():
    assert reject("reject 451 4.7.1") == SMTPError(451, (4, 7, 1), DEFAULT_REJECT.text)


def test_reject_text_of_several_words():
    error = reject('reject 550 5.7.1 go   away "and stay" away')
    assert error == SMTPError(550, (5, 7, 1), "go away and stay away")
    assert reject('reject 550 5.7.1 "one quoted  text"').text == "one quoted  text"


def test_reject_temporary_code_is_temporary():
    assert reject("reject 421 4.3.2 later").temporary
    assert not reject("reject 554").temporary


@pytest.mark.parametrize("code", ["250", "354", "600", "55", "5500", "abc", "5x0", "-50"])
def test_reject_invalid_reply_code(code):
    message = reject_error(f"reject {code}")
    assert message.startswith("t.conf:1: reject: invalid reply code")
    assert "4xx" in message


@pytest.mark.parametrize("code", ["\u0664\u0665\u0660", "5\u00b2\u00b2"])
def test_reject_non_ascii_digits_are_a_config_error(code):
    """Unicode digits pass str.isdigit() but not int(): still a located error."""
    assert "invalid reply code" in reject_error(f"reject {code}")


@pytest.mark.parametrize("enhanced", ["5.7", "5.7.1.1", "5.x.1", "5..1", "five", "",
                                      "5.\u00b2.1"])
def test_reject_invalid_enhanced_code(enhanced):
    message = reject_error(f'reject 550 "{enhanced}"')
    assert "invalid enhanced code" in message
    assert "RFC 3463" in message


@pytest.mark.parametrize("text", ["reject 550 4.7.1", "reject 450 5.7.1"])
def test_reject_enhanced_code_must_match_the_reply_class(text):
    message = reject_error(text)
    assert "does not match reply code" in message
    assert "first digit must be" in message


def test_reject_takes_no_block():
    assert "does not take a block" in reject_error("reject {\n}")


# -- Pipeline.from_values -----------------------------------------------------------------

def read(text: str):
    block = node(text)
    ctx = Context("t.conf")
    return read_block(block, block.block, HANDLING_DIRECTIVES, ctx), block


def only_block(pipeline):
    """The destination block of a pipeline without rules."""
    return pipeline.sources.default.destinations.default


def test_from_values_with_targets():
    cfg, where = read("p {\n deliver_to dummy\n deliver_to dummy\n}")
    pipeline = Pipeline.from_values(cfg, where)
    assert len(pipeline.targets) == 2
    assert all(isinstance(t, DummyTarget) for t in pipeline.targets)
    assert only_block(pipeline).reject is None


def test_from_values_with_reject():
    cfg, where = read("p {\n reject 550 5.7.1 no\n}")
    pipeline = Pipeline.from_values(cfg, where)
    assert pipeline.targets == []
    assert only_block(pipeline).reject == SMTPError(550, (5, 7, 1), "no")


def test_from_values_refuses_reject_with_deliver_to():
    cfg, where = read("p {\n deliver_to dummy\n reject\n}")
    with pytest.raises(ConfigError) as e:
        Pipeline.from_values(cfg, where)
    # Located at the reject directive (line 3).
    assert str(e.value).startswith("t.conf:3: a block cannot both reject and deliver_to")


def test_from_values_refuses_an_empty_pipeline():
    cfg, where = read("p {\n}")
    with pytest.raises(ConfigError) as e:
        Pipeline.from_values(cfg, where)
    assert str(e.value).startswith("t.conf:1: empty pipeline configuration")
    assert "deliver_to TARGET" in str(e.value)


ENDPOINT = """hostname mx.test
state_dir {state}
tls off
smtp tcp://127.0.0.1:0 {{
{body}
}}
"""


def load_endpoint(tmp_path, body: str):
    return load_text(ENDPOINT.format(state=tmp_path, body=body), "e.conf")


def test_endpoint_block_errors_name_file_and_line(tmp_path):
    with pytest.raises(ConfigErrors) as e:
        load_endpoint(tmp_path, "    deliver_to dummy\n    reject 550")
    assert "e.conf:6: a block cannot both reject and deliver_to" in str(e.value)
    with pytest.raises(ConfigErrors) as e:
        load_endpoint(tmp_path, "")
    assert "e.conf:4: empty pipeline configuration" in str(e.value)


def test_endpoint_block_gets_its_pipeline(tmp_path):
    config = load_endpoint(tmp_path, "    reject 421 4.3.2 closed for now")
    [endpoint] = config.endpoints
    assert only_block(endpoint.pipeline).reject == SMTPError(421, (4, 3, 2), "closed for now")


# -- PipelineDelivery -----------------------------------------------------------------------

class RecordingTarget:
    """A target whose deliveries write what they are told into a shared journal."""

    def __init__(self, name: str, journal: list, fail: dict | None = None):
        self.name = name
        self.journal = journal
        # method name -> exception to raise (start, add_rcpt, body, commit, abort)
        self.fail = fail or {}
        self.started = 0

    def start_delivery(self, meta, mail_from):
        self.started += 1
        self.journal.append((self.name, "start", mail_from))
        if "start" in self.fail:
            raise self.fail["start"]
        return RecordingDelivery(self)


class RecordingDelivery:
    def __init__(self, target: RecordingTarget):
        self.target = target

    def _record(self, *what):
        self.target.journal.append((self.target.name, *what))
        error = self.target.fail.get(what[0])
        if error is not None:
            raise error

    def add_rcpt(self, rcpt, params=None):
        self._record("add_rcpt", rcpt, params)

    def body(self, header, body):
        self._record("body", header, body)

    def commit(self):
        self._record("commit")

    def abort(self):
        self._record("abort")


META = MessageMeta(id="msg1")


def of(journal, name):
    return [entry[1:] for entry in journal if entry[0] == name]


def test_targets_start_lazily_on_the_first_recipient():
    journal = []
    a, b = RecordingTarget("a", journal), RecordingTarget("b", journal)
    delivery = Pipeline.simple([a, b]).start_delivery(META, "from@x.test")
    assert journal == []
    delivery.add_rcpt("one@x.test", {"notify": None})
    assert journal == [("a", "start", "from@x.test"), ("b", "start", "from@x.test"),
                       ("a", "add_rcpt", "one@x.test", {"notify": None}),
                       ("b", "add_rcpt", "one@x.test", {"notify": None})]
    delivery.add_rcpt("two@x.test")
    assert (a.started, b.started) == (1, 1)
    assert of(journal, "b")[-1] == ("add_rcpt", "two@x.test", None)
    assert delivery.rcpts == ["one@x.test", "two@x.test"]


def test_no_recipient_no_target_work():
    journal = []
    delivery = Pipeline.simple([RecordingTarget("a", journal)]).start_delivery(META, "")
    delivery.abort()
    assert journal == []


def test_duplicate_recipients_are_added_once():
    journal = []
    delivery = Pipeline.simple([RecordingTarget("a", journal)]).start_delivery(META, "")
    delivery.add_rcpt("one@x.test")
    delivery.add_rcpt("one@x.test")
    delivery.add_rcpt("two@x.test")
    delivery.add_rcpt("one@x.test")
    assert [e for e in of(journal, "a") if e[0] == "add_rcpt"] == [
        ("add_rcpt", "one@x.test", None), ("add_rcpt", "two@x.test", None)]
    assert delivery.rcpts == ["one@x.test", "two@x.test"]


def test_reject_refuses_every_recipient_and_starts_nothing():
    journal = []
    error = SMTPError(550, (5, 7, 1), "no")
    delivery = Pipeline.simple([RecordingTarget("a", journal)], reject=error) \
        .start_delivery(META, "")
    for rcpt in ("one@x.test", "two@x.test", "one@x.test"):
        with pytest.raises(SMTPError) as e:
            delivery.add_rcpt(rcpt)
        assert e.value == error
    assert journal == []
    assert delivery.rcpts == []


def test_refused_recipient_is_not_remembered():
    journal = []
    target = RecordingTarget("a", journal, fail={"add_rcpt": SMTPError(550, (5, 1, 1), "unknown")})
    delivery = Pipeline.simple([target]).start_delivery(META, "")
    with pytest.raises(SMTPError):
        delivery.add_rcpt("one@x.test")
    assert delivery.rcpts == []
    with pytest.raises(SMTPError):
        delivery.add_rcpt("one@x.test")   # asked again, not skipped as a duplicate
    # A delivery started for a refused RCPT alone is aborted, and started anew.
    assert target.started == 2
    assert [e[1] for e in journal] == ["start", "add_rcpt", "abort"] * 2


def test_body_and_commit_reach_every_target():
    journal = []
    delivery = Pipeline.simple([RecordingTarget("a", journal), RecordingTarget("b", journal)]) \
        .start_delivery(META, "")
    delivery.add_rcpt("one@x.test")
    body = object()
    delivery.body(b"Subject: x\r\n\r\n", body)
    delivery.commit()
    for name in ("a", "b"):
        assert of(journal, name)[-2:] == [("body", b"Subject: x\r\n\r\n", body), ("commit",)]


def test_body_error_propagates():
    journal = []
    error = SMTPError(451, (4, 3, 0), "disk")
    delivery = Pipeline.simple([RecordingTarget("a", journal, fail={"body": error})]) \
        .start_delivery(META, "")
    delivery.add_rcpt("one@x.test")
    with pytest.raises(SMTPError) as e:
        delivery.body(b"", None)
    assert e.value is error


def test_abort_reaches_every_target_even_if_one_raises(log_lines):
    journal = []
    targets = [RecordingTarget("a", journal, fail={"abort": RuntimeError("boom")}),
               RecordingTarget("b", journal, fail={"abort": SMTPError(451, None, "x")}),
               RecordingTarget("c", journal)]
    delivery = Pipeline.simple(targets).start_delivery(META, "")
    delivery.add_rcpt("one@x.test")
    delivery.abort()
    assert [e for e in journal if e[1] == "abort"] == [("a", "abort"), ("b", "abort"), ("c", "abort")]
    lines = [line for line in log_lines if "module=pipeline" in line]
    assert len(lines) == 2
    assert lines[0].startswith("module=pipeline event=abort_failed msg_id=msg1 target=")
    assert "RuntimeError('boom')" in lines[0]


def test_failed_target_start_leaves_no_half_started_message():
    """A target refusing to start must not leave the others delivering alone."""
    journal = []
    flaky = RecordingTarget("b", journal, fail={"start": SMTPError(451, (4, 3, 0), "busy")})
    a = RecordingTarget("a", journal)
    delivery = Pipeline.simple([a, flaky]).start_delivery(META, "")
    with pytest.raises(SMTPError):
        delivery.add_rcpt("one@x.test")
    # What target a had started is dropped at once.
    assert of(journal, "a") == [("start", ""), ("abort",)]
    del flaky.fail["start"]
    delivery.add_rcpt("two@x.test")
    # Both targets start again and both see the recipient.
    assert of(journal, "a")[-2:] == [("start", ""), ("add_rcpt", "two@x.test", None)]
    assert of(journal, "b")[-2:] == [("start", ""), ("add_rcpt", "two@x.test", None)]
    delivery.commit()
    assert of(journal, "a")[-1] == ("commit",) and of(journal, "b")[-1] == ("commit",)


def test_dummy_target_accepts_everything_and_keeps_nothing():
    pipeline = Pipeline.simple([DummyTarget("dummy", [], None)])
    delivery = pipeline.start_delivery(META, "a@x.test")
    delivery.add_rcpt("one@x.test")
    delivery.add_rcpt("two@x.test")
    [dummy] = [td.delivery for td in delivery.targets.values()]
    assert dummy.rcpts == ["one@x.test", "two@x.test"]
    delivery.body(b"Subject: x\r\n\r\n", None)
    delivery.commit()
    delivery.abort()

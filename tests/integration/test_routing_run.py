"""Routing through the real ``gmta run`` (maddy-behaviour §3.3 P1–P5, P7) and the same
configurations through ``gmta route``; the alias-to-remote tutorial end to end."""

from __future__ import annotations

import smtplib
import subprocess

import pytest

from tests.integration.conftest import GMTA, base_config, maildir_messages

MAILBOXES = """
target.maildir local_mailboxes {
    path maildir/{domain}/{local}
}
"""


def config(state_dir, pipeline: str, top: str = "", kind: str = "smtp") -> str:
    return base_config(state_dir, "tls off") + MAILBOXES + top + \
        f"\n{kind} tcp://127.0.0.1:0 {{\n{pipeline}\n}}\n"


def gmta_route(config_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(GMTA + ["route", "-c", str(config_path), *args],
                          capture_output=True, text=True, timeout=30)


def rcpt_replies(port: int, sender: str, rcpts: list[str], utf8: bool = False):
    """(MAIL reply, [RCPT replies]) of one transaction, then RSET."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        if utf8:
            client.command_encoding = "utf-8"
        mail = client.mail(sender, ["SMTPUTF8"] if utf8 else [])
        replies = [client.rcpt(r) for r in rcpts] if mail[0] == 250 else []
        client.rset()
        return mail, replies


def send(port: int, sender: str, rcpts: list[str], utf8: bool = False) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        options = ["SMTPUTF8"] if utf8 else []
        return client.sendmail(sender, rcpts, b"Subject: routed\r\n\r\nhello\r\n", options)


# -- P1, P2 ---------------------------------------------------------------------------

P1 = """
    modify {
        replace_rcpt static {
            entry a@maddy.test b@maddy.test
        }
    }
    destination a@maddy.test {
        reject
    }
    destination b@maddy.test {
        deliver_to &local_mailboxes
    }
    default_destination {
        reject
    }"""


def test_p1_recipient_rewritten_before_routing(start_gmta, state_dir):
    gmta = start_gmta(config(state_dir, P1))
    assert send(gmta.port(), "x@sender.test", ["a@maddy.test"]) == {}
    assert len(maildir_messages(state_dir, "b@maddy.test")) == 1
    assert maildir_messages(state_dir, "a@maddy.test") == []
    route = gmta_route(gmta.config_path, "--from", "x@sender.test", "a@maddy.test")
    assert route.returncode == 0, route.stderr
    assert "rewritten by root modifiers: <a@maddy.test> -> <b@maddy.test>" in route.stdout
    assert "[address rule b@maddy.test]" in route.stdout
    assert route.stdout.rstrip().endswith("=> deliver <b@maddy.test> to &local_mailboxes")


P2 = """
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
            deliver_to &local_mailboxes
        }
        default_destination {
            reject
        }
    }
    default_source {
        reject
    }"""


def test_p2_sender_rewritten_before_source_matching(start_gmta, state_dir):
    gmta = start_gmta(config(state_dir, P2))
    assert send(gmta.port(), "a@maddy.test", ["rcpt@maddy.test"]) == {}
    [message] = maildir_messages(state_dir, "rcpt@maddy.test")
    assert message.startswith(b"Return-Path: <b@maddy.test>\r\n")
    route = gmta_route(gmta.config_path, "--from", "a@maddy.test", "rcpt@maddy.test")
    assert "sender rewritten by root modifiers: <a@maddy.test> -> <b@maddy.test>" in route.stdout
    assert "source: source b@maddy.test" in route.stdout and route.returncode == 0


# -- P3: reference cycles load; a runtime loop is refused -----------------------------

def test_p3_reference_cycle_loads_and_a_runtime_loop_is_refused(start_gmta, state_dir):
    top = """
msgpipeline local_routing {
    destination loop.test {
        deliver_to &other
    }
    default_destination {
        deliver_to &local_mailboxes
    }
}
msgpipeline other {
    deliver_to &local_routing
}
"""
    gmta = start_gmta(config(state_dir, "deliver_to &local_routing", top))
    mail, replies = rcpt_replies(gmta.port(), "s@sender.test", ["x@loop.test", "y@ok.test"])
    assert replies[0] == (554, b"5.4.6 Routing loop detected")
    assert replies[1][0] == 250
    assert gmta_route(gmta.config_path, "x@loop.test").stdout.rstrip().endswith(
        "=> rejected: 554 5.4.6 Routing loop detected")


# -- P4: matching ---------------------------------------------------------------------

P4 = """
    source postmaster sender@example.com {
        destination postmaster rcpt@é.example.com {
            deliver_to &local_mailboxes
        }
        destination example.com {
            reject 550 5.7.1 "domain rule"
        }
        default_destination {
            reject 550 5.7.1 "default destination"
        }
    }
    source example.com {
        reject 550 5.7.1 "domain source"
    }
    default_source {
        reject 550 5.7.1 "default source"
    }"""


@pytest.mark.parametrize("sender", ["POSTMastER", "SenDeR@EXAMPLE.com", "sender@exAMPle.com"])
def test_p4_senders_and_recipients_match_in_any_case_and_form(start_gmta, state_dir, sender):
    gmta = start_gmta(config(state_dir, P4))
    mail, replies = rcpt_replies(gmta.port(), sender, [
        "POSTMASTER", "rcpt@E\u0301.EXAMPLE.com", "rcpt@xn--9ca.example.com",
        "other@example.com", "x@elsewhere.test"], utf8=True)
    assert mail[0] == 250
    assert [r[0] for r in replies[:3]] == [250, 250, 250]
    assert replies[3] == (550, b"5.7.1 domain rule")           # address rule beats domain
    assert replies[4] == (550, b"5.7.1 default destination")
    assert send(gmta.port(), sender, ["rcpt@E\u0301.EXAMPLE.com", "postmaster"],
                utf8=True) == {}
    assert len(maildir_messages(state_dir, "rcpt@é.example.com")) == 1


def test_p4_source_by_domain_and_default(start_gmta, state_dir):
    gmta = start_gmta(config(state_dir, P4))
    assert rcpt_replies(gmta.port(), "other@Example.COM", ["postmaster"])[1] == \
        [(550, b"5.7.1 domain source")]
    assert rcpt_replies(gmta.port(), "", ["postmaster"])[1] == [(550, b"5.7.1 default source")]


@pytest.mark.parametrize("sender", ["no_at_sign", "@no_mailbox", "no_domain@"])
def test_p4_malformed_senders_are_refused_at_mail(start_gmta, state_dir, sender):
    gmta = start_gmta(config(state_dir, "deliver_to &local_mailboxes"))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail(sender)[0] // 100 == 5


def test_p4_route_shows_table_beats_rule(start_gmta, state_dir, tmp_path):
    users = tmp_path / "vips"
    users.write_text("vip@example.com\n")
    gmta = start_gmta(config(state_dir, f"""
    destination vip@example.com {{
        reject 550 5.7.1 "address rule"
    }}
    destination_in file {users} {{
        deliver_to &local_mailboxes
    }}
    default_destination {{
        reject
    }}"""))
    assert rcpt_replies(gmta.port(), "s@x.test", ["VIP@example.com"])[1][0][0] == 250
    route = gmta_route(gmta.config_path, "VIP@example.com", "nobody@example.com")
    assert f"[table table.file ({gmta.config_path}:" in route.stdout
    assert "=> rejected: 554 5.7.0 Message rejected due to a local policy" in route.stdout
    assert route.returncode == 1


# -- P5: configuration errors through check-config --------------------------------------

@pytest.mark.parametrize("pipeline, message", [
    ("source example.com {\n reject\n}", ":12: missing or empty default source block"),
    ("destination .. {\n reject\n}\ndefault_destination {\n reject\n}", ":12: invalid rule '..'"),
    ("destination example.com {\n reject 200\n}\ndefault_destination {\n reject\n}",
     ":13: reject: invalid reply code '200'"),
])
def test_p5_check_config_names_file_and_line(tmp_path, state_dir, pipeline, message):
    path = tmp_path / "bad.conf"
    path.write_text(config(state_dir, pipeline))
    result = subprocess.run(GMTA + ["check-config", "-c", str(path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert f"{path}{message}" in result.stderr
    assert gmta_route(path, "a@example.com").returncode == 2


# -- LMTP per recipient, SMTP all or nothing ----------------------------------------------

SPLIT = """
target.maildir blocked {
    path blocked/{local}
}
"""
SPLIT_PIPELINE = """
    destination good.test {
        deliver_to &local_mailboxes
    }
    default_destination {
        deliver_to &blocked
    }"""


def test_lmtp_gives_each_recipient_its_own_reply(start_gmta, state_dir):
    (state_dir / "blocked").write_text("a file where the Maildir's parent should be")
    gmta = start_gmta(config(state_dir, SPLIT_PIPELINE, SPLIT, kind="lmtp"))
    # smtplib.LMTP reads one reply after the data, so the replies are read here.
    with smtplib.LMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo("client.test")
        client.mail("s@x.test")
        assert client.rcpt("a@good.test")[0] == 250 and client.rcpt("b@bad.test")[0] == 250
        assert client.docmd("DATA")[0] == 354
        client.send(b"Subject: split\r\n\r\nx\r\n.\r\n")
        replies = [client.getreply(), client.getreply()]
    assert replies == [(250, b"2.0.0 <a@good.test> OK: queued"),
                       (451, b"4.3.0 Local delivery failed, try again later")]
    assert len(maildir_messages(state_dir, "a@good.test")) == 1


def test_smtp_refuses_the_whole_message_when_one_target_fails(start_gmta, state_dir):
    (state_dir / "blocked").write_text("a file where the Maildir's parent should be")
    gmta = start_gmta(config(state_dir, SPLIT_PIPELINE, SPLIT))
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(gmta.port(), "s@x.test", ["a@good.test", "b@bad.test"])
    assert e.value.smtp_code == 451
    assert maildir_messages(state_dir, "a@good.test") == []


# -- P7: the alias-to-remote tutorial (docs/tutorials/alias-to-remote.md) -----------------

def tutorial(state_dir, aliases, local_delivery: str, remote: str = "") -> str:
    """The tutorial's configuration; *local_delivery* is the local destination block's
    handling (with or without reroute)."""
    top = f"""
$(local_domains) = example.org
table.file local_users {{
    file {state_dir}/users
}}
{remote}
msgpipeline local_delivery {{
    destination_in &local_users {{
        deliver_to &local_mailboxes
    }}
    default_destination {{
        reject 550 5.1.1 "User doesn't exist"
    }}
}}
"""
    pipeline = f"""
    default_source {{
        destination $(local_domains) {{
            modify {{
                replace_rcpt file {aliases}
            }}
            {local_delivery}
        }}
        default_destination {{
            reject 550 5.1.1 "User not local"
        }}
    }}"""
    return config(state_dir, pipeline, top)


REROUTE = """reroute {
                destination $(local_domains) {
                    deliver_to &local_delivery
                }
                default_destination {
                    deliver_to &remote_queue
                }
            }"""


@pytest.fixture
def tutorial_files(state_dir):
    (state_dir / "users").write_text("alice@example.org\n")
    aliases = state_dir / "aliases"
    aliases.write_text("foxcpp@example.org: foxcpp@example.com\n")
    return aliases


def test_p7_without_reroute_the_forwarded_address_is_looked_up_locally(start_gmta, state_dir,
                                                                        tutorial_files):
    gmta = start_gmta(tutorial(state_dir, tutorial_files, "deliver_to &local_delivery"))
    _, replies = rcpt_replies(gmta.port(), "someone@example.net",
                              ["foxcpp@example.org", "alice@example.org", "bob@example.net"])
    assert replies == [(550, b"5.1.1 User doesn't exist"), (250, replies[1][1]),
                       (550, b"5.1.1 User not local")]
    route = gmta_route(gmta.config_path, "foxcpp@example.org")
    assert "<foxcpp@example.org> -> <foxcpp@example.com>" in route.stdout
    assert "=> rejected: 550 5.1.1 User doesn't exist" in route.stdout


def test_p7_with_reroute_the_alias_goes_to_the_remote_target(start_gmta, state_dir,
                                                             tutorial_files):
    # A Maildir target named remote_queue stands in for the queue: it shows which
    # recipients would leave, without a network.
    remote = "target.maildir remote_queue {\n    path outbound/{domain}/{local}\n}\n"
    gmta = start_gmta(tutorial(state_dir, tutorial_files, REROUTE, remote))
    _, replies = rcpt_replies(gmta.port(), "someone@example.net",
                              ["foxcpp@example.org", "bob@example.net", "carol@example.org"])
    assert [r[0] for r in replies] == [250, 550, 550]
    assert replies[1] == (550, b"5.1.1 User not local")
    assert replies[2] == (550, b"5.1.1 User doesn't exist")
    assert send(gmta.port(), "someone@example.net", ["foxcpp@example.org",
                                                     "alice@example.org"]) == {}
    [forwarded] = (state_dir / "outbound" / "example.com" / "foxcpp" / "new").iterdir()
    assert b"Delivered-To: foxcpp@example.com\r\n" in forwarded.read_bytes()
    assert len(maildir_messages(state_dir, "alice@example.org")) == 1
    route = gmta_route(gmta.config_path, "--from", "someone@example.net", "foxcpp@example.org")
    assert route.returncode == 0
    assert "reroute <foxcpp@example.com> through reroute" in route.stdout
    assert route.stdout.rstrip().endswith("=> deliver <foxcpp@example.com> to &remote_queue")


def test_p7_reroute_forwards_to_a_real_smtp_server(start_gmta, state_dir, tmp_path,
                                                   tutorial_files):
    # The "remote MX" is a second gmta that files what it receives.
    sink_state = tmp_path / "sink"
    sink_state.mkdir()
    sink = start_gmta(config(sink_state, "deliver_to &local_mailboxes"))
    remote = f"target.smtp remote_queue {{\n    targets tcp://127.0.0.1:{sink.port()}\n}}\n"
    gmta = start_gmta(tutorial(state_dir, tutorial_files, REROUTE, remote))
    assert send(gmta.port(), "someone@example.net", ["foxcpp@example.org"]) == {}
    assert len(maildir_messages(sink_state, "foxcpp@example.com")) == 1
    _, replies = rcpt_replies(gmta.port(), "someone@example.net", ["bob@example.net"])
    assert replies == [(550, b"5.1.1 User not local")]

"""Fuzzing the server machine (h11's fuzz/afl-server.py idea, with hypothesis).

Whatever bytes arrive, cut however, and whatever the driver answers, the machine only
produces events, well-formed replies and at most a clean close; its input buffer stays
bounded, and so do the body chunks it reports.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmta.errors import SMTPError
from gmta.proto import CLOSED, NEED_DATA, BodyChunk, ServerConnection, StartTLS
from gmta.proto.server import BODY_CHUNK_SIZE
from proto_helpers import parse_output

MAX_LINE = 512

# Pieces that steer the machine into its interesting states, mixed with noise.
VOCABULARY = [
    b"EHLO x\r\n", b"HELO x\r\n", b"LHLO x\r\n", b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n", b"RCPT TO:<c@d.example>\r\n",
    b"RCPT TO:<postmaster> NOTIFY=NEVER\r\n", b"DATA\r\n", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n",
    b"BDAT x\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n", b"AUTH PLAIN AGEAYg==\r\n", b"YQ==\r\n", b"*\r\n", b".\r\n", b"..\r\n",
    b"\r\n", b"\n", b"\r", b".", b"\n.\n", b"\r\n.\r\n", b"Subject: x\r\n", b"x" * 300,
    b"VRFY x\r\n", b"HELP\r\n", b"FOO\r\n", "MAIL FROM:<δ@b.example> SMTPUTF8\r\n".encode(),
]

# Whole steps of a session, so that random streams get deep into transactions.
ENVELOPE = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nRCPT TO:<e@d.example>\r\n"
STEPS = [
    ENVELOPE,
    b"DATA\r\nSubject: x\r\n\r\nbody\r\n..dot\r\n.\r\n",
    b"BDAT 5\r\nhelloBDAT 3 LAST\r\nabc",
    b"AUTH PLAIN AGEAYg==\r\n",
]
pieces = st.one_of(st.sampled_from(STEPS), st.sampled_from(STEPS), st.sampled_from(VOCABULARY),
                   st.binary(max_size=40))
options = st.fixed_dictionaries({
    "lmtp": st.booleans(),
    "tls_available": st.booleans(),
    "tls_active": st.booleans(),
    "auth_mechanisms": st.sampled_from([(), ("PLAIN",), ("PLAIN", "LOGIN")]),
    "auth_requires_tls": st.booleans(),
    "max_message_size": st.integers(0, 1000),
    "max_header_size": st.integers(0, 400),
    "max_recipients": st.integers(1, 3),
    "max_bad_commands": st.integers(1, 20),
})


@st.composite
def sessions(draw):
    """Options and a client stream; most streams start by greeting and an envelope."""
    config = draw(options)
    hello = b"LHLO x\r\n" if config["lmtp"] else b"EHLO x\r\n"
    start = draw(st.sampled_from([hello + ENVELOPE, hello, b""]))
    return config, start + b"".join(draw(st.lists(pieces, max_size=40)))


REFUSAL = SMTPError(550, (5, 7, 1), "refused")


def play(conn, stream, cuts, answers):
    """Feed ``stream`` in pieces of the ``cuts`` sizes; check the invariants."""
    output = bytearray()
    position = 0
    cut_sizes = iter(cuts)
    while True:
        event = conn.next_event()
        if event is CLOSED:
            output += conn.data_to_send()
            conn.receive_data(b"more\r\n")
            assert conn.next_event() is CLOSED and conn.data_to_send() == b""
            break
        if event is NEED_DATA:
            assert conn.buffered_bytes <= MAX_LINE + 1
            output += conn.data_to_send()
            if position >= len(stream):
                break
            size = next(cut_sizes, len(stream))
            conn.receive_data(stream[position:position + size])
            position += size
            continue
        if isinstance(event, BodyChunk):
            assert 0 < len(event.data) <= BODY_CHUNK_SIZE
        if event.needs_answer:
            if answers.draw(st.integers(0, 7)):
                conn.accept()
            else:
                conn.reject(REFUSAL)
        if isinstance(event, StartTLS):
            output += conn.data_to_send()
            conn.tls_established()
        output += conn.data_to_send()
    parse_output(bytes(output))   # every line a well-formed reply


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(), st.lists(st.integers(1, 80), max_size=100), st.data())
def test_any_input_gives_only_events_replies_or_a_clean_close(session, cuts, answers):
    config, stream = session
    conn = ServerConnection("mx.example.org", max_line_length=MAX_LINE, **config)
    play(conn, stream, cuts, answers)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.lists(st.integers(1, 300), max_size=30),
       st.data())
def test_random_bytes_inside_a_message(body, cuts, answers):
    conn = ServerConnection("mx.example.org", max_line_length=MAX_LINE)
    prefix = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
    play(conn, prefix + body + b"\r\n.\r\nQUIT\r\n", cuts, answers)

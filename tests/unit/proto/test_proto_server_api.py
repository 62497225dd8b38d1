"""The driver's side of the machine: misuse is a LocalProtocolError, never silence."""

import pytest

from gmta.errors import SMTPError
from gmta.proto import CLOSED, NEED_DATA, BodyChunk, Connected, Ehlo, ServerConnection
from gmta.proto.server import LocalProtocolError
from proto_helpers import greeted


def test_first_event_is_the_connection():
    conn = ServerConnection("mx.example.org")
    assert conn.next_event() == Connected()
    assert conn.data_to_send() == b""   # nothing until the driver answers


def test_next_event_refuses_to_skip_an_answer():
    conn = ServerConnection("mx.example.org")
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.next_event()


@pytest.mark.parametrize("answer", [
    lambda conn: conn.accept(),
    lambda conn: conn.reject(SMTPError(550, (5, 0, 0), "no")),
])
def test_answer_without_a_question(answer):
    conn = greeted().conn
    with pytest.raises(LocalProtocolError):
        answer(conn)


def test_needs_answer_flags():
    assert Connected().needs_answer and Ehlo("x").needs_answer


def test_closed_session_stays_closed():
    session = greeted()
    session.send(b"QUIT\r\n")
    conn = session.conn
    assert conn.next_event() is CLOSED
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() is CLOSED
    assert conn.data_to_send() == b""


def test_sentinels_have_names():
    assert repr(NEED_DATA) == "NEED_DATA" and repr(CLOSED) == "CLOSED"


def test_body_chunk_repr_hides_the_content():
    assert repr(BodyChunk(b"private words")) == "BodyChunk(<13 bytes>)"

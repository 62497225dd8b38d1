"""The SASL pieces of AUTH (RFC 4954): base64 responses, PLAIN and LOGIN.

Only decoding lives here; the exchange itself (334 challenges, "*" to cancel) is a
state of the server machine.
"""

from __future__ import annotations

import base64

from gmta.errors import SMTPError

# RFC 4954 §4 names no mechanism list; these are the two gmta offers (maddy: PLAIN
# always, LOGIN with sasl_login).
MECHANISMS = ("PLAIN", "LOGIN")

# LOGIN's prompts are the base64 of "Username:" and "Password:" (a de-facto standard,
# draft-murchison-sasl-login).
LOGIN_USERNAME_PROMPT = base64.b64encode(b"Username:").decode("ascii")
LOGIN_PASSWORD_PROMPT = base64.b64encode(b"Password:").decode("ascii")


def _undecodable() -> SMTPError:
    return SMTPError(501, (5, 5, 2), "Cannot decode the authentication response")


def decode_response(text: str) -> str:
    """Decode one base64 client response into text.

    RFC 4954 §4: an initial response of "=" stands for an empty one.
    """
    if text == "=":
        return ""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except ValueError:  # bad base64 (binascii.Error), non-ASCII input, not UTF-8
        raise _undecodable() from None


def parse_plain(response: str) -> tuple[str, str, str]:
    """Split a PLAIN response into (authorization id, username, password).

    RFC 4616 §2: ``[authzid] NUL authcid NUL passwd``, neither of the last two empty.
    """
    parts = response.split("\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise _undecodable()
    authorization_id, username, password = parts
    return authorization_id, username, password

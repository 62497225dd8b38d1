"""The error every ``mx_auth`` policy raises to refuse an MX or a connection.

The levels the policies compare are target.remote's own
(``gmta.target.security.MXLevel``/``TLSLevel``, one definition for both layers).
"""

from __future__ import annotations

from gmta.errors import SMTPError


def refusal(policy: str, code: int, enhanced: tuple[int, int, int], summary: str,
            detail: str, **misc) -> SMTPError:
    """The error a policy raises to refuse an MX or a connection.

    The text always names the policy and says why, so an operator reading a
    DSN or a log line knows what to change (maddy issue #717: a refusal that
    did not say which policy refused looked like ``min_tls_level none`` being
    ignored). ``summary`` is maddy's wording where maddy has one.
    """
    return SMTPError(code, enhanced, f"{summary} ({policy}): {detail}",
                     misc={"policy": policy, **misc})

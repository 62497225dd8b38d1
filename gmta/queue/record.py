"""What the queue knows about one message: the ``ID.meta`` JSON document.

The record is versioned JSON (peers-and-style §7.6.5: no pickle). Reading is
strict: a document that does not have the expected shape raises
:class:`CorruptRecord`, and the store moves the entry to ``corrupt/`` instead
of guessing (DESIGN §4.6).

Per recipient the record keeps a state (``pending``, ``delivered``,
``failed``), the number of attempts, the last error and whether the sender was
told (``reported``) — so a restart neither delivers a recipient twice nor
forgets a DSN (maddy issue #328).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gmta.errors import SMTPError

#: Version of the ``.meta`` document; a reader refuses other versions.
FORMAT_VERSION = 1

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
_STATES = (PENDING, DELIVERED, FAILED)


class CorruptRecord(ValueError):
    """The ``.meta`` document cannot be understood."""


def error_to_json(error: SMTPError | None) -> dict | None:
    if error is None:
        return None
    data = {"code": error.code, "enhanced": list(error.enhanced), "text": error.text}
    # A target that knows which server answered says so in misc["remote_mta"]
    # (DSN Remote-MTA, RFC 3464 §2.3.5).
    if error.misc.get("remote_mta"):
        data["remote_mta"] = str(error.misc["remote_mta"])
    return data


def error_from_json(data) -> SMTPError | None:
    if data is None:
        return None
    try:
        misc = {"remote_mta": str(data["remote_mta"])} if data.get("remote_mta") else None
        return SMTPError(int(data["code"]), tuple(int(x) for x in data["enhanced"]),
                         str(data["text"]), misc=misc)
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptRecord(f"invalid error {data!r}: {e}") from None


@dataclass
class Recipient:
    address: str
    #: RCPT parameters: ``notify`` (list of NEVER/SUCCESS/FAILURE/DELAY or None), ``orcpt``.
    params: dict = field(default_factory=dict)
    state: str = PENDING
    tries: int = 0
    error: SMTPError | None = None
    #: Whether the sender has been told what this final state calls for (a DSN, or
    #: nothing when no DSN is due); False while the state is ``pending``.
    reported: bool = False
    #: Whether a "delayed" DSN was sent for this recipient.
    delay_reported: bool = False
    last_attempt: float | None = None

    def notify(self) -> set[str] | None:
        """The NOTIFY keywords (RFC 3461 §4.1), or None when the client gave none."""
        value = self.params.get("notify")
        return None if value is None else set(value)

    def to_json(self) -> dict:
        return {"address": self.address, "params": self.params, "state": self.state,
                "tries": self.tries, "error": error_to_json(self.error),
                "reported": self.reported, "delay_reported": self.delay_reported,
                "last_attempt": self.last_attempt}

    @classmethod
    def from_json(cls, data) -> "Recipient":
        if not isinstance(data, dict) or not isinstance(data.get("address"), str):
            raise CorruptRecord(f"invalid recipient {data!r}")
        state = data.get("state")
        if state not in _STATES:
            raise CorruptRecord(f"invalid recipient state {state!r}")
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise CorruptRecord("recipient params must be an object")
        return cls(data["address"], params, state, _int(data.get("tries", 0)),
                   error_from_json(data.get("error")), bool(data.get("reported")),
                   bool(data.get("delay_reported")), _time(data.get("last_attempt")))


@dataclass
class QueuedMessage:
    """The ``.meta`` record of one queued message."""

    id: str
    #: The id the receiving session gave the message (``msg_id`` in logs).
    msg_id: str
    mail_from: str
    recipients: list[Recipient]
    #: Bytes of the header at the start of ``ID.msg``; the body follows.
    header_size: int
    size: int
    arrival: float
    mail_params: dict = field(default_factory=dict)
    #: Connection facts, kept so DSNs and ``ip`` limits survive a restart.
    conn: dict = field(default_factory=dict)
    quarantine: bool = False
    original_rcpts: dict = field(default_factory=dict)
    next_attempt: float = 0.0
    last_attempt: float | None = None
    held: bool = False
    #: Failed attempts to hand a DSN to the bounce pipeline, and when to try again.
    dsn_tries: int = 0
    dsn_retry_at: float | None = None

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state == PENDING]

    def recipient(self, address: str) -> Recipient:
        for r in self.recipients:
            if r.address == address:
                return r
        raise KeyError(address)

    @property
    def finished(self) -> bool:
        """Nothing left to deliver and nothing left to tell the sender."""
        return not self.pending() and all(r.reported for r in self.recipients)

    def to_json(self) -> dict:
        return {
            "format": FORMAT_VERSION, "id": self.id, "msg_id": self.msg_id,
            "mail_from": self.mail_from, "header_size": self.header_size, "size": self.size,
            "arrival": self.arrival, "mail_params": self.mail_params, "conn": self.conn,
            "quarantine": self.quarantine, "original_rcpts": self.original_rcpts,
            "next_attempt": self.next_attempt, "last_attempt": self.last_attempt,
            "held": self.held, "dsn_tries": self.dsn_tries, "dsn_retry_at": self.dsn_retry_at,
            "recipients": [r.to_json() for r in self.recipients],
        }

    @classmethod
    def from_json(cls, data) -> "QueuedMessage":
        if not isinstance(data, dict):
            raise CorruptRecord("the record is not a JSON object")
        if data.get("format") != FORMAT_VERSION:
            raise CorruptRecord(f"unknown record format {data.get('format')!r} "
                                f"(this gmta reads format {FORMAT_VERSION})")
        try:
            recipients = [Recipient.from_json(r) for r in data["recipients"]]
            for key in ("id", "msg_id", "mail_from"):
                if not isinstance(data[key], str):
                    raise CorruptRecord(f"{key} must be a string")
            for key in ("mail_params", "conn", "original_rcpts"):
                if not isinstance(data.get(key, {}), dict):
                    raise CorruptRecord(f"{key} must be an object")
            if not recipients:
                raise CorruptRecord("no recipients")
            return cls(
                id=data["id"], msg_id=data["msg_id"], mail_from=data["mail_from"],
                recipients=recipients, header_size=_int(data["header_size"]),
                size=_int(data["size"]), arrival=_time(data["arrival"]),
                mail_params=data.get("mail_params", {}), conn=data.get("conn", {}),
                quarantine=bool(data.get("quarantine")),
                original_rcpts=data.get("original_rcpts", {}),
                next_attempt=_time(data.get("next_attempt", 0.0)),
                last_attempt=_time(data.get("last_attempt")), held=bool(data.get("held")),
                dsn_tries=_int(data.get("dsn_tries", 0)),
                dsn_retry_at=_time(data.get("dsn_retry_at")))
        except KeyError as e:
            raise CorruptRecord(f"missing field {e}") from None


def _int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CorruptRecord(f"expected a non-negative integer, not {value!r}")
    return value


def _time(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CorruptRecord(f"expected a time, not {value!r}")
    return float(value)

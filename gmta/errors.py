"""The one error vocabulary of gmta.

Every failure that can reach an SMTP client, a DSN or a queue record is an
:class:`SMTPError`. Anything else that escapes a component is treated as a
temporary failure by whoever catches it (maddy's ``IsTemporaryOrUnspec``).
Configuration problems are :class:`ConfigError`, which always knows the file
and line it is about.
"""

from __future__ import annotations


class GmtaError(Exception):
    """Base class of every error gmta raises on purpose."""


class SMTPError(GmtaError):
    """An SMTP reply that reports a failure: code, enhanced code and text.

    ``enhanced`` is the RFC 3463 triple; its class digit must agree with the
    reply code's first digit (RFC 3463 §2: the class "MUST" match the basic
    code), so ``SMTPError(451, (5, 0, 0), ...)`` is refused: maddy issue #843
    shows how confusing a 451 with a 5.x.x is in logs and DSNs.
    """

    def __init__(self, code: int, enhanced: tuple[int, int, int] | None = None,
                 text: str = "", *, misc: dict | None = None):
        if not 400 <= code <= 599:
            raise ValueError(f"SMTPError needs a 4xx or 5xx code, not {code}")
        if enhanced is None:
            # RFC 3463 §3.1: X.0.0 is "other undefined status" of the class.
            enhanced = (code // 100, 0, 0)
        if enhanced[0] != code // 100:
            raise ValueError(
                f"enhanced code {'.'.join(map(str, enhanced))} does not match reply code {code}")
        self.code = code
        self.enhanced = tuple(enhanced)
        self.text = text
        # Extra key=value context for the log line (never sent to the peer).
        self.misc = dict(misc or {})
        super().__init__(str(self))

    @property
    def temporary(self) -> bool:
        """4xx replies are transient (RFC 5321 §4.2.1); 5xx are permanent."""
        return self.code < 500

    @property
    def enhanced_str(self) -> str:
        return "%d.%d.%d" % self.enhanced

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced_str} {self.text}".rstrip()

    def __repr__(self) -> str:
        return f"SMTPError({self.code}, {self.enhanced!r}, {self.text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SMTPError):
            return NotImplemented
        return (self.code, self.enhanced, self.text) == (other.code, other.enhanced, other.text)

    def __hash__(self) -> int:
        return hash((self.code, self.enhanced, self.text))


def temporary_error(text: str, enhanced: tuple[int, int, int] = (4, 0, 0)) -> SMTPError:
    """The reply for an unexpected internal failure: try again later."""
    return SMTPError(451, enhanced, text)


class ConfigError(GmtaError):
    """A problem in a configuration file, reported as ``file:line: message``.

    ``hint`` says what was expected, when that helps the operator fix it.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 hint: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.hint = hint
        super().__init__(str(self))

    @property
    def location(self) -> str:
        if self.file is None:
            return ""
        if self.line is None:
            return f"{self.file}: "
        return f"{self.file}:{self.line}: "

    def __str__(self) -> str:
        text = self.location + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigErrors(GmtaError):
    """Several independent configuration errors found in one pass."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

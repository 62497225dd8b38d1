"""``check.command``: an external program judges the message.

``command PROGRAM ARG... { run_on body; code 12 reject }``: the program runs
at the stage ``run_on`` names (``conn``, ``sender``, ``rcpt`` or ``body``)
with placeholders such as ``{sender}`` replaced in its arguments; at ``body``
it reads the message on stdin with LF line endings (maddy E8). Its exit code
chooses the action (1 rejects and 2 quarantines unless ``code`` says
otherwise; 0 and unlisted codes pass) and what it prints on stdout is a
header prepended to the message. It runs directly, never through a shell,
and is killed after ``timeout``; a program that cannot run or times out is a
temporary failure, so no mail is lost to a broken filter.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import shutil

import gevent
from gevent import subprocess

import gmta.log
from gmta.check.action import QUARANTINE, REJECT, Action, parse_action
from gmta.config.module import register
from gmta.config.parser import Node
from gmta.config.reader import Custom, Directive, Duration, Enum
from gmta.errors import SMTPError
from gmta.pipeline.check import PASS, Check, CheckResult, CheckState

log = gmta.log.get("check")

# Output kept from the program: a header, not a second message.
MAX_OUTPUT = 64 * 1024

REJECTED = SMTPError(550, (5, 7, 1), "Message rejected due to a local policy")
FAILED = SMTPError(451, (4, 7, 1), "Message check failed, try again later")

PLACEHOLDERS = ("{source_ip}", "{source_host}", "{source_rdns}", "{msg_id}", "{auth_user}",
                "{sender}", "{rcpts}", "{address}")


def _code(node: Node, ctx) -> tuple[int, Action]:
    if len(node.args) < 2 or not node.args[0].isdigit():
        raise node.error("code: expected an exit code and an action",
                         hint="such as 'code 12 reject 550 5.7.1 \"No thanks\"'")
    return int(node.args[0]), parse_action(node.args[1:], node)


@register
class CommandCheck(Check):
    name = "check.command"
    max_inline_args = 256
    directives = (
        Directive("run_on", Enum("conn", "sender", "rcpt", "body"), "body",
                  doc="the stage at which the program runs"),
        Directive("code", Custom(_code, "EXIT-CODE ACTION..."), repeat=True,
                  doc="the action an exit code takes"),
        Directive("timeout", Duration(), 60.0, doc="time the program may run"),
    )

    def configure(self, cfg, ctx) -> None:
        if not self.inline_args:
            raise self.node.error("command: expected the program to run",
                                  hint="such as 'command /usr/local/bin/filter {sender}'")
        program = self.inline_args[0]
        if not os.path.isabs(program):
            program = shutil.which(program) or program
        self.argv = [program, *self.inline_args[1:]]
        self.run_on = cfg.run_on
        self.timeout = cfg.timeout
        self.actions = {1: Action(REJECT), 2: Action(QUARANTINE)}
        self.actions.update(dict(cfg.code))

    def check_state(self, meta, mail_from) -> CheckState:
        return _CommandState(self, meta, mail_from)

    def run(self, values: dict, stdin: bytes, msg_id: str) -> CheckResult:
        argv = [self.argv[0]] + [_expand(a, values) for a in self.argv[1:]]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, close_fds=True)
        except OSError as e:
            log.error("command_failed", msg_id=msg_id, program=argv[0], error=str(e))
            return CheckResult(reject=FAILED)
        try:
            with gevent.Timeout(self.timeout):
                output, _ = proc.communicate(stdin)
        except gevent.Timeout:
            proc.kill()
            proc.wait()
            log.error("command_timeout", msg_id=msg_id, program=argv[0], timeout=self.timeout)
            return CheckResult(reject=FAILED)
        code = proc.returncode
        header = b""
        if output:
            header = _as_header(output[:MAX_OUTPUT + 1])
            if header is None:
                log.error("command_output", msg_id=msg_id, program=argv[0],
                          error="stdout is not a message header")
                return CheckResult(reject=FAILED)
        action = self.actions.get(code)
        log.info("command", msg_id=msg_id, program=argv[0], exit=code,
                 action=action.kind if action else "none")
        if action is None:
            return CheckResult(header=header)
        result = action.apply(REJECTED)
        result.header = header
        return result


def _expand(arg: str, values: dict) -> str:
    for placeholder in PLACEHOLDERS:
        if placeholder in arg:
            arg = arg.replace(placeholder, values.get(placeholder.strip("{}"), ""))
    return arg


def _as_header(output: bytes) -> bytes | None:
    """*output* as header lines ending in CRLF, or None if it is not a header."""
    if len(output) > MAX_OUTPUT:
        return None
    text = output.replace(b"\r\n", b"\n").rstrip(b"\n")
    if not text:
        return b""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        text + b"\n\n")
    if parsed.defects or not parsed.keys() or parsed.get_payload():
        return None
    return text.replace(b"\n", b"\r\n") + b"\r\n"


class _CommandState(CheckState):
    def __init__(self, check: CommandCheck, meta, mail_from: str):
        self.check = check
        self.meta = meta
        self.values = {"msg_id": meta.id, "source_ip": meta.conn.get("ip") or "",
                       "source_host": meta.conn.get("helo") or "",
                       "auth_user": meta.conn.get("auth_user") or "",
                       "sender": mail_from, "rcpts": ""}
        self.rcpts: list[str] = []

    def _run(self, stdin: bytes = b"", **extra) -> CheckResult:
        values = dict(self.values, **extra)
        values["source_rdns"] = self.meta.conn.get("rdns") or ""
        return self.check.run(values, stdin, self.meta.id)

    def check_connection(self) -> CheckResult:
        return self._run() if self.check.run_on == "conn" else PASS

    def check_sender(self, mail_from: str) -> CheckResult:
        return self._run(address=mail_from) if self.check.run_on == "sender" else PASS

    def check_rcpt(self, rcpt: str) -> CheckResult:
        self.rcpts.append(rcpt)
        if self.check.run_on != "rcpt":
            return PASS
        return self._run(address=rcpt, rcpts=" ".join(self.rcpts))

    def check_body(self, header: bytes, body) -> CheckResult:
        if self.check.run_on != "body":
            return PASS
        with body.open() as f:
            message = (header + f.read()).replace(b"\r\n", b"\n")
        return self._run(message, rcpts=" ".join(self.rcpts))

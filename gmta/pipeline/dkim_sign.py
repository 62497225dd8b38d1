"""``modify.dkim``: sign outgoing mail with DKIM (RFC 6376, RFC 8463 for Ed25519).

::

    modify {
        dkim example.org example.com default      # domains..., then the selector
    }

A key per domain lives at ``key_path`` (PKCS#8 PEM, mode 0600, under
``state_dir``). A missing key is generated when ``gmta run`` starts
(``newkey_algo``: ``rsa2048``, ``rsa4096`` or ``ed25519``), and the TXT
record to publish at ``SELECTOR._domainkey.DOMAIN`` is written next to it
(``.dns``) and logged. Loading a configuration never generates anything, so
``gmta check-config`` has no side effects.

The key is chosen by the envelope sender's domain (the first domain for the
null sender and bare ``postmaster``); mail from other domains is not signed.
With ``require_sender_match`` the From field must also be the envelope
sender (``envelope``) and the authenticated user (``auth``). The signature
(dkimpy computes it) is added on top of the header; nothing else changes.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
import os
import tempfile

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

import gmta.log
from gmta.config.module import register
from gmta.config.reader import Bool, Directive, Enum, Strings, String
from gmta.errors import SMTPError
from gmta.pipeline.modify import Modifier, ModifierState
from gmta.proto.grammar import domain_to_ascii, split_address

log = gmta.log.get("dkim")

# maddy's defaults (docs/reference/dkim.md): fields signed once more than they
# occur, so that nobody can add another instance (RFC 6376 §8.15).
OVERSIGN_FIELDS = ["Subject", "To", "From", "Date", "MIME-Version", "Content-Type",
                   "Content-Transfer-Encoding", "Reply-To", "Message-Id", "References",
                   "Autocrypt", "Openpgp"]
# Fields signed as often as they occur: relays may add more (mailing lists).
SIGN_FIELDS = ["List-Id", "List-Help", "List-Unsubscribe", "List-Post", "List-Owner",
               "List-Archive", "Resent-To", "Resent-Sender", "Resent-Message-Id",
               "Resent-Date", "Resent-From", "Resent-Cc"]

ALGORITHMS = {"rsa2048": "rsa", "rsa4096": "rsa", "ed25519": "ed25519"}

SIGNING_FAILED = SMTPError(451, (4, 7, 0), "DKIM signing failed, try again later")


class SigningKey:
    """One domain's private key as dkimpy takes it, and its public DNS record."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            pem = f.read()
        key = serialization.load_pem_private_key(pem, password=None)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            self.algorithm = b"ed25519-sha256"
            raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
            # dkimpy (PyNaCl) takes the 32-octet seed in base64.
            self.private = base64.b64encode(raw)
            public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
            self.dns_record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(public).decode()
        elif isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = b"rsa-sha256"
            self.private = key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption())
            public = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            self.dns_record = "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()
        else:
            raise ValueError(f"{path}: not an RSA or Ed25519 key")


def generate_key(path: str, algorithm: str) -> None:
    """Write a new private key to *path* (PKCS#8 PEM, 0600), atomically."""
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(65537, 4096 if algorithm == "rsa4096" else 2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # A crash leaves a temporary file, never a half-written key under the real name.
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".dkim-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def dns_record_text(selector: str, domain: str, record: str) -> str:
    """The zone-file line to publish; long values split into 255-octet strings (RFC 1035 §3.3)."""
    chunks = [record[i:i + 255] for i in range(0, len(record), 255)]
    return f"{selector}._domainkey.{domain}. TXT " + " ".join(f'"{c}"' for c in chunks)


@register
class DKIMSigner(Modifier):
    name = "modify.dkim"
    legacy_names = ("sign_dkim",)
    max_inline_args = 64
    directives = (
        Directive("debug", Bool(), False, inherit_global=True, doc="log every signature"),
        Directive("domains", Strings(), doc="the domains that sign (or as arguments)"),
        Directive("selector", String(), doc="the selector (or the last argument)"),
        Directive("key_path", String(), "dkim_keys/{domain}_{selector}.key",
                  doc="private key file; {domain} and {selector} are replaced"),
        Directive("oversign_fields", Strings(), OVERSIGN_FIELDS,
                  doc="fields signed once more than they occur"),
        Directive("sign_fields", Strings(), SIGN_FIELDS, doc="fields signed as they occur"),
        Directive("header_canon", Enum("relaxed", "simple"), "relaxed",
                  doc="header canonicalization"),
        Directive("body_canon", Enum("relaxed", "simple"), "relaxed",
                  doc="body canonicalization"),
        Directive("hash", Enum("sha256"), "sha256", doc="hash algorithm"),
        Directive("newkey_algo", Enum(*ALGORITHMS), "rsa2048",
                  doc="algorithm of keys generated at start"),
        Directive("require_sender_match", Strings(), ["envelope", "auth"],
                  doc="off | envelope | auth: what From must match to be signed"),
        Directive("allow_multiple_from", Bool(), False,
                  doc="sign messages whose From lists several addresses"),
        Directive("sign_subdomains", Bool(), False,
                  doc="sign mail from subdomains with the domain's key"),
    )

    def configure(self, cfg, ctx) -> None:
        args = list(self.inline_args)
        domains = cfg.domains or (args[:-1] if len(args) >= 2 else [])
        selector = cfg.selector or (args[-1] if len(args) >= 2 else None)
        if cfg.given("domains") and cfg.given("selector") and args:
            raise self.node.error("dkim: domains and selector given twice",
                                  hint="use the arguments or the directives, not both")
        if not domains or not selector:
            raise self.node.error("dkim: domains and a selector are required",
                                  hint="such as 'dkim example.org default'")
        if cfg.sign_subdomains and len(domains) != 1:
            raise cfg.error("sign_subdomains", "sign_subdomains needs exactly one domain")
        try:
            self.domains = [domain_to_ascii(d.rstrip(".")).lower() for d in domains]
        except (SMTPError, UnicodeError, ValueError):
            raise self.node.error(f"dkim: invalid domain in {' '.join(domains)}") from None
        self.selector = selector
        self.debug = cfg.debug
        self.key_paths = {d: ctx.state_path(cfg.key_path.replace("{domain}", d)
                                            .replace("{selector}", selector))
                          for d in self.domains}
        self.newkey_algo = cfg.newkey_algo
        self.oversign = [f.lower() for f in cfg.oversign_fields]
        self.sign = [f.lower() for f in cfg.sign_fields if f.lower() not in self.oversign]
        self.canonicalize = (cfg.header_canon.encode(), cfg.body_canon.encode())
        matches = [m.lower() for m in cfg.require_sender_match]
        if "off" in matches:
            matches = []
        unknown = set(matches) - {"envelope", "auth"}
        if unknown:
            raise cfg.error("require_sender_match",
                            f"require_sender_match: unknown value {sorted(unknown)[0]}",
                            hint="use off, envelope or auth")
        self.require_match = matches
        self.allow_multiple_from = cfg.allow_multiple_from
        self.sign_subdomains = cfg.sign_subdomains
        self.keys: dict[str, SigningKey] = {}

    def start(self) -> None:
        """Load every key, generating the missing ones (their DNS record is logged)."""
        for domain, path in self.key_paths.items():
            if not os.path.exists(path):
                generate_key(path, self.newkey_algo)
                key = SigningKey(path)
                record = dns_record_text(self.selector, domain, key.dns_record)
                with open(path.rsplit(".", 1)[0] + ".dns", "w") as f:
                    f.write(record + "\n")
                log.warning("dkim_key_generated", domain=domain, selector=self.selector,
                            path=path, algorithm=self.newkey_algo, dns_record=record)
            self.keys[domain] = SigningKey(path)

    def key_for(self, sender: str) -> tuple[str, SigningKey] | None:
        local, domain = split_address(sender) if sender else ("", "")
        if not domain:
            domain = self.domains[0]  # the null sender and bare postmaster
        try:
            domain = domain_to_ascii(domain).lower()
        except (SMTPError, UnicodeError, ValueError):
            return None
        if self.sign_subdomains and domain.endswith("." + self.domains[0]):
            domain = self.domains[0]
        key = self.keys.get(domain)
        return (domain, key) if key is not None else None

    def modifier_state(self, meta, mail_from) -> ModifierState:
        return _SignState(self, meta)


def _count(header: bytes, name: bytes) -> int:
    return sum(1 for line in header.split(b"\r\n")
               if line[:len(name) + 1].lower() == name + b":")


class _SignState(ModifierState):
    def __init__(self, signer: DKIMSigner, meta):
        self.signer = signer
        self.meta = meta
        self.sender = ""

    def rewrite_sender(self, mail_from: str) -> str:
        self.sender = mail_from
        return mail_from

    def _from_matches(self, header: bytes, domain: str) -> bool:
        signer = self.signer
        if not signer.require_match:
            return True
        fields = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
        addresses = email.utils.getaddresses([str(v) for v in fields.get_all("From") or []])
        if not addresses or (len(addresses) > 1 and not signer.allow_multiple_from):
            return False
        author = addresses[0][1].lower()
        if "envelope" in signer.require_match and self.sender and author != self.sender.lower():
            return False
        user = (self.meta.conn.get("auth_user") or "").lower()
        if "auth" in signer.require_match and user:
            if ("@" in user and author != user) or \
                    ("@" not in user and author.partition("@")[0] != user):
                return False
        return True

    def rewrite_body(self, header: bytes, body) -> bytes:
        signer = self.signer
        chosen = signer.key_for(self.sender)
        if chosen is None:
            log.debug("dkim_not_signed", msg_id=self.meta.id, reason="no key for sender domain")
            return header
        domain, key = chosen
        if not self._from_matches(header, domain):
            log.info("dkim_not_signed", msg_id=self.meta.id, reason="From does not match")
            return header
        include = []
        for name in signer.oversign:
            include += [name] * (_count(header, name.encode()) + 1)
        for name in signer.sign:
            include += [name] * _count(header, name.encode())
        with body.open() as f:
            message = header + f.read()
        try:
            signature = dkimpy.DKIM(message).sign(
                signer.selector.encode(), domain.encode(), key.private,
                signature_algorithm=key.algorithm, canonicalize=signer.canonicalize,
                include_headers=include)
        except dkimpy.DKIMException as e:
            log.error("dkim_sign_failed", msg_id=self.meta.id, domain=domain, error=str(e))
            raise SIGNING_FAILED from None
        (log.info if signer.debug else log.debug)(
            "dkim_signed", msg_id=self.meta.id, domain=domain, selector=signer.selector)
        return signature + header

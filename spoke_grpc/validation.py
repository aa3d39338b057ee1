"""Field rules shared by the servicers. Each check adds to a ``Violations`` so that a
request with several bad fields is answered with all of them at once."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping

from email_validator import EmailNotValidError, validate_email

from spoke_grpc.errors import FieldViolation, InvalidArgument, NotFound
from spoke_grpc.types import OrgRef

ORG_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")
MODULE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{1,38}[a-z0-9]$")

MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 2000
MAX_EMAIL = 254
MAX_SETTINGS = 64
MAX_SETTING_KEY = 64
MAX_SETTING_VALUE = 1024
MAX_ORG_REF = 64

# Bidirectional overrides, embeddings and isolates: they make text display as something
# other than what it is ("Trojan Source"), so user-visible text may not carry them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LINE_BREAKS = frozenset("\t\n\r")


def display_text_problem(value: str, *, multiline: bool = True) -> str | None:
    """The one rule for user-visible text: no control characters (tab and line breaks
    allowed where ``multiline``) and no bidi overrides. None when ``value`` is fine."""
    for char in value:
        code = ord(char)
        if code < 32 or 0x7F <= code <= 0x9F:
            if multiline and char in _LINE_BREAKS:
                continue
            return "must not contain control characters"
        if char in _BIDI_CONTROLS:
            return "must not contain bidirectional override characters"
    return None


class Violations:
    """Collects field violations; ``raise_if_any`` raises one InvalidArgument for all."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

    def slug(self, field: str, value: str, *, kind: str = "organization") -> None:
        pattern = MODULE_NAME_RE if kind == "module" else ORG_NAME_RE
        allowed = "a-z, 0-9, '-', '_'" if kind == "module" else "a-z, 0-9, '-'"
        if not value:
            self.add(field, "required")
        elif not pattern.fullmatch(value) or "--" in value:
            self.add(
                field,
                f"must be 3-40 characters of {allowed}, start with a letter, "
                "end with a letter or digit, and contain no '--'",
            )
        elif parse_uuid(value) is not None:
            self.add(field, "must not be a UUID (ids and names share the same fields)")

    def text(
        self,
        field: str,
        value: str,
        *,
        max_length: int,
        required: bool = False,
        multiline: bool = True,
    ) -> None:
        if required and not value.strip():
            self.add(field, "required")
        elif len(value) > max_length:
            self.add(field, f"must be at most {max_length} characters, got {len(value)}")
        elif problem := display_text_problem(value, multiline=multiline):
            self.add(field, problem)

    def email(self, field: str, value: str) -> str:
        """``value`` as one normalised email address (see ``normalize_email``), or "" after
        adding the violation."""
        if not value:
            self.add(field, "required")
            return ""
        try:
            return normalize_email(value)
        except ValueError as exc:
            self.add(field, str(exc))
            return ""

    def settings(self, field: str, value: Mapping[str, str]) -> None:
        if len(value) > MAX_SETTINGS:
            self.add(field, f"must have at most {MAX_SETTINGS} keys, got {len(value)}")
            return
        for key, item in value.items():
            path = f"{field}[{json.dumps(key[:MAX_SETTING_KEY])}]"
            if not key or len(key) > MAX_SETTING_KEY:
                self.add(path, f"keys must be 1-{MAX_SETTING_KEY} characters")
            elif problem := display_text_problem(key, multiline=False):
                self.add(f"{path} (key)", problem)
            else:
                self.text(path, item, max_length=MAX_SETTING_VALUE)


def normalize_email(value: str) -> str:
    """The one rule for email addresses from the wire (RPCs and the CLI alike).

    ``email-validator`` checks the syntax (no deliverability look-up) and gives the
    normalised form that is stored and compared (lower-case domain, NFC, IDNA domains
    in Unicode; the local part keeps its case, matching stays case-insensitive). Anything
    that could name other or more recipients than the one accepted is refused: lists
    (``a,b@x``, ``a;b@x``), display names and angle brackets, quoted local parts, domain
    literals, spaces and control characters, as are special-use domains (``localhost``,
    ``.test``, ``.local``...) that no mail can reach. ValueError says why.
    """
    if len(value) > MAX_EMAIL:
        raise ValueError(f"must be an email address of at most {MAX_EMAIL} characters")
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"must be one email address (name@domain): {exc}") from None
    return checked.normalized


def mail_address(stored: str) -> str:
    """The form of a stored address to put on the wire to an SMTP server: its domain in
    IDNA (ASCII) when the address allows it, so a server without SMTPUTF8 takes it. An
    address stored before the email rule, which the rule would refuse, is used as it is."""
    try:
        checked = validate_email(stored, check_deliverability=False)
    except EmailNotValidError:
        return stored
    return checked.ascii_email or checked.normalized


def required_uuid(field: str, value: str, *, what: str = "a UUID") -> uuid.UUID:
    """The id in ``value``; INVALID_ARGUMENT on ``field`` when it is empty or not a UUID."""
    parsed = parse_uuid(value)
    if parsed is None:
        raise InvalidArgument.field(field, f"must be {what}" if value else "required")
    return parsed


def parse_uuid(value: str) -> uuid.UUID | None:
    """The UUID written canonically in ``value`` (any case), or None."""
    if len(value) != 36:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def parse_org_ref(value: str) -> OrgRef:
    """The request's ``org`` field: an id (UUID-shaped) or a name.

    Empty is INVALID_ARGUMENT; anything too long to be an id or a name cannot exist, so it
    is NOT_FOUND without a database round trip.
    """
    if not value:
        raise InvalidArgument.field("org", "required: the organization's id or name")
    if len(value) > MAX_ORG_REF:
        raise NotFound("organization", value[:MAX_ORG_REF] + "…")
    org_id = parse_uuid(value)
    return OrgRef(id=org_id) if org_id is not None else OrgRef(name=value)

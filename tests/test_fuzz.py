"""Descriptor-driven fuzzing of every spoke.v1 RPC (SPEC §3 and §6).

Every method of every service that ``spoke_grpc.policy.services()`` lists is called by five kinds
of caller with requests built from its input descriptor alone: nasty strings, extreme numbers,
unknown enum values, valid-looking values (a real organization, so calls get past the org check),
and raw bytes that do not parse as the message. Whatever a call answers:

- never UNKNOWN, INTERNAL or DEADLINE_EXCEEDED;
- an error carries a google.rpc.Status with an ErrorInfo, and no SQL or traceback text;
- a refused call leaves every table (audit events aside) exactly as it was.

Failures are collected and reported together, grouped, so one run shows everything. The random
choices are seeded per service, so a run is reproducible.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from psycopg import sql
from spoke.v1 import module_pb2, organization_pb2, user_pb2

from spoke_grpc.policy import services
from spoke_grpc.types import Role
from tests.conftest import Users
from tests.harness import Client

SEED = 1234
TIMEOUT = 10.0
# Deadline failures after which a (method, caller) batch stops.
MAX_TIMEOUTS = 3
# Nested messages deeper than this are left unset (guards recursive types such as Struct).
MAX_DEPTH = 3
# Whole-message random requests per (method, caller), on top of the systematic ones.
RANDOM_REQUESTS = 6
FIELD_MASK = "google.protobuf.FieldMask"

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_MAX, UINT64_MAX = 2**32 - 1, 2**64 - 1

NASTY_STRINGS: tuple[str, ...] = (
    "",
    "\x00",
    "acme\x00corp",
    "x" * 100_000,
    "\u202eevil\u202c",
    "\U0001f680\U0001f4a9",
    "\x07\x1b[31m\x7f",
    "'; DROP TABLE users;--",
    "%s%n%x",
    "../../etc/passwd",
    " \t\r\n ",
    "\ufeff",
    "00000000-0000-0000-0000-000000000000",
    "\\",
)
# The share of them that nested fields get (output-only fields, timestamps, map entries...).
NESTED_NASTY_STRINGS = (*NASTY_STRINGS[:5], "'; DROP TABLE users;--")
NASTY_BYTES: tuple[bytes, ...] = (b"", b"\x00", b"\xff\xfe\xfd", bytes(range(256)) * 400)
NASTY_FLOATS: tuple[float, ...] = (0.0, -1.0, math.inf, -math.inf, math.nan, 1e308)
NASTY_ENUM_NUMBERS: tuple[int, ...] = (999, -1, INT32_MAX, INT32_MIN)

# Codes that are never acceptable: a bug (UNKNOWN, INTERNAL) or a hang (DEADLINE_EXCEEDED).
BAD_CODES = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}
)
# Text that must never reach a client: SQL, driver errors, Python tracebacks.
LEAK_MARKERS: tuple[str, ...] = (
    "Traceback",
    "psycopg",
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "DELETE ",
    "syntax error",
    "violates",
    'relation "',
    'File "',
)
# Tables a refused call may still write: the audit trail (refusals are audited) and
# server-wide secrets. Usage counters (and the flushing writers' batch numbers) are written
# by the background flush, at moments no single call owns, so they are left out of the
# per-call check too; so are the usage alerts that a flush raises (with their events) and
# the webhook deliveries the background dispatcher works through.
UNCHECKED_TABLES = (
    "audit_events",
    "server_secrets",
    "org_api_requests_hourly",
    "org_usage_periods",
    "usage_flush_writers",
    "quota_alerts",
    "events",
    "org_event_counters",
    "webhook_deliveries",
)

INT_RANGES: dict[int, tuple[int, ...]] = {
    FieldDescriptor.TYPE_INT32: (0, -1, 1, INT32_MIN, INT32_MAX),
    FieldDescriptor.TYPE_SINT32: (0, -1, 1, INT32_MIN, INT32_MAX),
    FieldDescriptor.TYPE_SFIXED32: (0, -1, 1, INT32_MIN, INT32_MAX),
    FieldDescriptor.TYPE_INT64: (0, -1, 1, INT64_MIN, INT64_MAX, INT32_MAX + 1),
    FieldDescriptor.TYPE_SINT64: (0, -1, 1, INT64_MIN, INT64_MAX),
    FieldDescriptor.TYPE_SFIXED64: (0, -1, 1, INT64_MIN, INT64_MAX),
    FieldDescriptor.TYPE_UINT32: (0, 1, UINT32_MAX),
    FieldDescriptor.TYPE_FIXED32: (0, 1, UINT32_MAX),
    FieldDescriptor.TYPE_UINT64: (0, 1, UINT64_MAX),
    FieldDescriptor.TYPE_FIXED64: (0, 1, UINT64_MAX),
}
FLOAT_TYPES = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)


# --- Valid-looking values --------------------------------------------------------------------


@dataclass
class Pool:
    """Valid-looking values, chosen by field name, so requests get past the cheap checks.

    Unknown field names fall back to plain text; new fields need no change here.
    """

    org_name: str
    org_id: str
    other_org: str  # the stranger's own organization
    owner_id: str
    viewer_id: str
    stranger_id: str
    stranger_email: str
    token_ids: list[str]
    counter: int = 0

    def fresh(self) -> int:
        self.counter += 1
        return self.counter

    def strings(self, name: str) -> list[str]:
        n = self.fresh()
        some_uuid = str(uuid.UUID(int=random.Random(n).getrandbits(128), version=4))
        by_name: dict[str, list[str]] = {
            "org": [self.org_name, self.org_id, self.other_org],
            "org_id": [self.org_id, some_uuid],
            "org_name": [self.org_name],
            "user": [self.stranger_id, self.stranger_email, self.viewer_id],
            "user_id": [self.viewer_id, self.stranger_id, self.owner_id],
            "email": [f"fuzz{n}@example.com", self.stranger_email],
            "name": [f"fuzz-{n}", self.org_name],
            "id": [self.org_id, some_uuid],
            "api_token_id": [*self.token_ids, some_uuid],
            "version": ["v1.0.0", "1.2.3-rc.1"],
            "path": ["fuzz/a.proto"],
            "content": ['syntax = "proto3";\npackage fuzz;\nmessage A { string a = 1; }\n'],
            "language": ["python"],
            "languages": ["python"],
            "module": ["fuzz-mod", some_uuid],
            "token": ["spoke_" + "A" * 43],
            "page_token": [""],
            "key": ["region"],
            "value": ["eu"],
            "query": ["fuzz"],
        }
        if name in by_name:
            return by_name[name]
        if name.endswith("_id") or name in ("created_by", "invited_by"):
            return [self.owner_id, self.stranger_id, some_uuid]
        return [f"fuzz text {n}"]


def valid_ints(name: str) -> tuple[int, ...]:
    by_name = {"page_size": (10, 1000, 1001), "seconds": (1_700_000_000,), "nanos": (0,)}
    return by_name.get(name, (1, 100))


# --- Requests from descriptors ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request to send: a message, or raw bytes that are not one."""

    label: str
    payload: Message | bytes
    # False for one-field mutations and most raw payloads: only some callers get them.
    broad: bool = True


@dataclass
class Mode:
    """How to fill a message: valid-looking everywhere, except ``target`` (set to ``value``) or
    ``omit`` (left unset); or, with ``rng``, a random mix of valid and nasty values."""

    target: tuple[str, ...] | None = None
    value: Any = None
    omit: tuple[str, ...] | None = None
    rng: random.Random | None = None


def is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def leads_to(path: tuple[str, ...], target: tuple[str, ...] | None) -> bool:
    return target is not None and target[: len(path)] == path


def short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


class Requests:
    """Builds requests for any message type by walking its descriptor."""

    def __init__(self, pool: Pool, rng: random.Random) -> None:
        self.pool = pool
        self.rng = rng

    def cases(self, desc: Descriptor) -> Iterator[Case]:
        """Empty, valid-looking, one-field-at-a-time mutations, random mixes, then raw bytes."""
        yield Case("<empty>", message_factory.GetMessageClass(desc)())
        yield Case("<valid>", self.build(desc, Mode()))
        for fd in desc.fields:
            yield Case(f"<without {fd.name}>", self.build(desc, Mode(omit=(fd.name,))))
        for path, fd, mask_paths in self.slots(desc):
            thorough = len(path) == 1 or bool(mask_paths)
            for value in self.nasty(fd, mask_paths, thorough=thorough):
                mode = Mode(target=path, value=value)
                label = f"{'.'.join(path)}={short(value)}"
                yield Case(label, self.build(desc, mode), broad=False)
        for i in range(RANDOM_REQUESTS):
            yield Case(f"<random #{i}>", self.build(desc, Mode(rng=self.rng)))
        yield from self.raw(desc)

    def build(self, desc: Descriptor, mode: Mode) -> Message:
        message = message_factory.GetMessageClass(desc)()
        self._fill(message, mode, (), 0, ())
        return message

    def slots(
        self, desc: Descriptor, path: tuple[str, ...] = (), depth: int = 0
    ) -> Iterator[tuple[tuple[str, ...], FieldDescriptor, tuple[str, ...]]]:
        """Every scalar position a request can carry, with FieldMask path hints."""
        for fd in desc.fields:
            fpath = (*path, fd.name)
            if fd.type != FieldDescriptor.TYPE_MESSAGE:
                yield fpath, fd, ()
            elif depth < MAX_DEPTH and is_map(fd):
                for sub in fd.message_type.fields:
                    if sub.type == FieldDescriptor.TYPE_MESSAGE:
                        yield from self.slots(sub.message_type, (*fpath, sub.name), depth + 1)
                    else:
                        yield (*fpath, sub.name), sub, ()
            elif fd.message_type.full_name == FIELD_MASK:
                yield (*fpath, "paths"), fd.message_type.fields_by_name["paths"], mask_hints(desc)
            elif depth < MAX_DEPTH:
                yield from self.slots(fd.message_type, fpath, depth + 1)

    def _fill(
        self,
        message: Message,
        mode: Mode,
        path: tuple[str, ...],
        depth: int,
        mask_paths: tuple[str, ...],
    ) -> None:
        desc = message.DESCRIPTOR
        # The mutated field goes first, so a oneof keeps it rather than a sibling.
        fields = sorted(desc.fields, key=lambda fd: not leads_to((*path, fd.name), mode.target))
        for fd in fields:
            fpath = (*path, fd.name)
            wanted = leads_to(fpath, mode.target)
            oneof = fd.containing_oneof
            if fpath == mode.omit or (oneof is not None and message.WhichOneof(oneof.name)):
                continue
            if mode.rng is not None and not wanted and mode.rng.random() < 0.3:
                continue
            count = 1
            if fd.is_repeated and mode.rng is not None and not wanted:
                count = mode.rng.randint(0, 3)
            if fd.type != FieldDescriptor.TYPE_MESSAGE:
                values = [self._value(fd, fpath, mode, mask_paths) for _ in range(count)]
                if fd.is_repeated:
                    getattr(message, fd.name).extend(values)
                else:
                    setattr(message, fd.name, values[0])
                continue
            if depth >= MAX_DEPTH and not wanted:
                continue
            hints = mask_hints(desc) if fd.message_type.full_name == FIELD_MASK else ()
            container = getattr(message, fd.name)
            if is_map(fd):
                key_fd = fd.message_type.fields_by_name["key"]
                value_fd = fd.message_type.fields_by_name["value"]
                for _ in range(count):
                    key = self._value(key_fd, (*fpath, "key"), mode, ())
                    if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                        self._fill(container[key], mode, (*fpath, "value"), depth + 1, ())
                    else:
                        container[key] = self._value(value_fd, (*fpath, "value"), mode, ())
            elif fd.is_repeated:
                for _ in range(count):
                    self._fill(container.add(), mode, fpath, depth + 1, hints)
            else:
                container.SetInParent()
                self._fill(container, mode, fpath, depth + 1, hints)

    def _value(
        self, fd: FieldDescriptor, path: tuple[str, ...], mode: Mode, mask_paths: tuple[str, ...]
    ) -> Any:
        if path == mode.target:
            return mode.value
        valid = self.valid(fd, mask_paths)
        if mode.rng is not None:
            pick = self.nasty(fd, mask_paths) if mode.rng.random() < 0.5 else valid
            return mode.rng.choice(pick)
        return valid[0]

    def valid(self, fd: FieldDescriptor, mask_paths: tuple[str, ...] = ()) -> list[Any]:
        kind = fd.type
        if kind == FieldDescriptor.TYPE_STRING:
            return list(mask_paths) or self.pool.strings(fd.name)
        if kind == FieldDescriptor.TYPE_ENUM:
            numbers = [v.number for v in fd.enum_type.values]
            return [n for n in numbers if n != 0] or numbers
        if kind == FieldDescriptor.TYPE_BOOL:
            return [False, True]
        if kind == FieldDescriptor.TYPE_BYTES:
            return [b"fuzz"]
        if kind in FLOAT_TYPES:
            return [1.0]
        return list(valid_ints(fd.name))

    def nasty(
        self, fd: FieldDescriptor, mask_paths: tuple[str, ...] = (), *, thorough: bool = True
    ) -> list[Any]:
        """Hostile values of the field's type, plus near-misses of its valid values.

        Not ``thorough``: a smaller share, for nested fields, to keep the run short."""
        kind = fd.type
        if kind == FieldDescriptor.TYPE_STRING:
            hint, *others = self.valid(fd, mask_paths)
            if not thorough:
                return [*NESTED_NASTY_STRINGS, f"{hint}\x00"]
            return [*NASTY_STRINGS, f"{hint}\x00", hint.upper(), f" {hint}", *others]
        if kind == FieldDescriptor.TYPE_ENUM:
            declared = [v.number for v in fd.enum_type.values]
            return (declared if thorough else declared[:2]) + list(NASTY_ENUM_NUMBERS)
        if kind == FieldDescriptor.TYPE_BOOL:
            return [True, False]
        if kind == FieldDescriptor.TYPE_BYTES:
            return list(NASTY_BYTES)
        if kind in FLOAT_TYPES:
            return list(NASTY_FLOATS)
        return list(INT_RANGES[kind])

    def raw(self, desc: Descriptor) -> Iterator[Case]:
        """Bytes that are not a valid encoding of the message (and a few that may be)."""
        fixed: dict[str, bytes] = {
            "invalid utf-8 in field 1": b"\x0a\x02\xff\xfe",
            "truncated tag varint": b"\x80",
            "truncated value varint": b"\x08\xff\xff",
            "length past the end": b"\x0a\x05ab",
            "huge length": b"\x0a\xff\xff\xff\xff\x0f",
            "overlong varint": b"\x08" + b"\xff" * 10 + b"\x01",
            "field number 0": b"\x00\x01",
            "wire type 7": b"\x0f",
            "unterminated group": b"\x0b",
            "unmatched end group": b"\x0c",
        }
        # Undecodable bytes mostly fail before the caller matters: only the first goes to all.
        for i, (label, payload) in enumerate(fixed.items()):
            yield Case(f"<raw: {label}>", payload, broad=i == 0)
        valid = self.build(desc, Mode()).SerializeToString()
        for fd in desc.fields:
            if fd.type != FieldDescriptor.TYPE_STRING or fd.number > 15:
                continue
            tag = bytes([fd.number << 3 | 2])
            for label, bad in (("invalid utf-8", b"\xff\xfe"), ("lone surrogate", b"\xed\xa0\x80")):
                # Appended after a valid message, so the bad value is the one a parser keeps.
                payload = valid + tag + bytes([len(bad)]) + bad
                yield Case(f"<raw: {fd.name} {label}>", payload, broad=False)
        for size in (1, 9, 64, 1024):
            yield Case(f"<raw: {size} random bytes>", self.rng.randbytes(size), broad=False)


def mask_hints(desc: Descriptor) -> tuple[str, ...]:
    """Field names a FieldMask in ``desc`` plausibly names: those of its sibling messages."""
    names: list[str] = []
    for fd in desc.fields:
        if fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.message_type.full_name.startswith(
            "google.protobuf."
        ):
            names += [f.name for f in fd.message_type.fields]
    # Likely-updatable names first: ids, names, timestamps and authors are usually immutable.
    names.sort(key=lambda n: n in ("id", "name") or n.endswith(("_id", "_time", "_by")))
    return tuple(names) or ("name",)


# --- Database snapshots ----------------------------------------------------------------------


class Snapshots:
    """One query fingerprints every checked table (md5 of its rows, in a stable order)."""

    def __init__(self, db: psycopg.Connection[Any]) -> None:
        self.db = db
        rows = db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename NOT LIKE '\\_yoyo%%' AND tablename NOT LIKE 'yoyo%%'"
            " AND tablename <> ALL(%s) ORDER BY tablename",
            [list(UNCHECKED_TABLES)],
        ).fetchall()
        self.tables: list[str] = [row[0] for row in rows]
        assert "organizations" in self.tables
        fingerprint = sql.SQL(
            "(SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} t)"
        )
        columns = sql.SQL(", ").join(fingerprint.format(sql.Identifier(t)) for t in self.tables)
        # Rendered once: thousands of snapshots should not recompose the SQL each time.
        self.query: bytes = sql.SQL("SELECT {}").format(columns).as_bytes(db)

    def take(self) -> tuple[str, ...]:
        row = self.db.execute(self.query).fetchone()
        assert row is not None
        return tuple(row)

    def changed(self, before: tuple[str, ...], after: tuple[str, ...]) -> list[str]:
        return [t for t, b, a in zip(self.tables, before, after, strict=True) if b != a]


# --- The world the calls run in --------------------------------------------------------------


@dataclass
class World:
    """An organization with an owner and a viewer, a stranger, and the five kinds of caller."""

    db: psycopg.Connection[Any]
    pool: Pool
    callers: dict[str, Client]

    def repair(self) -> None:
        """Undoes what a successful call may have done to what later calls rely on: the org
        exists, is active and owned by its owner, the viewer is a viewer, the stranger is not
        a member."""
        pool, owner = self.pool, self.callers["org-admin"]
        row = self.db.execute(
            "SELECT id::text FROM organizations WHERE name = %s", [pool.org_name]
        ).fetchone()
        if row is None:
            request = organization_pb2.CreateOrganizationRequest(name=pool.org_name)
            pool.org_id = owner.orgs.CreateOrganization(request).organization.id
        self.db.execute(
            "UPDATE organizations SET status = 'active', owner_id = %s"
            " WHERE id = %s AND (status <> 'active' OR owner_id <> %s)",
            [pool.owner_id, pool.org_id, pool.owner_id],
        )
        for user_id, role in ((pool.owner_id, Role.ADMIN), (pool.viewer_id, Role.VIEWER)):
            self.db.execute(
                "INSERT INTO organization_members (org_id, user_id, role) VALUES (%s, %s, %s)"
                " ON CONFLICT (org_id, user_id) DO UPDATE SET role = EXCLUDED.role"
                " WHERE organization_members.role <> EXCLUDED.role",
                [pool.org_id, user_id, role.value],
            )
        self.db.execute(
            "DELETE FROM organization_members WHERE org_id = %s AND user_id = %s",
            [pool.org_id, pool.stranger_id],
        )
        module = self.db.execute(
            "SELECT 1 FROM modules WHERE org_id = %s AND name = 'fuzz-mod'", [pool.org_id]
        ).fetchone()
        if module is None:
            create_fuzz_module(owner, pool.org_name)


def create_fuzz_module(owner: Client, org: str) -> None:
    """A public module with one version, so module and version calls get past NOT_FOUND."""
    owner.modules.CreateModule(
        module_pb2.CreateModuleRequest(org=org, name="fuzz-mod", is_public=True)
    )
    owner.modules.CreateVersion(
        module_pb2.CreateVersionRequest(
            org=org,
            module="fuzz-mod",
            version="v1.0.0",
            files=[
                module_pb2.ProtoFile(
                    path="fuzz/a.proto",
                    content='syntax = "proto3";\npackage fuzz;\nmessage A { string a = 1; }\n',
                )
            ],
        )
    )


@pytest.fixture
def world(admin: Client, anonymous: Client, users: Users, db: psycopg.Connection[Any]) -> World:
    owner, viewer, stranger = (users.create(name) for name in ("owner", "viewer", "stranger"))
    org = owner.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name="fuzz-org"))
    stranger.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name="other-org"))
    users.join(org.organization.id, viewer, Role.VIEWER)
    create_fuzz_module(owner, "fuzz-org")
    # Spare tokens give RevokeApiToken real ids to revoke without locking a caller out.
    spare = [
        c.users.CreateApiToken(user_pb2.CreateApiTokenRequest(description="spare")).api_token.id
        for c in (owner, viewer, stranger)
    ]
    pool = Pool(
        org_name="fuzz-org",
        org_id=org.organization.id,
        other_org="other-org",
        owner_id=owner.user_id,
        viewer_id=viewer.user_id,
        stranger_id=stranger.user_id,
        stranger_email=stranger.email,
        token_ids=spare,
    )
    callers = {
        "anonymous": anonymous,
        "stranger": stranger,
        "viewer": viewer,
        "org-admin": owner,
        "platform-admin": admin,
    }
    return World(db, pool, callers)


# --- Calling and checking --------------------------------------------------------------------


# These callers get past authentication and the org check, so every mutation goes to them; the
# others share the mutations and most raw payloads in turn, to keep the run short. Every caller
# gets the empty, valid, field-omitted and random requests and one raw payload.
DEEP_CALLERS = ("org-admin", "platform-admin")


def for_caller(cases: list[Case], caller: str, callers: list[str]) -> list[Case]:
    if caller in DEEP_CALLERS:
        return cases
    shallow = [c for c in callers if c not in DEEP_CALLERS]
    turn = shallow.index(caller)
    return [c for i, c in enumerate(cases) if c.broad or i % len(shallow) == turn]


def opened(stream: Any) -> Any:
    """Calls a server-streaming method like a unary one: returns once the server accepted the
    stream (its headers came; the stream is then closed), or raises its error."""

    def call(request: Any, **kwargs: Any) -> None:
        responses = stream(request, **kwargs)
        responses.initial_metadata()
        responses.cancel()
        if responses.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.OK):
            raise responses

    return call


@dataclass(frozen=True)
class Failure:
    method: str
    caller: str
    problems: str
    code: str
    message: str
    request: str


@dataclass
class Fuzzer:
    channel: grpc.Channel
    world: World
    snapshots: Snapshots
    failures: list[Failure] = field(default_factory=list)
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def run(self, method: MethodDescriptor, caller: str, cases: list[Case]) -> None:
        path = f"/{method.containing_service.full_name}/{method.name}"
        output = message_factory.GetMessageClass(method.output_type)
        typed: Any = self.channel.unary_unary(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=output.FromString,
        )
        # Raw bytes go out as they are: no serializer.
        raw: Any = self.channel.unary_unary(
            path, request_serializer=None, response_deserializer=None
        )
        if method.server_streaming:
            typed = opened(
                self.channel.unary_stream(
                    path,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=output.FromString,
                )
            )
            raw = opened(
                self.channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            )
        metadata = self.world.callers[caller].metadata()
        timeouts = 0
        before = self.snapshots.take()
        for case in cases:
            if timeouts >= MAX_TIMEOUTS:
                # A hung server would otherwise cost TIMEOUT seconds per remaining case.
                break
            invoke = raw if isinstance(case.payload, bytes) else typed
            try:
                invoke(case.payload, metadata=metadata, timeout=TIMEOUT)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                self.codes[(method.name, code.name)] += 1
                if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    timeouts += 1
                problems = self.problems(exc)
                after = self.snapshots.take()
                if after != before:
                    changed = ", ".join(self.snapshots.changed(before, after))
                    problems.append(f"refused call changed {changed}")
                    before = after
                if problems:
                    self.record(method.name, caller, case, problems, exc)
                continue
            self.codes[(method.name, "OK")] += 1
            # A success may change anything: restore what later calls rely on, then re-baseline.
            self.world.repair()
            before = self.snapshots.take()

    @staticmethod
    def problems(exc: grpc.RpcError) -> list[str]:
        found: list[str] = []
        code = exc.code()  # type: ignore[attr-defined]
        if code in BAD_CODES:
            found.append(f"status {code.name}")
        try:
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        except ValueError as error:
            return [*found, f"inconsistent google.rpc.Status ({error})"]
        if status is None:
            return [*found, "no google.rpc.Status"]
        if not any(d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) for d in status.details):
            found.append("no ErrorInfo")
        text = (exc.details() or "") + "".join(str(d) for d in status.details)  # type: ignore[attr-defined]
        leaked = [marker for marker in LEAK_MARKERS if marker in text]
        if leaked:
            found.append(f"leaks {leaked}")
        return found

    def record(
        self, method: str, caller: str, case: Case, problems: list[str], exc: grpc.RpcError
    ) -> None:
        payload = case.payload
        if isinstance(payload, bytes):
            request = short(payload, 60)
        else:
            request = text_format.MessageToString(payload, as_one_line=True)[:160]
        self.failures.append(
            Failure(
                method=method,
                caller=caller,
                problems="; ".join(problems),
                code=exc.code().name,  # type: ignore[attr-defined]
                message=(exc.details() or "")[:160],  # type: ignore[attr-defined]
                request=f"{case.label} | {request}",
            )
        )

    def report(self, examples: int = 2, limit: int = 60) -> str:
        """Failures grouped by method, problem and code, with a couple of examples each."""
        groups: dict[tuple[str, str, str], list[Failure]] = defaultdict(list)
        for failure in self.failures:
            groups[(failure.method, failure.problems, failure.code)].append(failure)
        calls = sum(self.codes.values())
        lines = [f"{len(self.failures)} failed calls of {calls}, in {len(groups)} groups:"]
        for (method, problems, code), found in sorted(groups.items())[:limit]:
            callers = ", ".join(sorted({f.caller for f in found}))
            lines.append(f"- {method} [{code}] {problems}: x{len(found)} as {callers}")
            for f in found[:examples]:
                lines.append(f"    {f.caller}: {f.request}\n      -> {f.message!r}")
        if len(groups) > limit:
            lines.append(f"... and {len(groups) - limit} more groups")
        return "\n".join(lines)

    def histogram(self) -> str:
        """Status codes per method, to show how deep the requests got."""
        methods: dict[str, list[str]] = defaultdict(list)
        for (method, code), count in sorted(self.codes.items()):
            methods[method].append(f"{code}={count}")
        return "\n".join(f"{method}: {' '.join(codes)}" for method, codes in methods.items())


@pytest.mark.parametrize("service", services(), ids=lambda service: str(service.name))
def test_fuzz_service(
    service: ServiceDescriptor,
    world: World,
    channel: grpc.Channel,
    db: psycopg.Connection[Any],
) -> None:
    assert service.methods, f"{service.full_name} has no methods"
    rng = random.Random(f"{SEED}:{service.full_name}")
    requests = Requests(world.pool, rng)
    fuzzer = Fuzzer(channel, world, Snapshots(db))
    callers = list(world.callers)
    started = time.monotonic()
    for method in service.methods:
        for caller in callers:
            # Built per caller, so fresh names and a re-created org's id stay current.
            cases = list(requests.cases(method.input_type))
            fuzzer.run(method, caller, for_caller(cases, caller, callers))
    elapsed = time.monotonic() - started
    print(f"{service.full_name}: {elapsed:.1f}s\n{fuzzer.histogram()}")
    if fuzzer.failures:
        # pytrace=False: the grouped report is the whole message, without a repr of the list.
        pytest.fail(f"{service.full_name} ({elapsed:.1f}s): {fuzzer.report()}", pytrace=False)

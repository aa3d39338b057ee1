"""Breaking changes between two versions of a module, found by comparing their descriptors.

``breaking_changes`` takes the ``FileDescriptorSet`` of each version as protoc built it
(never the text) and lists what would break an existing client on the wire (binary) or in
JSON, with rule names after ``buf breaking``'s. Elements are matched by fully-qualified
name: the baseline's are those its own files declare; the candidate's, those of its files
and of everything they import, so moving a message to another file (or into a dependency)
is not a deletion. Fields and enum values are matched by number, so a changed number is a
deletion (of the old number) and an addition (of the new one). Additions (fields, messages,
enums, enum values, services, RPCs, files) never break anything.

A field or enum value may be deleted when both its number and its name are reserved: a
reserved number keeps the wire meaning from being reused, a reserved name the JSON one.
Deleting one with neither reserved is ``*_NO_DELETE``; with only one of the two reserved it
is ``*_NO_DELETE_UNLESS_NAME_RESERVED`` or ``*_NO_DELETE_UNLESS_NUMBER_RESERVED``, the rule
that asks for the missing one. A deleted file is not a rule of its own: what it declared is
checked element by element.

Pure and picklable (only ``google.protobuf``), so that the compiler's worker processes can
run it off the event loop.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2

FieldProto = descriptor_pb2.FieldDescriptorProto
# Scalar type names as written in .proto files ("int64", "string").
_TYPE_NAMES = {
    number: name.removeprefix("TYPE_").lower() for name, number in FieldProto.Type.items()
}
_LABELS = {
    FieldProto.LABEL_OPTIONAL: "optional",
    FieldProto.LABEL_REQUIRED: "required",
    FieldProto.LABEL_REPEATED: "repeated",
}
_NAMED_TYPES = (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM, FieldProto.TYPE_GROUP)

# Every rule this module applies, in the order the README lists them.
RULES: tuple[str, ...] = (
    "MESSAGE_NO_DELETE",
    "FIELD_NO_DELETE",
    "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED",
    "FIELD_NO_DELETE_UNLESS_NAME_RESERVED",
    "FIELD_SAME_NAME",
    "FIELD_SAME_JSON_NAME",
    "FIELD_SAME_TYPE",
    "FIELD_SAME_CARDINALITY",
    "FIELD_SAME_ONEOF",
    "ENUM_NO_DELETE",
    "ENUM_VALUE_NO_DELETE",
    "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED",
    "ENUM_VALUE_NO_DELETE_UNLESS_NAME_RESERVED",
    "ENUM_VALUE_SAME_NAME",
    "SERVICE_NO_DELETE",
    "RPC_NO_DELETE",
    "RPC_SAME_REQUEST_TYPE",
    "RPC_SAME_RESPONSE_TYPE",
    "RPC_SAME_CLIENT_STREAMING",
    "RPC_SAME_SERVER_STREAMING",
    "RESERVED_RANGE_NO_DELETE",
    "RESERVED_NAME_NO_DELETE",
)


@dataclass(frozen=True, order=True)
class Violation:
    """One breaking change: ``path`` is ``file:element`` (``acme/v1/a.proto:acme.v1.A.id``),
    the file being the baseline's."""

    path: str
    rule: str
    message: str


@dataclass
class _Index:
    """Elements by fully-qualified name (no leading dot), each with its file."""

    messages: dict[str, tuple[str, descriptor_pb2.DescriptorProto]] = field(default_factory=dict)
    enums: dict[str, tuple[str, descriptor_pb2.EnumDescriptorProto]] = field(default_factory=dict)
    services: dict[str, tuple[str, descriptor_pb2.ServiceDescriptorProto]] = field(
        default_factory=dict
    )

    @classmethod
    def of(cls, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> _Index:
        index = cls()
        for file in files:
            prefix = f"{file.package}." if file.package else ""
            index._add_messages(file.name, prefix, file.message_type)
            for enum in file.enum_type:
                index.enums[prefix + enum.name] = (file.name, enum)
            for service in file.service:
                index.services[prefix + service.name] = (file.name, service)
        return index

    def _add_messages(
        self, path: str, prefix: str, messages: Iterable[descriptor_pb2.DescriptorProto]
    ) -> None:
        for message in messages:
            name = prefix + message.name
            self.messages[name] = (path, message)
            for enum in message.enum_type:
                self.enums[f"{name}.{enum.name}"] = (path, enum)
            self._add_messages(path, f"{name}.", message.nested_type)


def breaking_changes(
    baseline: bytes,
    candidate: bytes,
    baseline_files: Sequence[str],
) -> list[Violation]:
    """How ``candidate`` (a serialized FileDescriptorSet) breaks clients of ``baseline``,
    whose own files are ``baseline_files`` (the rest of its set are its imports), sorted."""
    old_set = descriptor_pb2.FileDescriptorSet.FromString(baseline)
    new_set = descriptor_pb2.FileDescriptorSet.FromString(candidate)
    own = set(baseline_files)
    old = _Index.of(f for f in old_set.file if f.name in own)
    new = _Index.of(new_set.file)
    found = [
        *_messages(old, new),
        *_enums(old, new),
        *_services(old, new),
    ]
    return sorted(set(found))


def _parent_gone(name: str, old: _Index, new: _Index) -> bool:
    """True when a message enclosing ``name`` was deleted (and is reported instead)."""
    parent = name.rpartition(".")[0]
    while parent:
        if parent in old.messages and parent not in new.messages:
            return True
        parent = parent.rpartition(".")[0]
    return False


def _messages(old: _Index, new: _Index) -> Iterator[Violation]:
    for name, (path, message) in old.messages.items():
        where = f"{path}:{name}"
        if name not in new.messages:
            if not _parent_gone(name, old, new):
                yield Violation(where, "MESSAGE_NO_DELETE", f'message "{name}" was deleted')
            continue
        candidate = new.messages[name][1]
        # Message reserved ranges exclude their end.
        reserved = _Ranges((r.start, r.end - 1) for r in candidate.reserved_range)
        yield from _fields(where, message, candidate, reserved)
        yield from _reserved(
            where,
            [(r.start, r.end - 1) for r in message.reserved_range],
            reserved,
            message.reserved_name,
            candidate.reserved_name,
        )


def _fields(
    where: str,
    old: descriptor_pb2.DescriptorProto,
    new: descriptor_pb2.DescriptorProto,
    reserved: _Ranges,
) -> Iterator[Violation]:
    new_by_number = {f.number: f for f in new.field}
    new_by_name = {f.name: f for f in new.field}
    reserved_names = set(new.reserved_name)
    for before in old.field:
        at = f"{where}.{before.name}"
        after = new_by_number.get(before.number)
        if after is None:
            moved = new_by_name.get(before.name)
            deleted = _deleted(
                at,
                "FIELD",
                f'field {before.number} "{before.name}"',
                number_reserved=reserved.covers(before.number, before.number),
                name_reserved=before.name in reserved_names,
                renumbered=moved.number if moved is not None else None,
            )
            if deleted is not None:
                yield deleted
            continue
        if after.name != before.name:
            yield Violation(
                at,
                "FIELD_SAME_NAME",
                f'field {before.number} changed its name from "{before.name}" to "{after.name}"',
            )
        if _json_name(after) != _json_name(before):
            yield Violation(
                at,
                "FIELD_SAME_JSON_NAME",
                f'field {before.number} changed its JSON name from "{_json_name(before)}" to'
                f' "{_json_name(after)}"',
            )
        if _type(after) != _type(before):
            yield Violation(
                at,
                "FIELD_SAME_TYPE",
                f"field {before.number} changed its type from {_type(before)} to {_type(after)}",
            )
        if after.label != before.label:
            yield Violation(
                at,
                "FIELD_SAME_CARDINALITY",
                f"field {before.number} changed from {_LABELS[before.label]} to"
                f" {_LABELS[after.label]}",
            )
        if _oneof(new, after) != _oneof(old, before):
            yield Violation(
                at,
                "FIELD_SAME_ONEOF",
                f"field {before.number} moved from {_oneof_text(old, before)} to"
                f" {_oneof_text(new, after)}",
            )


def _enums(old: _Index, new: _Index) -> Iterator[Violation]:
    for name, (path, enum) in old.enums.items():
        where = f"{path}:{name}"
        if name not in new.enums:
            if not _parent_gone(name, old, new):
                yield Violation(where, "ENUM_NO_DELETE", f'enum "{name}" was deleted')
            continue
        candidate = new.enums[name][1]
        new_names: dict[int, set[str]] = {}
        new_numbers: dict[str, int] = {}
        for value in candidate.value:
            new_names.setdefault(value.number, set()).add(value.name)
            new_numbers[value.name] = value.number
        # Enum reserved ranges include their end.
        reserved = _Ranges((r.start, r.end) for r in candidate.reserved_range)
        reserved_names = set(candidate.reserved_name)
        for value in enum.value:
            at = f"{where}.{value.name}"
            if value.number not in new_names:
                deleted = _deleted(
                    at,
                    "ENUM_VALUE",
                    f'enum value {value.number} "{value.name}"',
                    number_reserved=reserved.covers(value.number, value.number),
                    name_reserved=value.name in reserved_names,
                    renumbered=new_numbers.get(value.name),
                )
                if deleted is not None:
                    yield deleted
            elif value.name not in new_names[value.number]:
                now = ", ".join(f'"{n}"' for n in sorted(new_names[value.number]))
                yield Violation(
                    at,
                    "ENUM_VALUE_SAME_NAME",
                    f'enum value {value.number} changed its name from "{value.name}" to {now}',
                )
        yield from _reserved(
            where,
            [(r.start, r.end) for r in enum.reserved_range],
            reserved,
            enum.reserved_name,
            candidate.reserved_name,
        )


def _services(old: _Index, new: _Index) -> Iterator[Violation]:
    for name, (path, service) in old.services.items():
        where = f"{path}:{name}"
        if name not in new.services:
            yield Violation(where, "SERVICE_NO_DELETE", f'service "{name}" was deleted')
            continue
        methods = {m.name: m for m in new.services[name][1].method}
        for before in service.method:
            at = f"{where}.{before.name}"
            after = methods.get(before.name)
            if after is None:
                yield Violation(at, "RPC_NO_DELETE", f'RPC "{before.name}" was deleted')
                continue
            for rule, what, was, now in (
                ("RPC_SAME_REQUEST_TYPE", "request type", before.input_type, after.input_type),
                ("RPC_SAME_RESPONSE_TYPE", "response type", before.output_type, after.output_type),
            ):
                if was != now:
                    yield Violation(
                        at,
                        rule,
                        f'RPC "{before.name}" changed its {what} from {was.lstrip(".")} to'
                        f" {now.lstrip('.')}",
                    )
            for rule, side, was_streaming, now_streaming in (
                (
                    "RPC_SAME_CLIENT_STREAMING",
                    "client",
                    before.client_streaming,
                    after.client_streaming,
                ),
                (
                    "RPC_SAME_SERVER_STREAMING",
                    "server",
                    before.server_streaming,
                    after.server_streaming,
                ),
            ):
                if was_streaming != now_streaming:
                    change = "became" if now_streaming else "is no longer"
                    yield Violation(at, rule, f'RPC "{before.name}" {change} {side}-streaming')


def _deleted(
    at: str,
    kind: str,
    what: str,
    *,
    number_reserved: bool,
    name_reserved: bool,
    renumbered: int | None,
) -> Violation | None:
    """The violation of a deleted field or enum value (``kind`` FIELD or ENUM_VALUE); None
    when both its number and its name are reserved."""
    if number_reserved and name_reserved:
        return None
    message = f"{what} was deleted"
    if renumbered is not None:
        message += f" (its name now has number {renumbered}: a changed number is a deletion)"
    if number_reserved:
        return Violation(
            at,
            f"{kind}_NO_DELETE_UNLESS_NAME_RESERVED",
            f"{message}; its number is reserved, reserve its name too",
        )
    if name_reserved:
        return Violation(
            at,
            f"{kind}_NO_DELETE_UNLESS_NUMBER_RESERVED",
            f"{message}; its name is reserved, reserve its number too",
        )
    return Violation(
        at, f"{kind}_NO_DELETE", f"{message}; to delete it, reserve its number and its name"
    )


def _reserved(
    where: str,
    old_ranges: Sequence[tuple[int, int]],
    new_ranges: _Ranges,
    old_names: Iterable[str],
    new_names: Iterable[str],
) -> Iterator[Violation]:
    """Reserved ranges (inclusive bounds) and names of the baseline the candidate dropped."""
    for start, end in old_ranges:
        if not new_ranges.covers(start, end):
            span = str(start) if start == end else f"{start} to {end}"
            yield Violation(
                where, "RESERVED_RANGE_NO_DELETE", f"reserved range {span} is no longer reserved"
            )
    kept = set(new_names)
    for name in old_names:
        if name not in kept:
            yield Violation(
                where, "RESERVED_NAME_NO_DELETE", f'reserved name "{name}" is no longer reserved'
            )


class _Ranges:
    """Inclusive ranges, sorted and merged once (overlapping and adjacent ones joined), so
    that whether a span is covered is one binary search: the comparison stays linear in the
    number of ranges (up to the one sort), where asking each range of the baseline against
    every range of the candidate was quadratic (8,000 reserved ranges took 1.5 s)."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        lows: list[int] = []
        highs: list[int] = []
        for low, high in sorted(ranges):
            if highs and low <= highs[-1] + 1:
                highs[-1] = max(highs[-1], high)
            else:
                lows.append(low)
                highs.append(high)
        self._lows = lows
        self._highs = highs

    def covers(self, start: int, end: int) -> bool:
        """True when the ranges together cover ``start`` to ``end`` (inclusive)."""
        if start > end:
            return True
        i = bisect.bisect_right(self._lows, start) - 1
        return i >= 0 and self._highs[i] >= end


def _json_name(f: FieldProto) -> str:
    if f.HasField("json_name"):
        return f.json_name
    parts = f.name.split("_")  # protoc's default: lowerCamelCase of the name
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _type(f: FieldProto) -> str:
    if f.type in _NAMED_TYPES:
        return f.type_name.lstrip(".")
    return _TYPE_NAMES[f.type]


def _oneof(message: descriptor_pb2.DescriptorProto, f: FieldProto) -> str:
    """The field's real oneof ("" for none; proto3 ``optional``'s synthetic oneof is none)."""
    if not f.HasField("oneof_index") or f.proto3_optional:
        return ""
    return message.oneof_decl[f.oneof_index].name


def _oneof_text(message: descriptor_pb2.DescriptorProto, f: FieldProto) -> str:
    name = _oneof(message, f)
    return f'oneof "{name}"' if name else "no oneof"

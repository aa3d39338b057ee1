"""The one rule for text that comes off the wire, applied to every string of every request.

PostgreSQL cannot store NUL, and an unpaired surrogate is not text at all: either is
INVALID_ARGUMENT naming the field's path (``organization.settings["k"]``, ``files[2].path``),
before any database work. The walk is driven by the message's descriptor, so services
added later get the rule without code of their own. Bytes fields are not text and are
left alone. A message type with no string anywhere in it (``carries_text``, worked out once
per type) is not walked at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from spoke_grpc.errors import FieldViolation

_MAX_KEY_SHOWN = 64
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_STRING = FieldDescriptor.TYPE_STRING
_carries_text: dict[str, bool] = {}


def carries_text(descriptor: Descriptor) -> bool:
    """Whether messages of this type can hold a string anywhere (map keys included)."""
    known = _carries_text.get(descriptor.full_name)
    if known is None:
        known = _carries_text[descriptor.full_name] = _has_string(descriptor, set())
    return known


def _has_string(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in seen:  # a recursive type: decided where it was entered
        return False
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.type == _STRING:
            return True
        nested = field.message_type if field.type == _MESSAGE else None
        if nested is not None and _has_string(nested, seen):
            return True
    return False


def text_violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every string field of ``message`` (recursively) that breaks the text rule."""
    found: list[FieldViolation] = []
    for field, value in message.ListFields():
        path = prefix + field.name
        entry = field.message_type if field.type == _MESSAGE else None
        if entry is not None and entry.GetOptions().map_entry:
            _check_map(entry.fields_by_name["value"], value, path, found)
        elif field.is_repeated:
            for index, item in enumerate(value):
                _check_value(field, item, f"{path}[{index}]", found)
        else:
            _check_value(field, value, path, found)
    return found


def text_problem(value: str) -> str | None:
    """Why ``value`` is not acceptable text, or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode text (no unpaired surrogates)"
    return None


def _check_map(
    value_field: FieldDescriptor,
    value: Mapping[Any, Any],
    path: str,
    found: list[FieldViolation],
) -> None:
    for key, item in value.items():
        shown = json.dumps(str(key)[:_MAX_KEY_SHOWN])
        item_path = f"{path}[{shown}]"
        if isinstance(key, str):
            problem = text_problem(key)
            if problem:
                found.append(FieldViolation(f"{item_path} (key)", problem))
        _check_value(value_field, item, item_path, found)


def _check_value(
    field: FieldDescriptor, value: Any, path: str, found: list[FieldViolation]
) -> None:
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            found.append(FieldViolation(path, problem))
    elif isinstance(value, Message):
        found.extend(text_violations(value, path + "."))

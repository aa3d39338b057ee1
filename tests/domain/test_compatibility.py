"""The breaking-change rules, each with a minimal before/after pair, and the changes that must
not be flagged. Both sides are compiled by the same protoc the server runs (grpcio-tools'),
and compared as descriptors."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from grpc_tools import protoc

from spoke_grpc.compile_worker import WELL_KNOWN_TYPES
from spoke_grpc.domain.compatibility import RULES, Violation, breaking_changes

Files = Mapping[str, str]


def descriptor_set(files: Files) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for path, content in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(content)
        out = root / "set.pb"
        args = [
            "protoc",
            f"--proto_path={root}",
            f"--proto_path={WELL_KNOWN_TYPES}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *files,
        ]
        assert protoc.main(args) == 0, f"does not compile: {files}"
        return out.read_bytes()


def one(body: str) -> dict[str, str]:
    return {"t.proto": f'syntax = "proto3";\npackage t;\n{body}\n'}


def compare(before: Files, after: Files) -> list[Violation]:
    return breaking_changes(descriptor_set(before), descriptor_set(after), list(before))


MSG = "message A {} message B {}"
ENUM = "enum E { E_UNSPECIFIED = 0; E_ONE = 1; }"
RPC = "message A {} message B {} service S { rpc Get(A) returns (A); }"

# One minimal pair per rule: the change breaks exactly that rule, once.
PAIRS: dict[str, tuple[str, str]] = {
    "MESSAGE_NO_DELETE": (MSG, "message A {}"),
    "FIELD_NO_DELETE": (
        "message A { string x = 1; int32 y = 2; }",
        "message A { string x = 1; }",
    ),
    "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED": (
        "message A { string x = 1; int32 y = 2; }",
        'message A { string x = 1; reserved "y"; }',
    ),
    "FIELD_NO_DELETE_UNLESS_NAME_RESERVED": (
        "message A { string x = 1; int32 y = 2; }",
        "message A { string x = 1; reserved 2; }",
    ),
    "FIELD_SAME_NAME": (
        'message A { string x = 1 [json_name = "v"]; }',
        'message A { string z = 1 [json_name = "v"]; }',
    ),
    "FIELD_SAME_JSON_NAME": (
        "message A { string x = 1; }",
        'message A { string x = 1 [json_name = "renamed"]; }',
    ),
    "FIELD_SAME_TYPE": ("message A { int32 x = 1; }", "message A { int64 x = 1; }"),
    "FIELD_SAME_CARDINALITY": (
        "message A { string x = 1; }",
        "message A { repeated string x = 1; }",
    ),
    "FIELD_SAME_ONEOF": (
        "message A { string x = 1; }",
        "message A { oneof choice { string x = 1; } }",
    ),
    "ENUM_NO_DELETE": (f"{ENUM} message A {{}}", "message A {}"),
    "ENUM_VALUE_NO_DELETE": (ENUM, "enum E { E_UNSPECIFIED = 0; }"),
    "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED": (
        ENUM,
        'enum E { E_UNSPECIFIED = 0; reserved "E_ONE"; }',
    ),
    "ENUM_VALUE_NO_DELETE_UNLESS_NAME_RESERVED": (
        ENUM,
        "enum E { E_UNSPECIFIED = 0; reserved 1; }",
    ),
    "ENUM_VALUE_SAME_NAME": (ENUM, "enum E { E_UNSPECIFIED = 0; E_UNO = 1; }"),
    "SERVICE_NO_DELETE": (RPC, MSG),
    "RPC_NO_DELETE": (
        "message A {} service S { rpc Get(A) returns (A); rpc Put(A) returns (A); }",
        "message A {} service S { rpc Get(A) returns (A); }",
    ),
    "RPC_SAME_REQUEST_TYPE": (
        RPC,
        "message A {} message B {} service S { rpc Get(B) returns (A); }",
    ),
    "RPC_SAME_RESPONSE_TYPE": (
        RPC,
        "message A {} message B {} service S { rpc Get(A) returns (B); }",
    ),
    "RPC_SAME_CLIENT_STREAMING": (
        RPC,
        "message A {} message B {} service S { rpc Get(stream A) returns (A); }",
    ),
    "RPC_SAME_SERVER_STREAMING": (
        RPC,
        "message A {} message B {} service S { rpc Get(A) returns (stream A); }",
    ),
    "RESERVED_RANGE_NO_DELETE": (
        "message A { reserved 5 to 10; }",
        "message A { reserved 5 to 9; }",
    ),
    "RESERVED_NAME_NO_DELETE": ('message A { reserved "old"; }', "message A {}"),
}


def test_every_rule_has_a_pair() -> None:
    assert list(PAIRS) == list(RULES)


@pytest.mark.parametrize(("before", "after"), list(PAIRS.values()), ids=list(PAIRS))
def test_each_rule_flags_its_minimal_change(
    request: pytest.FixtureRequest, before: str, after: str
) -> None:
    rule = request.node.callspec.id
    found = compare(one(before), one(after))
    assert [v.rule for v in found] == [rule], found
    assert found[0].path.startswith("t.proto:t.")


BREAKING_TOO: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "changed-field-number": (
        "message A { string x = 1; }",
        "message A { string x = 2; }",
        [("FIELD_NO_DELETE", "t.proto:t.A.x")],
    ),
    "changed-enum-value-number": (
        ENUM,
        "enum E { E_UNSPECIFIED = 0; E_ONE = 2; }",
        [("ENUM_VALUE_NO_DELETE", "t.proto:t.E.E_ONE")],
    ),
    "field-message-type": (
        "message A { B b = 1; } message B {} message C {}",
        "message A { C b = 1; } message B {} message C {}",
        [("FIELD_SAME_TYPE", "t.proto:t.A.b")],
    ),
    "renamed-field": (
        "message A { string user_id = 1; }",
        "message A { string account_id = 1; }",
        [
            ("FIELD_SAME_JSON_NAME", "t.proto:t.A.user_id"),
            ("FIELD_SAME_NAME", "t.proto:t.A.user_id"),
        ],
    ),
    "nested-message-deleted-with-its-parent": (
        "message A { message Inner { string x = 1; } enum E { E_UNSPECIFIED = 0; } } message B {}",
        "message B {}",
        [("MESSAGE_NO_DELETE", "t.proto:t.A")],
    ),
    "enum-reserved-range": (
        "enum E { E_UNSPECIFIED = 0; reserved 2 to 4; }",
        "enum E { E_UNSPECIFIED = 0; reserved 2, 3; }",
        [("RESERVED_RANGE_NO_DELETE", "t.proto:t.E")],
    ),
    "map-value-type": (
        "message A { map<string, int32> m = 1; }",
        "message A { map<string, string> m = 1; }",
        [("FIELD_SAME_TYPE", "t.proto:t.A.MEntry.value")],
    ),
    "package-renamed": (
        "message A {}",
        "",
        [("MESSAGE_NO_DELETE", "t.proto:t.A")],
    ),
}


@pytest.mark.parametrize(
    ("before", "after", "expected"), list(BREAKING_TOO.values()), ids=list(BREAKING_TOO)
)
def test_more_breaking_changes(before: str, after: str, expected: list[tuple[str, str]]) -> None:
    new = one(after) if after else {"t.proto": 'syntax = "proto3";\npackage u;\nmessage A {}\n'}
    assert [(v.rule, v.path) for v in compare(one(before), new)] == expected


def test_messages_say_what_changed() -> None:
    (deleted,) = compare(one("message A { string x = 1; }"), one("message A { string x = 2; }"))
    assert deleted.message == (
        'field 1 "x" was deleted (its name now has number 2: a changed number is a deletion);'
        " to delete it, reserve its number and its name"
    )
    (typed,) = compare(one("message A { int32 x = 1; }"), one("message A { string x = 1; }"))
    assert typed.message == "field 1 changed its type from int32 to string"


COMPATIBLE: dict[str, tuple[Files, Files]] = {
    "field-added": (
        one("message A { string x = 1; }"),
        one("message A { string x = 1; int32 y = 2; }"),
    ),
    "message-added": (one("message A {}"), one("message A {} message B { string x = 1; }")),
    "enum-value-added": (one(ENUM), one("enum E { E_UNSPECIFIED = 0; E_ONE = 1; E_TWO = 2; }")),
    "service-and-rpc-added": (
        one("message A {} service S { rpc Get(A) returns (A); }"),
        one(
            "message A {} service S { rpc Get(A) returns (A); rpc Put(A) returns (A); }"
            " service T { rpc Ping(A) returns (A); }"
        ),
    ),
    "file-added": (
        one("message A {}"),
        {**one("message A {}"), "u.proto": 'syntax = "proto3";\npackage t;\nmessage B {}\n'},
    ),
    "message-moved-to-another-file": (
        one("message A {} message B {}"),
        {**one("message A {}"), "u.proto": 'syntax = "proto3";\npackage t;\nmessage B {}\n'},
    ),
    "field-deleted-with-number-and-name-reserved": (
        one("message A { string x = 1; int32 y = 2; }"),
        one('message A { string x = 1; reserved 2; reserved "y"; }'),
    ),
    "enum-value-deleted-with-number-and-name-reserved": (
        one(ENUM),
        one('enum E { E_UNSPECIFIED = 0; reserved 1; reserved "E_ONE"; }'),
    ),
    "reserved-range-widened-and-split": (
        one("message A { reserved 5 to 10; }"),
        one("message A { reserved 1 to 6, 7 to 20; }"),
    ),
    "comments-and-formatting": (
        one("message A { string x = 1; }"),
        one("// A thing.\nmessage A {\n  // Its x.\n  string x = 1;\n}"),
    ),
    "field-added-to-a-oneof": (
        one("message A { oneof o { string x = 1; int32 y = 2; } }"),
        one("message A { oneof o { string x = 1; int32 y = 2; string z = 3; } }"),
    ),
}


@pytest.mark.parametrize(("before", "after"), list(COMPATIBLE.values()), ids=list(COMPATIBLE))
def test_compatible_changes_are_not_flagged(before: Files, after: Files) -> None:
    assert compare(before, after) == []


def test_imports_of_the_baseline_are_not_its_own() -> None:
    """A file the baseline imports (a dependency's) is not the baseline's to keep."""
    dependency = {"dep/d.proto": 'syntax = "proto3";\npackage d;\nmessage D {}\n'}
    before = {
        **dependency,
        "t.proto": 'syntax = "proto3";\npackage t;\nimport "dep/d.proto";\n'
        "message A { d.D d = 1; }\n",
    }
    after = one("message A {}")
    found = breaking_changes(descriptor_set(before), descriptor_set(after), ["t.proto"])
    assert [(v.rule, v.path) for v in found] == [("FIELD_NO_DELETE", "t.proto:t.A.d")]


def _many_reserved_ranges(count: int, dropped: int) -> bytes:
    """A message and an enum with ``count`` disjoint reserved ranges, the last ``dropped``
    of them left out."""
    from google.protobuf import descriptor_pb2

    file = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3")
    message = file.message_type.add(name="A")
    enum = file.enum_type.add(name="E")
    enum.value.add(name="E_UNSPECIFIED", number=0)
    for i in range(count - dropped):
        message.reserved_range.add(start=3 * i + 1, end=3 * i + 2)  # end exclusive
        enum.reserved_range.add(start=3 * i + 1, end=3 * i + 1)  # end inclusive
    return descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()


def test_reserved_ranges_are_compared_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work counted through a seam rather than timed: every range list is sorted once, not
    once per range of the other side (8,000 ranges were 64 million elements sorted)."""
    from spoke_grpc.domain import compatibility

    sorted_elements = 0

    def counting_sorted(items: Any, **kwargs: Any) -> list[Any]:
        nonlocal sorted_elements
        result = sorted(items, **kwargs)
        sorted_elements += len(result)
        return result

    monkeypatch.setattr(compatibility, "sorted", counting_sorted, raising=False)
    count = 8000
    found = breaking_changes(
        _many_reserved_ranges(count, 0), _many_reserved_ranges(count, 2), ["t.proto"]
    )
    assert [(v.rule, v.message) for v in found] == [
        ("RESERVED_RANGE_NO_DELETE", f"reserved range {3 * i + 1} is no longer reserved")
        for i in (count - 2, count - 1)
    ] * 2
    assert sorted_elements <= 4 * count  # each side's ranges once, and the violations

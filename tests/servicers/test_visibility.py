"""One visibility rule for every read of module data (issue 14, SPEC §3), through the real server.

The world: organization ``borg`` has a module ``hid…`` made private after the public module
``tools…`` (and a stranger's module) came to depend on it, as data stored before the
publication rule existed, or as ``UpdateModule(force=true)`` leaves it. The private module's
markers are unique strings that only it holds: its module name, a comment, a field and a
message that nothing public refers to (the public file's own text names the private path
and the type it imports: that is the public module's content, published by its owner). No
RPC may hand any marker to a caller who cannot read the module, in a response, an error
message, its details or any trailer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from spoke.v1 import module_pb2 as pb

from spoke_grpc.policy import load_policies, services
from spoke_grpc.types import Role
from tests.conftest import Users
from tests.harness import Client, failure
from tests.servicers.test_modules import create_module, create_org, push


@dataclass
class World:
    tag: str
    owner: Client  # borg's owner: reads everything of borg
    stranger: Client  # owns aorg, whose module app depends on borg/tools
    other: Client  # a developer of corg, with no tie to borg
    anonymous: Client
    hidden: str  # the private module's name
    tools: str
    secret_path: str
    tools_path: str
    markers: list[str] = field(default_factory=list)


def secret_file(tag: str) -> str:
    return (
        f'syntax = "proto3";\npackage sec{tag}.v1;\n'
        f"// CONFIDENTIAL{tag}: the margin formula.\n"
        f"message SecretThing{tag} {{\n  string formula{tag} = 1;\n}}\n"
        f"message Unreferenced{tag} {{\n  int64 margin = 1;\n}}\n"
    )


def tools_file(tag: str, secret_path: str) -> str:
    return (
        f'syntax = "proto3";\npackage tools{tag}.v1;\nimport "{secret_path}";\n'
        f"message Tool{tag} {{\n  sec{tag}.v1.SecretThing{tag} inner = 1;\n}}\n"
    )


def app_file(tag: str, tools_path: str) -> str:
    return (
        f'syntax = "proto3";\npackage app{tag}.v1;\nimport "{tools_path}";\n'
        f"message App{tag} {{\n  tools{tag}.v1.Tool{tag} tool = 1;\n}}\n"
    )


def make_private(world: World, db: psycopg.Connection[Any], how: str) -> None:
    if how == "forced":
        world.owner.modules.UpdateModule(
            pb.UpdateModuleRequest(
                org="borg",
                module=world.hidden,
                update=pb.Module(is_public=False),
                update_mask=FieldMask(paths=["is_public"]),
                force=True,
            )
        )
    else:  # stored before the publication rule: no RPC makes it any more
        db.execute("UPDATE modules SET is_public = false WHERE name = %s", [world.hidden])


@pytest.fixture(params=["stored", "forced"])
def world(
    request: pytest.FixtureRequest, users: Users, anonymous: Client, db: psycopg.Connection[Any]
) -> World:
    tag = uuid.uuid4().hex[:10]
    owner, stranger, other = users.create("bowner"), users.create("stranger"), users.create("c")
    create_org(owner, "borg")
    create_org(stranger, "aorg")
    corg = create_org(owner, "corg")
    users.join(corg, other, Role.DEVELOPER)
    hidden, tools = f"hid{tag}", f"tools{tag}"
    secret_path, tools_path = f"sec{tag}/s.proto", f"tools{tag}/t.proto"
    w = World(tag, owner, stranger, other, anonymous, hidden, tools, secret_path, tools_path)
    w.markers = [f"CONFIDENTIAL{tag}", f"formula{tag}", f"Unreferenced{tag}", hidden]
    # Public while the others come to depend on it, then private.
    create_module(owner, "borg", hidden, is_public=True)
    push(owner, "borg", hidden, "1.0.0", {secret_path: secret_file(tag)})
    create_module(owner, "borg", tools, is_public=True)
    push(
        owner,
        "borg",
        tools,
        "1.0.0",
        {tools_path: tools_file(tag, secret_path)},
        deps=[("borg", hidden, "1.0.0")],
    )
    create_module(stranger, "aorg", "app")
    push(
        stranger,
        "aorg",
        "app",
        "1.0.0",
        {f"app{tag}/a.proto": app_file(tag, tools_path)},
        deps=[("borg", tools, "1.0.0")],
    )
    make_private(w, db, request.param)
    return w


def leaked(world: World, *texts: bytes | str, supplied: bytes = b"") -> list[str]:
    """The private module's markers found in ``texts``, less those the caller ``supplied``
    in its request (an error may echo what it was asked)."""
    found = []
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        found += [m for m in world.markers if m.encode() in data and m.encode() not in supplied]
    return found


def descriptor_files(data: bytes) -> list[str]:
    return [f.name for f in descriptor_pb2.FileDescriptorSet.FromString(data).file]


# --- The leak as a stranger found it ---------------------------------------------------------


def test_compiling_a_dependent_does_not_reveal_a_private_module(world: World) -> None:
    """The report: a stranger's version depends on public borg/tools, whose version depends
    on a module now private. Compiling it handed out the private file with its comments."""
    request = pb.CompileVersionRequest(org="aorg", module="app", version="1.0.0")
    error = failure(lambda: world.stranger.modules.CompileVersion(request))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.type == "DEPENDENCY_NOT_VISIBLE"
    assert leaked(world, error.message, error.status.SerializeToString()) == []
    # Who may read the module still compiles what depends on it, whole.
    own = world.owner.modules.CompileVersion(
        pb.CompileVersionRequest(org="borg", module=world.tools, version="1.0.0")
    )
    assert world.secret_path in descriptor_files(own.descriptor_set)
    assert leaked(world, own.descriptor_set) == world.markers[:3]


def test_a_private_file_is_not_on_a_strangers_include_path(world: World) -> None:
    """Importing the private file directly, through a dependency on the public module."""
    create_module(world.stranger, "aorg", "direct")
    content = (
        f'syntax = "proto3";\npackage direct{world.tag};\nimport "{world.secret_path}";\n'
        f"message D {{ sec{world.tag}.v1.SecretThing{world.tag} s = 1; }}\n"
    )
    error = failure(
        lambda: push(
            world.stranger,
            "aorg",
            "direct",
            "1.0.0",
            {f"direct{world.tag}/d.proto": content},
            deps=[("borg", world.tools, "1.0.0")],
        )
    )
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.type == "DEPENDENCY_NOT_VISIBLE"
    supplied = (content + world.secret_path).encode()
    assert leaked(world, error.message, error.status.SerializeToString(), supplied=supplied) == []


# --- Every door, every outsider ----------------------------------------------------------------


def _requests(world: World) -> list[tuple[str, Message]]:
    """Every spoke.v1 method with requests aimed at each module of the world, built from the
    method's input descriptor (a field named like a reference gets each target), reads
    first and deletions last, so that the walk's own writes do not empty the world early."""
    load = load_policies()

    def order(item: tuple[str, Message]) -> tuple[bool, bool]:
        path = item[0]
        return ("/Delete" in path, not load[path].read_only)

    return sorted(_all_requests(world), key=order)


def _all_requests(world: World) -> Iterator[tuple[str, Message]]:
    targets = [
        ("borg", world.hidden, "1.0.0"),
        ("borg", world.tools, "1.0.0"),
        ("aorg", "app", "1.0.0"),
    ]
    for service in services():
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            cls = message_factory.GetMessageClass(method.input_type)
            names = {f.name for f in method.input_type.fields}
            for org, module, version in targets:
                request = cls()
                values = {
                    "org": org,
                    "module": module,
                    "version": version,
                    "against_version": version,
                    "query": world.tag,
                }
                for name, value in values.items():
                    if name in names:
                        setattr(request, name, value)
                if "languages" in names:
                    request.languages.append("python")
                yield path, request
    # Pushes that reach for the private module, through the public one and directly.
    for org, module in (("borg", world.tools), ("borg", world.hidden)):
        yield (
            "/spoke.v1.ModuleService/CreateVersion",
            pb.CreateVersionRequest(
                org="aorg",
                module="app",
                version="9.9.9",
                files=[
                    pb.ProtoFile(
                        path=f"x{world.tag}/x.proto",
                        content=(
                            f'syntax = "proto3";\nimport "{world.secret_path}";\n'
                            f"message X {{ sec{world.tag}.v1.SecretThing{world.tag} s = 1; }}\n"
                        ),
                    )
                ],
                dependencies=[pb.VersionRef(org=org, module=module, version="1.0.0")],
            ),
        )


@dataclass
class Answer:
    path: str
    code: str
    data: bytes
    supplied: bytes


STREAMS = {f"/{s.full_name}/{m.name}" for s in services() for m in s.methods if m.server_streaming}


def _call(channel: grpc.Channel, caller: Client, path: str, request: Message) -> Answer:
    if path in STREAMS:
        return _open_stream(channel, caller, path, request)
    call = channel.unary_unary(
        path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )
    try:
        response, state = call.with_call(request, metadata=caller.metadata(), timeout=30)
    except grpc.RpcError as exc:
        parts = [(exc.details() or "").encode()]  # type: ignore[attr-defined]
        for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
            parts.append(
                f"{key}=".encode() + (value if isinstance(value, bytes) else value.encode())
            )
        code = exc.code().name  # type: ignore[attr-defined]
        return Answer(path, code, b"\n".join(parts), request.SerializeToString())
    parts = [response]
    for key, value in [*(state.initial_metadata() or ()), *(state.trailing_metadata() or ())]:
        parts.append(f"{key}=".encode() + (value if isinstance(value, bytes) else value.encode()))
    return Answer(path, "OK", b"\n".join(parts), request.SerializeToString())


def _open_stream(channel: grpc.Channel, caller: Client, path: str, request: Message) -> Answer:
    """A server stream, opened and closed again once the server accepted it: what it said
    (its headers, or its error) is the answer. Its live events are walked in
    tests/servicers/test_events.py."""
    call = channel.unary_stream(
        path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )
    stream = call(request, metadata=caller.metadata(), timeout=30)
    stream.initial_metadata()
    stream.cancel()
    parts = [(stream.details() or "").encode()]
    for key, value in [*(stream.initial_metadata() or ()), *(stream.trailing_metadata() or ())]:
        parts.append(f"{key}=".encode() + (value if isinstance(value, bytes) else value.encode()))
    code = stream.code()
    name = "OK" if code is grpc.StatusCode.CANCELLED else code.name
    return Answer(path, name, b"\n".join(parts), request.SerializeToString())


@pytest.mark.parametrize("who", ["stranger", "other", "anonymous"])
def test_no_door_hands_an_outsider_the_private_module(
    world: World, who: str, channel: grpc.Channel
) -> None:
    caller: Client = getattr(world, who)
    answers = [_call(channel, caller, path, request) for path, request in _requests(world)]
    leaks = [(a.path, a.code, leaked(world, a.data, supplied=a.supplied)) for a in answers]
    assert [leak for leak in leaks if leak[2]] == []
    # The walk reached the data: the public module's version and graph were answered.
    ok = {a.path for a in answers if a.code == "OK"}
    assert "/spoke.v1.ModuleService/GetVersion" in ok
    assert "/spoke.v1.ModuleService/GetDependencyGraph" in ok


def test_members_still_read_everything(world: World, channel: grpc.Channel) -> None:
    """The positive control: the same walk as borg's owner finds the private module, so the
    markers the outsiders' walk looks for are the ones the data carries."""
    answers = [_call(channel, world.owner, path, request) for path, request in _requests(world)]
    found = {m for a in answers for m in leaked(world, a.data, supplied=a.supplied)}
    assert found == set(world.markers)

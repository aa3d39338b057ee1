"""GetDependencyGraph (issue 8): transitive dependencies across organizations, as far as the
caller may read (SPEC §3), and the DOT script that draws a response."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from spoke.v1 import module_pb2 as pb

from spoke_grpc.config import REPO_ROOT
from tests.conftest import Users
from tests.harness import Client, failure
from tests.servicers.test_modules import create_module, create_org, make_private, proto, push

DOT_SCRIPT = REPO_ROOT / "scripts" / "dependency_graph_dot.py"


def graph(client: Client, org: str, module: str, version: str) -> pb.GetDependencyGraphResponse:
    response: pb.GetDependencyGraphResponse = client.modules.GetDependencyGraph(
        pb.GetDependencyGraphRequest(org=org, module=module, version=version)
    )
    return response


def shape(
    response: pb.GetDependencyGraphResponse,
) -> tuple[list[tuple[str, bool, bool]], list[str]]:
    nodes = [(n.id, n.is_public, n.version.deleted) for n in response.nodes]
    edges = [f"{e.dependent} -> {e.dependency}" for e in response.edges]
    return nodes, edges


class World:
    """acme: `base` and `tools` (public) and `secret` (private); tools@1.0.0 depends on
    secret and base. globex: `app` (public), whose 1.0.0 depends on acme's base and tools.
    secret was public until then: acme's admin forced it private (publication rule)."""

    def __init__(self, users: Users) -> None:
        self.acme, self.globex = users.create("acme"), users.create("globex")
        create_org(self.acme, "acme")
        create_org(self.globex, "globex")
        for name in ("base", "secret", "tools"):
            create_module(self.acme, "acme", name, is_public=True)
        push(self.acme, "acme", "base", "1.0.0", {"base/b.proto": proto("base", "message B {}")})
        push(self.acme, "acme", "secret", "1.0.0", {"sec/s.proto": proto("sec", "message S {}")})
        tools = proto(
            "tools", "message T { sec.S s = 1; base.B b = 2; }", ["sec/s.proto", "base/b.proto"]
        )
        push(
            self.acme,
            "acme",
            "tools",
            "1.0.0",
            {"tools/t.proto": tools},
            deps=[("acme", "secret", "1.0.0"), ("acme", "base", "1.0.0")],
        )
        create_module(self.globex, "globex", "app", is_public=True)
        app = proto("app", "message A { tools.T t = 1; }", ["tools/t.proto"])
        push(
            self.globex,
            "globex",
            "app",
            "v1.0.0",
            {"app/a.proto": app},
            deps=[("acme", "base", "1.0.0"), ("acme", "tools", "1.0.0")],
        )
        make_private(self.acme, "acme", "secret", force=True)


@pytest.fixture
def world(users: Users) -> World:
    return World(users)


PUBLIC_SHAPE = (
    [
        ("globex/app@v1.0.0", True, False),
        ("acme/base@1.0.0", True, False),
        ("acme/tools@1.0.0", True, False),
    ],
    [
        "globex/app@v1.0.0 -> acme/base@1.0.0",
        "globex/app@v1.0.0 -> acme/tools@1.0.0",
        "acme/tools@1.0.0 -> acme/base@1.0.0",
    ],
)


def test_a_private_dependency_is_never_named_to_who_cannot_read_it(
    world: World, anonymous: Client, admin: Client
) -> None:
    # globex's owner is no member of acme: acme/secret is left out, with its edge.
    assert shape(graph(world.globex, "globex", "app", "1.0.0")) == PUBLIC_SHAPE
    assert shape(graph(anonymous, "globex", "app", "1.0.0")) == PUBLIC_SHAPE
    text = str(graph(anonymous, "globex", "app", "1.0.0"))
    assert "secret" not in text
    # acme's owner may read it, so does a platform admin.
    everything = (
        [
            ("globex/app@v1.0.0", True, False),
            ("acme/base@1.0.0", True, False),
            ("acme/tools@1.0.0", True, False),
            ("acme/secret@1.0.0", False, False),
        ],
        [
            "globex/app@v1.0.0 -> acme/base@1.0.0",
            "globex/app@v1.0.0 -> acme/tools@1.0.0",
            "acme/tools@1.0.0 -> acme/secret@1.0.0",
            "acme/tools@1.0.0 -> acme/base@1.0.0",
        ],
    )
    assert shape(graph(world.acme, "globex", "app", "1.0.0")) == everything
    assert shape(graph(admin, "globex", "app", "1.0.0")) == everything
    node = graph(world.acme, "globex", "app", "1.0.0").nodes[0]
    assert (node.version.org, node.version.module, node.version.version) == (
        "globex",
        "app",
        "v1.0.0",
    )
    # The private module's own graph is as missing to others as a module that does not exist.
    for caller in (world.globex, anonymous):
        error = failure(lambda c=caller: graph(c, "acme", "secret", "1.0.0"))
        assert error.code is grpc.StatusCode.NOT_FOUND
        assert error.message == "module 'secret' not found"
    assert shape(graph(world.acme, "acme", "secret", "1.0.0")) == (
        [("acme/secret@1.0.0", False, False)],
        [],
    )


def test_a_deleted_dependency_shows_as_deleted(world: World) -> None:
    world.globex.modules.DeleteModule(pb.DeleteModuleRequest(org="globex", module="app"))
    create_module(world.globex, "globex", "lean", is_public=True)
    lean = proto("lean", "message L { base.B b = 1; }", ["base/b.proto"])
    push(
        world.globex,
        "globex",
        "lean",
        "1.0.0",
        {"lean/l.proto": lean},
        deps=[("acme", "base", "1.0.0")],
    )
    world.acme.modules.DeleteModule(pb.DeleteModuleRequest(org="acme", module="tools"))
    world.acme.modules.DeleteModule(pb.DeleteModuleRequest(org="acme", module="base", force=True))
    assert shape(graph(world.globex, "globex", "lean", "1.0.0")) == (
        [("globex/lean@1.0.0", True, False), ("acme/base@1.0.0", False, True)],
        ["globex/lean@1.0.0 -> acme/base@1.0.0"],
    )


def run_dot(response: pb.GetDependencyGraphResponse, **options: Any) -> str:
    text = json_format.MessageToJson(response, **options)
    result = subprocess.run(
        [sys.executable, str(DOT_SCRIPT)],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def test_the_dot_script_draws_a_response(world: World) -> None:
    response = graph(world.acme, "globex", "app", "1.0.0")
    dot = run_dot(response, preserving_proto_field_name=True)  # grpcurl's JSON
    assert dot == (
        "digraph dependencies {\n"
        "  rankdir=LR;\n"
        '  node [shape=box, fontname="Helvetica"];\n'
        '  "globex/app@v1.0.0" [label="globex/app@v1.0.0"];\n'
        '  "acme/base@1.0.0" [label="acme/base@1.0.0"];\n'
        '  "acme/tools@1.0.0" [label="acme/tools@1.0.0"];\n'
        '  "acme/secret@1.0.0" [label="acme/secret@1.0.0", style=dashed];\n'
        '  "globex/app@v1.0.0" -> "acme/base@1.0.0";\n'
        '  "globex/app@v1.0.0" -> "acme/tools@1.0.0";\n'
        '  "acme/tools@1.0.0" -> "acme/secret@1.0.0";\n'
        '  "acme/tools@1.0.0" -> "acme/base@1.0.0";\n'
        "}\n"
    )
    assert run_dot(response) == dot  # lowerCamelCase JSON draws the same

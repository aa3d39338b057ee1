"""ListLanguages, and a language whose generator is missing (issue 15, item 1)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from spoke.v1 import module_pb2 as pb

from spoke_grpc.config import Settings
from spoke_grpc.generators import LANGUAGES
from tests.conftest import Users
from tests.harness import Client, ServerThread, failure
from tests.servicers.test_modules import create_module, create_org, push

ALL = ["cpp", "csharp", "go", "java", "javascript", "kotlin", "objc", "php", "python", "ruby"]
ALL += ["rust", "typescript"]
WITH_STUBS = {"cpp", "go", "java", "javascript", "php", "python", "ruby", "typescript"}


def languages(client: Client) -> dict[str, pb.Language]:
    response = client.modules.ListLanguages(pb.ListLanguagesRequest())
    names = [language.name for language in response.languages]
    assert names == sorted(names)
    return {language.name: language for language in response.languages}


def test_every_language_is_listed_with_its_generators_versions_and_stubs(
    users: Users, server: ServerThread
) -> None:
    listed = languages(users.create())
    assert sorted(listed) == ALL
    assert {name for name, language in listed.items() if language.grpc_stubs} == WITH_STUBS
    python = listed["python"]
    assert python.available
    assert [(g.name, g.program) for g in python.generators] == [
        ("python", "grpcio-tools"),
        ("pyi", "grpcio-tools"),
        ("grpc_python", "grpcio-tools"),
    ]
    assert {g.version for g in python.generators} == {metadata.version("grpcio-tools")}
    toolchain = server.server.compiler.toolchain
    for name, language in listed.items():
        # What the server found, as it found it: available when all is installed (and the
        # system's protoc, which runs every generator but python's).
        installed = all(g.installed for g in language.generators)
        system_protoc = name == "python" or toolchain.program("protoc").path is not None
        assert language.available == toolchain.available(name) == (installed and system_protoc)
        assert language.description
        for generator in language.generators:
            assert bool(generator.version) == generator.installed
            assert generator.installed == (toolchain.program(generator.program).path is not None)
    # The options are the server's own, fixed: Go's import paths, TypeScript's target.
    assert list(listed["go"].generators[0].options) == ["paths=import"]
    assert "target=ts" in listed["typescript"].generators[0].options


def test_listing_languages_needs_a_token(anonymous: Client) -> None:
    error = failure(lambda: anonymous.modules.ListLanguages(pb.ListLanguagesRequest()))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def bare_server(settings: Settings, database_url: str, tmp_path: Path) -> Iterator[ServerThread]:
    """A server on the same database that finds no generator program at all."""
    empty = tmp_path / "no-generators"
    empty.mkdir()
    bare = dataclasses.replace(settings, generators_path=(str(empty),))
    thread = ServerThread(bare, database_url)
    yield thread
    thread.stop()


def test_a_language_without_its_generator_is_unavailable_not_a_crash(
    users: Users, bare_server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    owner = users.create("owner")
    create_org(owner, "acme")
    create_module(owner, "acme", "mod")
    proto = 'syntax = "proto3";\npackage m.v1;\nmessage M { string a = 1; }\n'
    push(owner, "acme", "mod", "1.0.0", {"m/v1/m.proto": proto})
    with grpc.insecure_channel(bare_server.address) as channel:
        bare = Client(channel, owner.token)
        listed = languages(bare)
        assert [n for n, lang in listed.items() if lang.available] == ["python"]
        go = listed["go"]
        assert [(g.program, g.installed, g.version) for g in go.generators] == [
            ("protoc-gen-go", False, ""),
            ("protoc-gen-go-grpc", False, ""),
        ]
        request = pb.CompileVersionRequest(
            org="acme", module="mod", version="1.0.0", languages=["python", "go"]
        )
        error = failure(lambda: bare.modules.CompileVersion(request))
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        (violation,) = error.detail(error_details_pb2.PreconditionFailure).violations
        assert (violation.type, violation.subject) == ("LANGUAGE_UNAVAILABLE", "go")
        assert violation.description == (
            "this server cannot generate go: protoc, protoc-gen-go, protoc-gen-go-grpc not"
            " installed (ListLanguages shows what is); available: python"
        )
        # Refused before any work: no compile job counted or recorded.
        assert db.execute("SELECT count(*) FROM compile_jobs").fetchone() == (0,)
        request = pb.CompileVersionRequest(
            org="acme", module="mod", version="1.0.0", languages=["python"]
        )
        assert [f.path for f in bare.modules.CompileVersion(request).files] == [
            "m/v1/m_pb2.py",
            "m/v1/m_pb2.pyi",
            "m/v1/m_pb2_grpc.py",
        ]


def test_the_languages_table_is_what_the_contract_lists() -> None:
    assert sorted(LANGUAGES) == ALL

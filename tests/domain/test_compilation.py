"""Semantic version precedence, which decides a REJECT module's highest version."""

from __future__ import annotations

from spoke_grpc.domain.compilation import semver_precedence


def test_versions_sort_by_semantic_version_precedence() -> None:
    # semver.org §11's own example, with spellings and build metadata mixed in.
    ordered = [
        "1.0.0-alpha",
        "v1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0+build.9",
        "v1.9.0",
        "1.10.0",
        "2.0.0-0",
        "2.0.0",
    ]
    assert sorted(reversed(ordered), key=semver_precedence) == ordered
    assert semver_precedence("v1.2.3") == semver_precedence("1.2.3+other")

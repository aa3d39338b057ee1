"""A version's dependency graph: the versions it depends on, transitively, and the edges.

SPEC §3 decides what a caller sees (``spoke_grpc.store.visibility``): a version of a module
the caller may not read is left out, with its edges and whatever is reachable only through
it, so the graph never names it, not even as a placeholder. A dependency deleted after the
dependent was pushed (its module deleted with ``force``) stays, marked deleted, named as the
dependent recorded it, for callers who see the dependent's organization's private modules
(the dependent's GetVersion names it to them too); others do not see it.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass

from psycopg import AsyncConnection

from spoke_grpc.store import versions as version_store
from spoke_grpc.store.modules import Module
from spoke_grpc.store.versions import Version
from spoke_grpc.store.visibility import Reader


@dataclass(frozen=True)
class Node:
    """One version: ``id`` is ``org/module@version`` (suffixed ``#2``… in the rare graph
    where a deleted and a re-pushed version share that name)."""

    id: str
    org: str
    module: str
    version: str
    is_public: bool
    deleted: bool = False


@dataclass(frozen=True)
class Edge:
    dependent: str
    dependency: str


@dataclass(frozen=True)
class Graph:
    """``orgs``: the organizations the walk looked at (every dependent's and dependency's,
    shown or not): what the reader's view of the graph was decided from."""

    nodes: list[Node]
    edges: list[Edge]
    orgs: frozenset[uuid.UUID] = frozenset()


async def dependency_graph(
    conn: AsyncConnection, module: Module, version: Version, *, reader: Reader
) -> Graph:
    """The graph from ``version`` (first), breadth-first, as far as ``reader`` may read."""
    rows = await version_store.graph_edges(conn, version.org_id, version.id, reader=reader)
    out: dict[uuid.UUID, list[version_store.GraphEdge]] = {}
    for row in rows:
        out.setdefault(row.version_id, []).append(row)
    root = Node(
        id=f"{module.org_name}/{module.name}@{version.version}",
        org=module.org_name,
        module=module.name,
        version=version.version,
        is_public=module.is_public,
    )
    ids: dict[uuid.UUID, str] = {version.id: root.id}
    taken = {root.id}
    nodes, edges = [root], []
    queue = deque([version.id])
    while queue:
        dependent = queue.popleft()
        for edge in out.get(dependent, []):
            if not edge.shown:
                continue  # never named to this caller
            target = ids.get(edge.dep_version_id)
            if target is None:
                target = _unique(edge.label, taken)
                ids[edge.dep_version_id] = target
                nodes.append(
                    Node(
                        id=target,
                        org=edge.dep_org_name,
                        module=edge.dep_module_name,
                        version=edge.dep_version,
                        is_public=edge.is_public,
                        deleted=not edge.present,
                    )
                )
                if edge.present:
                    queue.append(edge.dep_version_id)
            edges.append(Edge(dependent=ids[dependent], dependency=target))
    orgs = frozenset({version.org_id, *(r.org_id for r in rows), *(r.dep_org_id for r in rows)})
    return Graph(nodes, edges, orgs)


def _unique(label: str, taken: set[str]) -> str:
    candidate, n = label, 1
    while candidate in taken:
        n += 1
        candidate = f"{label}#{n}"
    taken.add(candidate)
    return candidate

"""Helpers for the operating tests (metrics, logs, traces, overload): a server of their
own on a database of their own, a scrape parsed by prometheus_client's own parser, and
log lines captured from every logger."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import Settings
from spoke_grpc.logs import JsonFormatter, RequestIdFilter
from tests import harness
from tests.harness import Client, ServerThread


@dataclass
class Dedicated:
    server: ServerThread
    admin: Client
    database_url: str


@contextmanager
def dedicated_server(
    pg_admin_url: str, template_url: str, tmp_path: Path, settings: Settings, **options: Any
) -> Iterator[Dedicated]:
    """A server with ``settings`` on a fresh database, and its bootstrap admin's client."""
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    server = ServerThread(settings, url, **options)
    try:
        token_file = server.run(ensure_bootstrap_admin(server.server.pool, tmp_path / "token"))
        assert token_file is not None
        with grpc.insecure_channel(server.address) as channel:
            yield Dedicated(server, Client(channel, token_file.read_text().strip()), url)
    finally:
        server.stop()
        harness.drop_database(pg_admin_url, url)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` (exactly those labels)."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; have {sorted(n for n, _ in samples)}"
    return samples[key]


class CapturedLogs:
    """Every log line written while it is active, from every logger, as JSON lines."""

    def __init__(self, level: int = logging.DEBUG) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.handler.addFilter(RequestIdFilter())
        self.handler.setLevel(level)
        self._level = level
        self._previous = logging.getLogger().level

    def __enter__(self) -> CapturedLogs:
        root = logging.getLogger()
        root.addHandler(self.handler)
        root.setLevel(min(self._level, self._previous))
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self._previous)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]

    def wait_for(self, request_id: str, logger: str, timeout: float = 5) -> dict[str, Any]:
        """The line ``logger`` wrote for ``request_id``, waiting for it: a failed call's
        status reaches its client as it aborts, a moment before its access line is written."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.entries():
                if entry.get("request_id") == request_id and entry["logger"] == logger:
                    return entry
            assert time.monotonic() < deadline, f"no {logger} line for {request_id}"
            time.sleep(0.01)

"""A TCP proxy in front of PostgreSQL that a test can cut and restore, to make the database
really unreachable for the server under test (no mocks)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

from psycopg.conninfo import conninfo_to_dict


class DatabaseProxy:
    def __init__(self, database_url: str) -> None:
        params: dict[str, Any] = conninfo_to_dict(database_url)
        host = str(params.get("host") or "127.0.0.1")
        port = int(params.get("port") or 5432)
        if host.startswith("/"):
            self._target: Any = f"{host}/.s.PGSQL.{port}"
            self._family = socket.AF_UNIX
        else:
            self._target = (host, port)
            self._family = socket.AF_INET
        self.dbname = str(params.get("dbname"))
        self.user = str(params.get("user") or "postgres")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._up = True
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    def cut(self) -> None:
        """Drops every open connection and refuses new ones until ``restore``."""
        with self._lock:
            self._up = False
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._up:
                    client.close()
                    continue
                try:
                    upstream = socket.socket(self._family, socket.SOCK_STREAM)
                    upstream.connect(self._target)
                except OSError:
                    client.close()
                    continue
                self._open.update((client, upstream))
            directions = ((client, upstream, self.client_reader()), (upstream, client, None))
            for src, dst, reader in directions:
                threading.Thread(target=self._pump, args=(src, dst, reader), daemon=True).start()

    def client_reader(self) -> Callable[[bytes], None] | None:
        """For subclasses: something that reads what one client connection sends."""
        return None

    def _pump(
        self, src: socket.socket, dst: socket.socket, reader: Callable[[bytes], None] | None
    ) -> None:
        try:
            while data := src.recv(65536):
                if reader is not None:
                    reader(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

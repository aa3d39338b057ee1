"""``spoke-grpc push`` and ``spoke-grpc pull``: the registry from the command line, as CI uses it.

``push DIR`` uploads every ``.proto`` file under DIR (paths relative to it; hidden
directories skipped) as a new version; ``pull ORG/MODULE@VERSION`` writes a version's
sources (with ``--with-deps``, its dependencies' too, transitively) or, with ``--lang``, the
code generated for it (and for its dependencies). The service is at ``SPOKE_ADDRESS``
(``host:port``, ``grpc://host:port`` plaintext, ``grpcs://host:port`` TLS with the system's
CAs), the caller's token in ``SPOKE_TOKEN``; ``--cacert`` (and ``--cert``/``--key`` for
mutual TLS, ``--server-name``) speak TLS with a CA of one's own, as ``spoke-grpc health``.

A failed call is one line on stderr: the status, then the field violations (or the
precondition's type, or the message). Exit codes (``EXIT_CODES``): 0 done; 1 refused (the
request or the state must change: invalid, not found, permission, precondition, ...);
2 bad command line; 3 retry later (unavailable, busy, deadline, aborted); 4 the pushed version
already exists.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from spoke.v1 import module_pb2, module_pb2_grpc

EXIT_CODES: Mapping[int, str] = {
    0: "done",
    1: "refused: the request or the registry's state must change",
    2: "bad command line",
    3: "retry later: the service is unreachable, busy or out of time",
    4: "push: that version already exists",
}
EXIT_REFUSED, EXIT_USAGE, EXIT_RETRY, EXIT_EXISTS = 1, 2, 3, 4
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
}
_REF = re.compile(r"(?P<org>[^/@\s]+)/(?P<module>[^/@\s]+)@(?P<version>\S+)")
_DEFAULT_TIMEOUT = 60.0


class ClientError(Exception):
    """A one-line error of push or pull, and the exit code that goes with it."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class VersionRef:
    org: str
    module: str
    version: str

    def __str__(self) -> str:
        return f"{self.org}/{self.module}@{self.version}"


def version_ref(text: str) -> VersionRef:
    """``ORG/MODULE@VERSION``, for argparse (a bad one is a usage error, exit code 2)."""
    match = _REF.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not ORG/MODULE@VERSION")
    return VersionRef(match["org"], match["module"], match["version"])


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``push`` and ``pull``, for the ``spoke-grpc`` parser."""
    epilog = "exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items())
    push = commands.add_parser(
        "push", help="upload the .proto files under DIR as a new version", epilog=epilog
    )
    push.add_argument("dir", type=Path, metavar="DIR")
    push.add_argument("--org", required=True, help="the organization's name or id")
    push.add_argument("--module", required=True, help="the module's name or id")
    push.add_argument("--version", required=True, help="a semantic version, e.g. v1.2.0")
    push.add_argument(
        "--dep",
        type=version_ref,
        action="append",
        default=[],
        metavar="ORG/MODULE@VERSION",
        help="a dependency (repeat for several)",
    )
    push.add_argument("--repository", default="", help="source: the repository's URL")
    push.add_argument("--commit", default="", help="source: the commit SHA")
    push.add_argument("--branch", default="", help="source: the branch")
    _connection_arguments(push)
    push.set_defaults(run=run_push)

    pull = commands.add_parser(
        "pull", help="write a version's sources, or its generated code, to a folder", epilog=epilog
    )
    pull.add_argument("ref", type=version_ref, metavar="ORG/MODULE@VERSION")
    pull.add_argument("--out", type=Path, required=True, help="the folder to write into")
    pull.add_argument(
        "--lang",
        action="append",
        default=[],
        metavar="LANGUAGE",
        help="write the code generated for LANGUAGE (repeat for several) instead of sources",
    )
    pull.add_argument(
        "--with-deps",
        action="store_true",
        help="also the dependencies' sources (or code), transitively",
    )
    _connection_arguments(pull)
    pull.set_defaults(run=run_pull)


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="host:port (default: SPOKE_ADDRESS)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=_DEFAULT_TIMEOUT,
        help=f"seconds each call may take (default {_DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--cacert", type=Path, help="TLS: trust these CA certificates")
    parser.add_argument("--cert", type=Path, help="mutual TLS: the client certificate")
    parser.add_argument("--key", type=Path, help="mutual TLS: its private key")
    parser.add_argument("--server-name", help="TLS: the name the server's certificate must carry")


class _Registry:
    """The ModuleService at the address, with the caller's token on every call."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        address = args.address or environ.get("SPOKE_ADDRESS", "")
        if not address:
            raise ClientError("set SPOKE_ADDRESS (or --address) to the service's host:port")
        self.address = address
        self.channel = _channel(address, args)
        self.stub = module_pb2_grpc.ModuleServiceStub(self.channel)
        token = environ.get("SPOKE_TOKEN", "")
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.timeout = args.timeout

    def call(self, method: str, request: object) -> object:
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _call_failed(method, self.address, exc) from None

    def close(self) -> None:
        self.channel.close()


def _channel(address: str, args: argparse.Namespace) -> grpc.Channel:
    scheme, _, rest = address.partition("://")
    if not rest:
        scheme, rest = "", address
    if scheme not in ("", "grpc", "grpcs"):
        raise ClientError(f"SPOKE_ADDRESS {address!r}: use host:port, grpc:// or grpcs://")
    if scheme == "grpc" or (scheme == "" and args.cacert is None):
        if args.cacert or args.cert or args.key:
            raise ClientError(f"{address!r} is plaintext (grpc://): drop the TLS options")
        return grpc.insecure_channel(rest)
    if (args.cert is None) != (args.key is None):
        raise ClientError("mutual TLS needs both --cert and --key")
    roots = _read(args.cacert, "--cacert") if args.cacert else None
    chain = _read(args.cert, "--cert") if args.cert else None
    key = _read(args.key, "--key") if args.key else None
    credentials = grpc.ssl_channel_credentials(roots, key, chain)
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(rest, credentials, options=options)


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(f"{flag} {path}: {exc.strerror or exc}") from None


def _call_failed(method: str, address: str, exc: grpc.RpcError) -> ClientError:
    """One line: the status, then what the details say (field violations, the precondition's
    type), else the message."""
    if not isinstance(exc, grpc.Call):
        return ClientError(f"{method} failed: {type(exc).__name__}", EXIT_RETRY)
    code = exc.code()
    status = rpc_status.from_call(exc)
    detail = _details(status) if status is not None else ""
    message = " ".join((exc.details() or "").split())
    if code is grpc.StatusCode.UNAVAILABLE and not detail:
        message = f"{address}: {message}"
    line = f"{code.name}: {detail or message}"
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return ClientError(line, EXIT_EXISTS)
    return ClientError(line, EXIT_RETRY if code in _RETRYABLE else EXIT_REFUSED)


def _details(status: status_pb2.Status) -> str:
    violations: list[str] = []
    for packed in status.details:
        bad = error_details_pb2.BadRequest()
        failure = error_details_pb2.PreconditionFailure()
        if packed.Unpack(bad):
            violations += [f"{v.field}: {v.description}" for v in bad.field_violations]
        elif packed.Unpack(failure):
            violations += [f"[{v.type}] {v.description}" for v in failure.violations]
    return "; ".join(" ".join(v.split()) for v in violations)


# --- push ------------------------------------------------------------------------------------


def proto_files(root: Path) -> list[tuple[str, str]]:
    """Every ``.proto`` under ``root`` as (path relative to it, text), by path; hidden
    directories (``.git``) are skipped."""
    if not root.is_dir():
        raise ClientError(f"{root} is not a directory")
    found: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.proto")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts[:-1]) or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientError(f"cannot read {path}: {exc}") from None
        found.append((relative.as_posix(), text))
    if not found:
        raise ClientError(f"no .proto files under {root}")
    return found


def run_push(args: argparse.Namespace, _settings: object = None) -> int:
    files = proto_files(args.dir)
    request = module_pb2.CreateVersionRequest(
        org=args.org,
        module=args.module,
        version=args.version,
        files=[module_pb2.ProtoFile(path=p, content=c) for p, c in files],
        dependencies=[
            module_pb2.VersionRef(org=d.org, module=d.module, version=d.version) for d in args.dep
        ],
        source=module_pb2.VersionSource(
            repository=args.repository, commit_sha=args.commit, branch=args.branch
        ),
    )
    registry = _Registry(args, os.environ)
    try:
        response = registry.call("CreateVersion", request)
    finally:
        registry.close()
    if not isinstance(response, module_pb2.CreateVersionResponse):
        raise TypeError(f"CreateVersion answered {type(response).__name__}")
    version = response.version
    print(
        f"pushed {version.org_name}/{version.module_name}@{version.version}:"
        f" {len(version.files)} file(s), digest {version.digest}"
    )
    return 0


# --- pull ------------------------------------------------------------------------------------


def run_pull(args: argparse.Namespace, _settings: object = None) -> int:
    registry = _Registry(args, os.environ)
    try:
        refs = _versions(registry, args.ref, with_deps=args.with_deps)
        written: dict[str, str] = {}
        for ref in refs:
            files = _code(registry, ref, args.lang) if args.lang else _sources(registry, ref)
            for path, content in files:
                if written.setdefault(path, str(ref)) != str(ref):
                    raise ClientError(
                        f"{path} comes from both {written[path]} and {ref}; pull them"
                        " into separate folders"
                    )
                write_under(args.out, path, content)
    finally:
        registry.close()
    what = f"{', '.join(sorted(set(args.lang)))} code" if args.lang else "sources"
    print(f"pulled {what} of {len(refs)} version(s): {len(written)} file(s) in {args.out}")
    return 0


def _versions(registry: _Registry, ref: VersionRef, *, with_deps: bool) -> list[VersionRef]:
    if not with_deps:
        return [ref]
    request = module_pb2.GetDependencyGraphRequest(
        org=ref.org, module=ref.module, version=ref.version
    )
    graph = registry.call("GetDependencyGraph", request)
    if not isinstance(graph, module_pb2.GetDependencyGraphResponse):
        raise TypeError(f"GetDependencyGraph answered {type(graph).__name__}")
    deleted = [node.id for node in graph.nodes if node.version.deleted]
    if deleted:
        raise ClientError(f"{ref} depends on deleted versions: {', '.join(deleted)}")
    # The first node is the version itself, as the caller named it.
    return [ref] + [
        VersionRef(n.version.org, n.version.module, n.version.version) for n in graph.nodes[1:]
    ]


def _sources(registry: _Registry, ref: VersionRef) -> Iterable[tuple[str, str]]:
    request = module_pb2.GetVersionRequest(org=ref.org, module=ref.module, version=ref.version)
    response = registry.call("GetVersion", request)
    if not isinstance(response, module_pb2.GetVersionResponse):
        raise TypeError(f"GetVersion answered {type(response).__name__}")
    return [(f.path, f.content) for f in response.version.files]


def _code(registry: _Registry, ref: VersionRef, languages: list[str]) -> Iterable[tuple[str, str]]:
    request = module_pb2.CompileVersionRequest(
        org=ref.org, module=ref.module, version=ref.version, languages=languages
    )
    response = registry.call("CompileVersion", request)
    if not isinstance(response, module_pb2.CompileVersionResponse):
        raise TypeError(f"CompileVersion answered {type(response).__name__}")
    several = len(set(languages)) > 1
    return [(f"{f.language}/{f.path}" if several else f.path, f.content) for f in response.files]


def write_under(out: Path, path: str, content: str) -> None:
    """Writes ``content`` at ``out/path``; a path that would leave ``out`` is refused."""
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ClientError(f"the service sent a file path that leaves --out: {path!r}")
    target = out.joinpath(*relative.parts)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"cannot write {target}: {exc.strerror or exc}") from None

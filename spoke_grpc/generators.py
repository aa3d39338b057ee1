"""The languages CompileVersion generates code for, and the programs that generate them.

Python comes from grpcio-tools' protoc, bundled with the server (``python``, ``pyi`` and the
``grpc_python`` plugin built in). Every other language needs programs from the system:
Debian's ``protoc`` (its built-in generators: cpp, csharp, java, kotlin, objc, php, ruby) and
plugins (``grpc_*_plugin`` from protobuf-compiler-grpc, ``protoc-gen-go``,
``protoc-gen-go-grpc``, ``protoc-gen-rust``, npm's ``protoc-gen-es``). They are looked up on
the generators path (``SPOKE_GENERATORS_PATH``; by default ``.generators/node_modules/.bin``
under the working directory, where ``make generators`` puts the npm ones, then ``PATH``) once,
when the compiler starts: a language whose programs are missing is unavailable, reported so
by ListLanguages and refused by CompileVersion, never a crash.

Options are fixed here, never taken from callers. A version of a program is what decides its
output, so the versions of a build's generators are part of its cache key.

Kept to the standard library: the compile workers import it (``go_import_path``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

# grpcio-tools' protoc, run in-process by the compile workers.
BUNDLED = "grpcio-tools"
# Debian's protoc, for every built-in generator but Python's, and to drive the plugins.
PROTOC = "protoc"
# Where ``make generators`` installs the npm plugins, relative to the working directory.
LOCAL_GENERATORS = ".generators/node_modules/.bin"
# Go packages without a go_package option get an import path under this prefix.
GO_IMPORT_PREFIX = "spoke.gen/go"


@dataclass(frozen=True)
class Generator:
    """One protoc output: ``--<out>_out``, from ``program`` (``protoc`` for a generator built
    into Debian's protoc, ``grpcio-tools`` for the bundled Python ones, else a plugin's
    program name, run as ``protoc-gen-<out>``), with fixed ``options`` (``--<out>_opt``).
    ``out`` names one configuration: each is run once per build."""

    out: str
    program: str
    options: tuple[str, ...] = ()
    go_import_paths: bool = False  # add an ``M<file>=<import path>`` for files without one

    @property
    def bundled(self) -> bool:
        return self.program == BUNDLED

    @property
    def plugin(self) -> bool:
        return self.program not in (BUNDLED, PROTOC)


@dataclass(frozen=True)
class Language:
    """A language: its generators, whether they include gRPC stubs, and what those are."""

    name: str
    generators: tuple[Generator, ...]
    grpc_stubs: bool
    note: str


_PY = (Generator("python", BUNDLED), Generator("pyi", BUNDLED), Generator("grpc_python", BUNDLED))
_GO_OPTIONS = ("paths=import",)
_ES = "protoc-gen-es"
_JAVA = Generator("java", PROTOC)

LANGUAGES: dict[str, Language] = {
    language.name: language
    for language in (
        Language("python", _PY, True, "_pb2.py messages, _pb2.pyi type stubs, _pb2_grpc.py"),
        Language(
            "go",
            (
                Generator("go", "protoc-gen-go", _GO_OPTIONS, go_import_paths=True),
                Generator("go-grpc", "protoc-gen-go-grpc", _GO_OPTIONS, go_import_paths=True),
            ),
            True,
            ".pb.go messages and _grpc.pb.go stubs, laid out by import path",
        ),
        Language(
            "java",
            (_JAVA, Generator("grpc-java", "grpc_java_plugin")),
            True,
            "messages and grpc-java stubs (…Grpc.java)",
        ),
        Language(
            "kotlin",
            (_JAVA, Generator("kotlin", PROTOC)),
            False,
            "the Java messages and Kotlin DSL builders (…Kt.kt); no Kotlin gRPC generator is"
            " packaged",
        ),
        Language(
            "cpp",
            (Generator("cpp", PROTOC), Generator("grpc-cpp", "grpc_cpp_plugin")),
            True,
            ".pb.h/.pb.cc messages and .grpc.pb.h/.grpc.pb.cc stubs",
        ),
        Language(
            "csharp",
            (Generator("csharp", PROTOC, ("base_namespace=",)),),
            False,
            "messages in directories by namespace; no C# gRPC plugin is packaged",
        ),
        Language("objc", (Generator("objc", PROTOC),), False, ".pbobjc.h/.pbobjc.m messages"),
        Language(
            "php",
            (Generator("php", PROTOC), Generator("grpc-php", "grpc_php_plugin")),
            True,
            "messages, GPBMetadata, and …Client.php stubs",
        ),
        Language(
            "ruby",
            (Generator("ruby", PROTOC), Generator("grpc-ruby", "grpc_ruby_plugin")),
            True,
            "_pb.rb messages and _services_pb.rb stubs",
        ),
        Language(
            "rust",
            (Generator("rust", "protoc-gen-rust"),),
            False,
            "rust-protobuf 2 messages (one .rs per file, by file name); no gRPC plugin",
        ),
        Language(
            "typescript",
            (Generator("es-ts", _ES, ("target=ts", "import_extension=js")),),
            True,
            "_pb.ts messages and service descriptors for Connect clients (@bufbuild/protobuf 2)",
        ),
        Language(
            "javascript",
            (Generator("es-js", _ES, ("target=js+dts", "import_extension=js")),),
            True,
            "_pb.js with .d.ts declarations and service descriptors for Connect clients",
        ),
    )
}


@dataclass(frozen=True)
class Program:
    """A program found (``path``, ``version``) or not (``path`` None)."""

    name: str
    path: str | None
    version: str


@dataclass(frozen=True)
class Toolchain:
    """The programs this server found, by name, and the bubblewrap it sandboxes them with
    (None: the plugins run without one)."""

    programs: Mapping[str, Program]
    bwrap: str | None = None

    def program(self, name: str) -> Program:
        return self.programs.get(name) or Program(name, None, "")

    def missing(self, language: str) -> list[str]:
        """The programs ``language`` needs that this server does not have."""
        return sorted(name for name in programs_of([language]) if self.program(name).path is None)

    def available(self, language: str) -> bool:
        return not self.missing(language)

    def versions(self, languages: Iterable[str]) -> list[str]:
        """``program version`` of every program the languages use: part of the cache key."""
        return sorted(f"{n} {self.program(n).version}" for n in programs_of(languages))


def names_versions(languages: Iterable[str]) -> bool:
    """Whether the languages' output depends on which versions the files belong to (Go's
    import paths, for files without a go_package), not only on the files."""
    return any(g.go_import_paths for lang in languages for g in LANGUAGES[lang].generators)


def programs_of(languages: Iterable[str]) -> set[str]:
    """The programs the languages run: their generators', and the system's protoc, which
    drives every generator but the bundled ones."""
    names = {g.program for lang in languages for g in LANGUAGES[lang].generators}
    if names - {BUNDLED}:
        names.add(PROTOC)
    return names


def search_path(setting: str | None = None) -> tuple[str, ...]:
    """The directories programs are looked up in: ``setting`` (``SPOKE_GENERATORS_PATH``,
    ``:``-separated), or the local npm generators then ``PATH``; absolute."""
    if setting:
        entries = setting.split(os.pathsep)
    else:
        entries = [LOCAL_GENERATORS, *os.environ.get("PATH", "").split(os.pathsep)]
    return tuple(os.path.abspath(e) for e in entries if e)


def detect(directories: Sequence[str], *, sandbox: str = "auto") -> Toolchain:
    """Finds every program the languages use on ``directories`` with its version, and
    bubblewrap when ``sandbox`` is ``auto`` (when it works here) or ``bwrap`` (required)."""
    path = os.pathsep.join(directories)
    names = sorted({g.program for lang in LANGUAGES.values() for g in lang.generators})
    found = {n: shutil.which(n, path=path) for n in names if n != BUNDLED}
    versions = _versions({n: p for n, p in found.items() if p is not None})
    programs = {n: Program(n, p, versions.get(n, "")) for n, p in found.items()}
    programs[BUNDLED] = Program(BUNDLED, BUNDLED, metadata.version("grpcio-tools"))
    bwrap = None
    if sandbox != "none":
        bwrap = shutil.which("bwrap", path=path)
        if bwrap is not None and not _bwrap_works(bwrap):
            bwrap = None
        if bwrap is None and sandbox == "bwrap":
            raise RuntimeError(
                "SPOKE_COMPILE_SANDBOX=bwrap but bubblewrap is missing or cannot create"
                " namespaces here (Debian: bubblewrap)"
            )
        if bwrap is None:
            log.warning("bubblewrap is not available: protoc plugins run without a sandbox")
    return Toolchain(programs, bwrap)


def go_import_path(label: str, path: str, package: str) -> str:
    """The Go import path and package name (``path;name``) of a file without go_package:
    ``spoke.gen/go/<org>/<module>/<version>/<directory>``, from the version that provides it
    (``label``, ``org/module@version``), named after its proto ``package`` (``acme.common.v1``
    gives ``commonv1``), else its directory, else the module."""
    owner, _, version = label.partition("@")
    org, _, module = owner.partition("/")
    directory = path.rpartition("/")[0]
    elements = [org, module, version, *directory.split("/")]
    import_path = "/".join([GO_IMPORT_PREFIX, *(_go_element(e) for e in elements if e)])
    parts = [p for p in package.split(".") if p]
    if len(parts) >= 2 and re.fullmatch(r"v\d+(?:(?:alpha|beta)\d*)?", parts[-1]):
        name = parts[-2] + parts[-1]
    elif parts:
        name = parts[-1]
    else:
        name = directory.rpartition("/")[2] or module
    return f"{import_path};{_go_identifier(name)}"


def _go_element(element: str) -> str:
    return re.sub(r"[^A-Za-z0-9._~+-]", "_", element)


def _go_identifier(name: str) -> str:
    identifier = re.sub(r"\W", "_", name.lower(), flags=re.ASCII) or "pb"
    return f"_{identifier}" if identifier[0].isdigit() else identifier


def _versions(paths: Mapping[str, str]) -> dict[str, str]:
    """Each program's version: its Debian package's (``protobuf-compiler 3.21.12-3``), its
    npm package's (``@bufbuild/protoc-gen-es 2.13.0``), else a digest of the file."""
    versions = _debian_versions(paths)
    for name, path in paths.items():
        if name not in versions:
            versions[name] = _npm_version(path) or _file_digest(path)
    return versions


def _debian_versions(paths: Mapping[str, str]) -> dict[str, str]:
    if shutil.which("dpkg-query") is None or not paths:
        return {}
    real = {name: os.path.realpath(path) for name, path in paths.items()}
    owners: dict[str, str] = {}
    searched = _run(["dpkg-query", "-S", *sorted(set(real.values()))])
    for line in searched.splitlines():
        package, sep, file = line.partition(": ")
        if sep and "," not in package:
            owners[file.strip()] = package.split(":")[0]
    packages = sorted(set(owners.values()))
    if not packages:
        return {}
    shown = _run(["dpkg-query", "-W", "-f=${Package} ${Version}\\n", *packages])
    version_of = dict(line.split(" ", 1) for line in shown.splitlines() if " " in line)
    result: dict[str, str] = {}
    for name, file in real.items():
        package = owners.get(file, "")
        if package in version_of:
            result[name] = f"{package} {version_of[package]}"
    return result


def _npm_version(path: str) -> str | None:
    """The version in the package.json of the npm package a program comes from."""
    for parent in Path(os.path.realpath(path)).parents:
        manifest = parent / "package.json"
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            if isinstance(data, dict) and "name" in data and "version" in data:
                return f"{data['name']} {data['version']}"
            return None
        if parent.name == "node_modules":
            return None
    return None


def _file_digest(path: str) -> str:
    with open(path, "rb") as file:
        return "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()[:16]


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout


def _bwrap_works(bwrap: str) -> bool:
    """Whether bubblewrap can make its namespaces here (not in every container)."""
    args = [bwrap, *sandbox_args(()), "true"]
    try:
        done = subprocess.run(args, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def sandbox_args(read_write: Sequence[str], read_only: Sequence[str] = ()) -> list[str]:
    """bubblewrap's arguments (without the program): no network, no other namespace shared,
    the system read-only (``/usr``, the loader's cache), ``read_only`` and ``read_write``
    directories at their own paths, an empty ``/tmp``, killed with its parent."""
    args = ["--unshare-all", "--die-with-parent", "--clearenv"]
    args += ["--ro-bind", "/usr", "/usr", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / top
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    for file in ("/etc/ld.so.cache", "/etc/alternatives"):
        if os.path.exists(file):
            args += ["--ro-bind", file, file]
    for directory in read_only:
        args += ["--ro-bind", directory, directory]
    for directory in read_write:
        args += ["--bind", directory, directory]
    args += ["--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp"]
    return args


def visible_directories(paths: Iterable[str]) -> tuple[str, ...]:
    """The directories outside ``/usr`` a sandboxed run must see for programs at ``paths``:
    an npm program's whole ``node_modules`` tree, else the program's directory."""
    shown: set[str] = set()
    for path in paths:
        for candidate in {path, os.path.realpath(path)}:
            if candidate.startswith("/usr/"):
                continue
            parents = Path(candidate).parents
            trees = [p for p in parents if p.name == "node_modules"]
            shown.add(str(trees[-1] if trees else Path(candidate).parent))
    return tuple(sorted(shown))

"""The code CompileVersion generates builds and runs with each language's own toolchain
(issue 15, items 1 and 2).

A fixture of two modules (``common``, public, and ``billing``, whose version depends on it)
covers an import across a dependency, a service, an enum, a map, a oneof and a well-known
type. Each language's test pushes them, compiles both versions for that language through the
real server, writes the files side by side, then builds them with the language's compiler
(g++, javac, go, tsc, ruby, python) together with a small program that builds an invoice,
serializes it, parses it back and prints what it read, and the name of the service from the
generated stubs. Where the server lacks a generator, or this machine a toolchain, the test
skips and says what to install (``make toolchains`` installs all of them, as .ci/run does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from spoke.v1 import module_pb2 as pb

from tests.conftest import Users
from tests.harness import Client, ServerThread
from tests.servicers.test_modules import create_module, create_org, push

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLCHAINS = REPO_ROOT / ".toolchains"
# What every program prints: id, total units, the oneof's email, a map entry's units, and
# the service's full name, read from the parsed invoice and the generated stubs.
EXPECTED = "inv-1 42 a@b.c 1 acme.billing.v1.Invoices"

MONEY = """syntax = "proto3";
package acme.common.v1;
option go_package = "example.com/acme/money;moneypb";
// A currency.
enum Currency {
  CURRENCY_UNSPECIFIED = 0;
  CURRENCY_EUR = 1;
}
// An amount of money.
message Money {
  Currency currency = 1;
  int64 units = 2;
  map<string, string> labels = 3;
}
"""

INVOICE = """syntax = "proto3";
package acme.billing.v1;
import "acme/common/v1/money.proto";
import "google/protobuf/timestamp.proto";
// An invoice.
message Invoice {
  string id = 1;
  acme.common.v1.Money total = 2;
  google.protobuf.Timestamp due = 3;
  oneof payer {
    string email = 4;
    int64 account = 5;
  }
  map<string, acme.common.v1.Money> lines = 6;
}
message GetInvoiceRequest {
  string id = 1;
}
service Invoices {
  rpc GetInvoice(GetInvoiceRequest) returns (Invoice);
}
"""


def generate(owner: Client, server: ServerThread, language: str, out: Path) -> list[str]:
    """Pushes the fixture, compiles both versions for ``language`` and writes the files
    under ``out``; returns their paths."""
    toolchain = server.server.compiler.toolchain
    if not toolchain.available(language):
        pytest.skip(
            f"the server cannot generate {language}: {', '.join(toolchain.missing(language))}"
            " not installed (make generators)"
        )
    create_org(owner, "acme")
    create_module(owner, "acme", "common", is_public=True)
    push(owner, "acme", "common", "1.0.0", {"acme/common/v1/money.proto": MONEY})
    create_module(owner, "acme", "billing")
    deps = [("acme", "common", "1.0.0")]
    push(owner, "acme", "billing", "1.0.0", {"acme/billing/v1/invoice.proto": INVOICE}, deps)
    written: list[str] = []
    for module in ("common", "billing"):
        request = pb.CompileVersionRequest(
            org="acme", module=module, version="1.0.0", languages=[language]
        )
        response = owner.modules.CompileVersion(request)
        assert response.files, f"no {language} files for {module}"
        for file in response.files:
            assert file.language == language
            target = out / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(file.content)
            written.append(file.path)
    return sorted(written)


def tool(name: str, package: str) -> str:
    """The program's path, or a skip naming what provides it."""
    found = shutil.which(name, path=f"{TOOLCHAINS / 'node_modules' / '.bin'}:{os.environ['PATH']}")
    if found is None:
        pytest.skip(f"{name} is not installed ({package}; make toolchains)")
    return found


def run(args: Sequence[str], cwd: Path, **env: str) -> str:
    done = subprocess.run(
        list(args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def owner(users: Users) -> Client:
    return users.create("owner")


CPP_MAIN = """#include <iostream>
#include "acme/billing/v1/invoice.grpc.pb.h"

int main() {
  acme::billing::v1::Invoice invoice;
  invoice.set_id("inv-1");
  invoice.mutable_total()->set_currency(acme::common::v1::CURRENCY_EUR);
  invoice.mutable_total()->set_units(42);
  (*invoice.mutable_total()->mutable_labels())["k"] = "v";
  invoice.mutable_due()->set_seconds(1700000000);
  invoice.set_email("a@b.c");
  (*invoice.mutable_lines())["a"].set_units(1);
  acme::billing::v1::Invoice parsed;
  if (!parsed.ParseFromString(invoice.SerializeAsString())) return 1;
  std::cout << parsed.id() << " " << parsed.total().units() << " " << parsed.email() << " "
            << parsed.lines().at("a").units() << " "
            << acme::billing::v1::Invoices::service_full_name() << std::endl;
  return 0;
}
"""


def test_cpp_builds_with_gpp_and_grpc(owner: Client, server: ServerThread, tmp_path: Path) -> None:
    files = generate(owner, server, "cpp", tmp_path)
    assert "acme/billing/v1/invoice.grpc.pb.cc" in files
    compiler = tool("g++", "Debian: g++")
    pkg_config = tool("pkg-config", "Debian: pkg-config")
    flags = subprocess.run(
        [pkg_config, "--cflags", "--libs", "grpc++", "protobuf"],
        capture_output=True,
        text=True,
        check=False,
    )
    if flags.returncode != 0:
        pytest.skip("gRPC C++ is not installed (Debian: libgrpc++-dev, libprotobuf-dev)")
    (tmp_path / "main.cc").write_text(CPP_MAIN)
    sources = ["main.cc", *(f for f in files if f.endswith(".cc"))]
    run(
        [compiler, "-std=c++17", "-O0", "-I.", *sources, "-o", "app", *flags.stdout.split()],
        tmp_path,
    )
    assert run([str(tmp_path / "app")], tmp_path).strip() == EXPECTED


JAVA_MAIN = """import acme.billing.v1.InvoiceOuterClass.Invoice;
import acme.common.v1.MoneyOuterClass.Currency;
import acme.common.v1.MoneyOuterClass.Money;

public class Main {
  public static void main(String[] args) throws Exception {
    Invoice invoice = Invoice.newBuilder()
        .setId("inv-1")
        .setTotal(Money.newBuilder().setCurrency(Currency.CURRENCY_EUR).setUnits(42)
            .putLabels("k", "v"))
        .setDue(com.google.protobuf.Timestamp.newBuilder().setSeconds(1700000000L))
        .setEmail("a@b.c")
        .putLines("a", Money.newBuilder().setUnits(1).build())
        .build();
    Invoice parsed = Invoice.parseFrom(invoice.toByteArray());
    System.out.println(parsed.getId() + " " + parsed.getTotal().getUnits() + " "
        + parsed.getEmail() + " " + parsed.getLinesOrThrow("a").getUnits() + " "
        + acme.billing.v1.InvoicesGrpc.SERVICE_NAME);
  }
}
"""
JARS = ("protobuf", "grpc-api", "grpc-stub", "grpc-protobuf", "grpc-protobuf-lite", "guava")


def test_java_builds_with_javac_and_grpc_java(
    owner: Client, server: ServerThread, tmp_path: Path
) -> None:
    files = generate(owner, server, "java", tmp_path)
    assert "acme/billing/v1/InvoicesGrpc.java" in files
    javac = tool("javac", "Debian: default-jdk-headless")
    java = tool("java", "Debian: default-jdk-headless")
    jars = [Path("/usr/share/java") / f"{name}.jar" for name in JARS]
    missing = [jar.name for jar in jars if not jar.exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: libprotobuf-java, libgrpc-java)")
    annotations = sorted(Path("/usr/share/java").glob("*annotation*.jar"))
    classpath = ":".join(str(j) for j in [*jars, *annotations])
    (tmp_path / "Main.java").write_text(JAVA_MAIN)
    sources = ["Main.java", *(f for f in files if f.endswith(".java"))]
    run([javac, "-nowarn", "-d", "classes", "-cp", classpath, *sources], tmp_path)
    output = run([java, "-cp", f"classes:{classpath}", "Main"], tmp_path)
    assert output.strip() == EXPECTED


GO_MAIN = """package main

import (
	"fmt"

	moneypb "example.com/acme/money"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	billingv1 "spoke.gen/go/acme/billing/1.0.0/acme/billing/v1"
)

func main() {
	invoice := &billingv1.Invoice{
		Id: "inv-1",
		Total: &moneypb.Money{
			Currency: moneypb.Currency_CURRENCY_EUR, Units: 42, Labels: map[string]string{"k": "v"},
		},
		Due:   &timestamppb.Timestamp{Seconds: 1700000000},
		Payer: &billingv1.Invoice_Email{Email: "a@b.c"},
		Lines: map[string]*moneypb.Money{"a": {Units: 1}},
	}
	wire, err := proto.Marshal(invoice)
	if err != nil {
		panic(err)
	}
	var parsed billingv1.Invoice
	if err := proto.Unmarshal(wire, &parsed); err != nil {
		panic(err)
	}
	var _ billingv1.InvoicesClient = billingv1.NewInvoicesClient(nil)
	var _ billingv1.InvoicesServer = billingv1.UnimplementedInvoicesServer{}
	var _ *grpc.ClientConn
	_ = billingv1.RegisterInvoicesServer
	fmt.Println(parsed.GetId(), parsed.GetTotal().GetUnits(), parsed.GetEmail(),
		parsed.GetLines()["a"].GetUnits(),
		billingv1.File_acme_billing_v1_invoice_proto.Services().Get(0).FullName())
}
"""
GOCODE = Path("/usr/share/gocode")


def test_go_builds_with_go_and_grpc_go(owner: Client, server: ServerThread, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = generate(owner, server, "go", src)
    # billing has no go_package: its import path comes from org, module and version.
    assert "spoke.gen/go/acme/billing/1.0.0/acme/billing/v1/invoice_grpc.pb.go" in files
    assert "example.com/acme/money/money.pb.go" in files
    go = tool("go", "Debian: golang-go")
    needed = ["google.golang.org/protobuf", "google.golang.org/grpc"]
    if not all((GOCODE / "src" / package).is_dir() for package in needed):
        pytest.skip(
            "Go's protobuf and gRPC are not installed (Debian: golang-google-protobuf-dev,"
            " golang-google-grpc-dev)"
        )
    (src / "spoke.test" / "main").mkdir(parents=True)
    (src / "spoke.test" / "main" / "main.go").write_text(GO_MAIN)
    # GOPATH mode, offline: the generated code by import path, the libraries from Debian's
    # tree; the build cache outlives the test, so only the first run compiles gRPC.
    cache = TOOLCHAINS / "go-build" if TOOLCHAINS.is_dir() else tmp_path / "go-build"
    env = {
        "GO111MODULE": "off",
        "GOPATH": f"{tmp_path}:{GOCODE}",
        "GOCACHE": str(cache),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
    }
    run([go, "build", "-o", "app", "spoke.test/main"], tmp_path, **env)
    assert run([str(tmp_path / "app")], tmp_path).strip() == EXPECTED


TS_MAIN = """import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { InvoiceSchema, Invoices } from "./acme/billing/v1/invoice_pb.js";
import { Currency } from "./acme/common/v1/money_pb.js";

const invoice = create(InvoiceSchema, {
  id: "inv-1",
  total: { currency: Currency.EUR, units: 42n, labels: { k: "v" } },
  due: { seconds: 1700000000n },
  payer: { case: "email", value: "a@b.c" },
  lines: { a: { units: 1n } },
});
const parsed = fromBinary(InvoiceSchema, toBinary(InvoiceSchema, invoice));
const email = parsed.payer.case === "email" ? parsed.payer.value : "";

// The service descriptor types a Connect client: checked by tsc, not called.
export async function fetchId(client: Client<typeof Invoices>): Promise<string> {
  return (await client.getInvoice({ id: "inv-1" })).id;
}

console.log(parsed.id, String(parsed.total?.units), email, String(parsed.lines["a"]?.units),
  Invoices.typeName);
"""
TSCONFIG = """{
  "compilerOptions": {
    "target": "es2022", "module": "nodenext", "moduleResolution": "nodenext",
    "strict": true, "skipLibCheck": true, "types": []
  },
  "files": ["main.ts"]
}
"""


@pytest.mark.parametrize("language", ["typescript", "javascript"])
def test_typescript_and_javascript_build_with_tsc_and_run_on_node(
    owner: Client, server: ServerThread, tmp_path: Path, language: str
) -> None:
    """TypeScript: tsc compiles the generated .ts with the program; JavaScript: the program
    is checked against the generated .d.ts and node runs the generated .js."""
    files = generate(owner, server, language, tmp_path)
    ending = "_pb.ts" if language == "typescript" else "_pb.js"
    assert f"acme/billing/v1/invoice{ending}" in files
    tsc = tool("tsc", "npm: typescript")
    node = tool("node", "Debian: nodejs")
    runtime = TOOLCHAINS / "node_modules"
    if not (runtime / "@bufbuild" / "protobuf").is_dir():
        pytest.skip("@bufbuild/protobuf is not installed (make toolchains)")
    (tmp_path / "node_modules").symlink_to(runtime)
    (tmp_path / "package.json").write_text('{"type": "module"}\n')
    (tmp_path / "tsconfig.json").write_text(TSCONFIG)
    (tmp_path / "main.ts").write_text(TS_MAIN)
    run([tsc, "-p", "."], tmp_path)
    assert run([node, "main.js"], tmp_path).strip() == EXPECTED


RUBY_MAIN = """require "acme/billing/v1/invoice_services_pb"

money = Acme::Common::V1::Money
invoice = Acme::Billing::V1::Invoice.new(
  id: "inv-1",
  total: money.new(currency: :CURRENCY_EUR, units: 42, labels: { "k" => "v" }),
  due: Google::Protobuf::Timestamp.new(seconds: 1_700_000_000),
  email: "a@b.c",
  lines: { "a" => money.new(units: 1) },
)
parsed = Acme::Billing::V1::Invoice.decode(Acme::Billing::V1::Invoice.encode(invoice))
puts [parsed.id, parsed.total.units, parsed.email, parsed.lines["a"].units,
      Acme::Billing::V1::Invoices::Service.service_name].join(" ")
"""


def test_ruby_loads_and_runs(owner: Client, server: ServerThread, tmp_path: Path) -> None:
    files = generate(owner, server, "ruby", tmp_path)
    assert "acme/billing/v1/invoice_services_pb.rb" in files
    ruby = tool("ruby", "Debian: ruby")
    probe = subprocess.run([ruby, "-e", 'require "grpc"'], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("Ruby's gRPC is not installed (Debian: ruby-google-protobuf, ruby-grpc)")
    (tmp_path / "main.rb").write_text(RUBY_MAIN)
    assert run([ruby, "-I.", "main.rb"], tmp_path).strip() == EXPECTED


PYTHON_MAIN = """from acme.billing.v1 import invoice_pb2, invoice_pb2_grpc
from acme.common.v1 import money_pb2

invoice = invoice_pb2.Invoice(
    id="inv-1",
    total=money_pb2.Money(currency=money_pb2.CURRENCY_EUR, units=42, labels={"k": "v"}),
    email="a@b.c",
    lines={"a": money_pb2.Money(units=1)},
)
invoice.due.seconds = 1700000000
parsed = invoice_pb2.Invoice.FromString(invoice.SerializeToString())
assert invoice_pb2_grpc.InvoicesStub
service = invoice_pb2.DESCRIPTOR.services_by_name["Invoices"].full_name
print(parsed.id, parsed.total.units, parsed.email, parsed.lines["a"].units, service)
"""


def test_python_imports_and_runs(owner: Client, server: ServerThread, tmp_path: Path) -> None:
    files = generate(owner, server, "python", tmp_path)
    assert "acme/billing/v1/invoice_pb2_grpc.py" in files
    (tmp_path / "main.py").write_text(PYTHON_MAIN)
    assert run([sys.executable, "main.py"], tmp_path).strip() == EXPECTED


# Languages whose output nothing here builds (no compiler packaged, or none installed by
# CI): what they generate is checked by name.
GENERATED_ONLY = {
    "php": ["Acme/Billing/V1/Invoice.php", "Acme/Billing/V1/InvoicesClient.php"],
    "csharp": ["Acme/Billing/V1/Invoice.cs", "Acme/Common/V1/Money.cs"],
    "kotlin": ["acme/billing/v1/InvoiceKt.kt", "acme/billing/v1/InvoiceOuterClass.java"],
    "objc": ["acme/billing/v1/Invoice.pbobjc.h", "acme/billing/v1/Invoice.pbobjc.m"],
    "rust": ["invoice.rs", "money.rs"],
}


@pytest.mark.parametrize("language", sorted(GENERATED_ONLY))
def test_languages_without_a_toolchain_here_generate_their_files(
    owner: Client, server: ServerThread, tmp_path: Path, language: str
) -> None:
    files = generate(owner, server, language, tmp_path)
    for expected in GENERATED_ONLY[language]:
        assert expected in files
        assert (
            "Invoice" in (tmp_path / expected).read_text()
            or "Money" in (tmp_path / expected).read_text()
        )


def test_go_import_paths_follow_the_version_even_when_two_versions_have_the_same_files(
    owner: Client, server: ServerThread
) -> None:
    """The import path comes from org/module/version, which the files' digest does not
    hold: a build of one version must not answer another's from the cache."""
    if not server.server.compiler.toolchain.available("go"):
        pytest.skip("the server cannot generate go (make generators)")
    create_org(owner, "acme")
    create_module(owner, "acme", "plain")
    proto = 'syntax = "proto3";\npackage plain.v1;\nmessage P { string a = 1; }\n'
    for version in ("1.0.0", "1.0.1"):
        push(owner, "acme", "plain", version, {"plain/v1/p.proto": proto})
        request = pb.CompileVersionRequest(
            org="acme", module="plain", version=version, languages=["go"]
        )
        (file,) = owner.modules.CompileVersion(request).files
        assert file.path == f"spoke.gen/go/acme/plain/{version}/plain/v1/p.pb.go"
        assert "package plainv1" in file.content

# Two commands on a fresh machine: `make run` serves, `make test` tests.
# Everything else is installed on first use into .venv/ (Python) and node_modules/ (buf).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := node_modules/.bin/buf
PROTOS := $(wildcard protos/spoke/v1/*.proto)

.PHONY: run test lint generate check-generated check-breaking migrate bench bench-quick h2load db-trips install clean \
	generators toolchains

# Metrics on 127.0.0.1:9464 unless SPOKE_METRICS_LISTEN says otherwise (set it empty for none).
run: $(STAMP) generators
	SPOKE_METRICS_LISTEN=$${SPOKE_METRICS_LISTEN-127.0.0.1:9464} $(VENV)/bin/spoke-grpc serve

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BUF):
	npm install --silent --no-save --no-package-lock --no-audit --no-fund @bufbuild/buf@$(BUF_VERSION)

# Regenerates generated/ from protos/. Never edit generated/ by hand.
generate: $(STAMP)
	rm -rf generated/spoke
	mkdir -p generated
	$(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=generated --pyi_out=generated --grpc_python_out=generated $(PROTOS)
	touch generated/spoke/__init__.py generated/spoke/v1/__init__.py

# Fails when generated/ differs from what `make generate` makes.
check-generated: generate
	@git diff --exit-code --stat -- generated/ && test -z "$$(git status --porcelain -- generated/)" \
		|| (echo "generated/ is stale: run 'make generate' and commit" >&2; exit 1)

# Fails when a commit changed protos/ in a way `buf breaking` (WIRE_JSON) reports against its
# parent, unless its message has a line `Breaking-Proto-Change: <reason>` (see the README).
check-breaking: $(BUF)
	BUF=$(BUF) .ci/check-proto-compat

lint: $(STAMP) $(BUF)
	cd protos && ../$(BUF) lint
	$(VENV)/bin/ruff check spoke_grpc tests benchmarks
	$(VENV)/bin/ruff format --check spoke_grpc tests benchmarks
	$(VENV)/bin/mypy

# Throughput under concurrency as ratios against a bare grpc.aio echo server in the same run
# (under 10 minutes on 2 cores), then sequential latency; bench-quick is a smaller run (<1 min).
# The read rows are measured with h2load too when it is there: installed here as root with
# apt-get (Debian's nghttp2-client), else its rows are skipped.
bench: $(STAMP) h2load
	PYTHONPATH=. $(PY) benchmarks/throughput.py
	$(PY) benchmarks/rpc_latency.py

bench-quick: $(STAMP) h2load
	PYTHONPATH=. $(PY) benchmarks/throughput.py --quick

h2load:
	@command -v h2load >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q nghttp2-client >/dev/null; } \
		|| echo "h2load is not installed (Debian: nghttp2-client): its bench rows are skipped"

# The code generators CompileVersion runs for every language but Python (grpcio-tools, in
# .venv, has those): Debian's protoc, gRPC plugins, Go and Rust plugins, and bubblewrap for
# their sandbox, installed here as root with apt-get (else the missing ones are named and
# their languages are unavailable: ListLanguages shows which), and npm's protoc-gen-es
# (TypeScript, JavaScript) under .generators/, where the server looks first.
GENERATOR_PACKAGES := protobuf-compiler libprotobuf-dev protobuf-compiler-grpc \
	protobuf-compiler-grpc-java-plugin protoc-gen-go protoc-gen-go-grpc protobuf-codegen bubblewrap
PROTOC_GEN_ES_VERSION := 2.13.0
# What tests/test_generated_code.py builds the generated code with (CI installs them all).
TOOLCHAIN_PACKAGES := g++ pkg-config libgrpc++-dev libprotobuf-dev default-jdk-headless \
	libprotobuf-java libgrpc-java golang-go golang-google-protobuf-dev golang-google-grpc-dev \
	ruby ruby-google-protobuf ruby-grpc
TYPESCRIPT_VERSION := 5.9.3
CONNECT_VERSION := 2.3.0

generators: .generators/node_modules/.bin/protoc-gen-es
	@scripts/apt-packages $(GENERATOR_PACKAGES) \
		|| echo "some code generators are missing (above): their languages are unavailable"

.generators/node_modules/.bin/protoc-gen-es:
	@command -v npm >/dev/null && npm install --silent --prefix .generators --no-save \
		--no-package-lock --no-audit --no-fund @bufbuild/protoc-gen-es@$(PROTOC_GEN_ES_VERSION) \
		|| echo "protoc-gen-es is not installed (needs npm and Node.js 20): typescript and" \
			"javascript are unavailable"

toolchains: generators .toolchains/node_modules/.bin/tsc
	@scripts/apt-packages $(TOOLCHAIN_PACKAGES) \
		|| echo "some toolchains are missing (above): their build tests skip"

.toolchains/node_modules/.bin/tsc:
	@command -v npm >/dev/null && npm install --silent --prefix .toolchains --no-save \
		--no-package-lock --no-audit --no-fund typescript@$(TYPESCRIPT_VERSION) \
		@bufbuild/protobuf@$(PROTOC_GEN_ES_VERSION) @connectrpc/connect@$(CONNECT_VERSION) \
		|| echo "tsc is not installed (needs npm): the TypeScript build test skips"

# Pool checkouts, statements, round trips and transactions per call, counted on the wire.
db-trips: $(STAMP)
	PYTHONPATH=. $(PY) benchmarks/db_trips.py

migrate: $(STAMP)
	$(VENV)/bin/spoke-grpc migrate

clean:
	rm -rf $(VENV) node_modules .spoke .generators .toolchains

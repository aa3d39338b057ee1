# Two commands on a fresh machine: `make run` serves, `make test` tests.
# Everything else is installed on first use into .venv/ (Python) and node_modules/ (buf).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := node_modules/.bin/buf
PROTOS := $(wildcard protos/spoke/v1/*.proto)

.PHONY: run test lint generate check-generated migrate bench db-trips install clean

run: $(STAMP)
	$(VENV)/bin/spoke-grpc serve

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

lint: $(STAMP) $(BUF)
	cd protos && ../$(BUF) lint
	$(VENV)/bin/ruff check spoke_grpc tests benchmarks
	$(VENV)/bin/ruff format --check spoke_grpc tests benchmarks
	$(VENV)/bin/mypy

# Request-path latency as ratios against a no-database baseline measured in the same run.
bench: $(STAMP)
	$(PY) benchmarks/rpc_latency.py

# Pool checkouts, statements, round trips and transactions per call, counted on the wire.
db-trips: $(STAMP)
	PYTHONPATH=. $(PY) benchmarks/db_trips.py

migrate: $(STAMP)
	$(VENV)/bin/spoke-grpc migrate

clean:
	rm -rf $(VENV) node_modules .spoke

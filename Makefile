# Three commands do all the set-up on a fresh machine: `make run`, `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TICKET_TO_INVOICE_HOME ?= $(CURDIR)/var
export PREFECT_HOME ?= $(TICKET_TO_INVOICE_HOME)/prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export GX_ANALYTICS_ENABLED ?= false

.PHONY: run serve test lint ui bench install clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ticket-to-invoice needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,tryton]'
	touch $(STAMP)

install: $(STAMP)

## Bill the sample export on embedded defaults (file-drop source, file-export ERP under var/).
run: $(STAMP)
	$(BIN)/ticket-to-invoice run

## The service on 127.0.0.1: Prefect server + UI (:4200), a worker, every deployment, automations, webhook receiver.
serve: $(STAMP)
	tests/system/install-debian-packages.sh postgresql
	$(BIN)/ticket-to-invoice serve

## Lint and run every test (unit and integration).
test: $(STAMP)
	tests/system/install-debian-packages.sh
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

## Start the Prefect server and UI on http://127.0.0.1:4200 over the runs `make run` made.
ui: $(STAMP)
	mkdir -p $(PREFECT_HOME)
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

## Benchmarks (targets in the issues; results in bench-results.json).
bench: $(STAMP)
	tests/system/install-debian-packages.sh postgresql
	$(BIN)/python -m tests.bench.run

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache

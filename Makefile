# capi-consumer developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export CAPI_CACHE_DIR ?= $(CURDIR)/.cache

.PHONY: venv lint typecheck unit test demo bench chaos soak clean

# The service (root pyproject.toml) and its developer tooling (tools/: emulator, dev stack, demo), both
# editable; the service's own wheel holds neither of the tools. The tools go second: re-installing an
# older capi-consumer, whose wheel still had the capi-emulator/capi-devstack scripts, removes them.
$(BIN)/.installed: pyproject.toml tools/pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q -c constraints.txt -e ./tools
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -ra $(PYTEST_ARGS)

demo: venv
	$(BIN)/python -m capi_devstack.demo $(ARGS)

bench: venv
	$(BIN)/python -m bench.run $(if $(QUICK),--quick,)

# Fault tests (tests/chaos, docs/development.md#fault-tests-make-chaos-make-soak): every scenario, then a
# table; the CI subset also runs inside `make test`. SCENARIOS=a,b picks some.
chaos: venv
	$(BIN)/python -m tests.chaos.run $(if $(SCENARIOS),--scenarios $(SCENARIOS),)

soak: venv
	$(BIN)/python -m tests.chaos.run --soak --minutes $(or $(MINUTES),10) --rate $(or $(RATE),2000)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

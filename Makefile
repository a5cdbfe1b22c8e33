# capi-consumer developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export CAPI_CACHE_DIR ?= $(CURDIR)/.cache

.PHONY: venv lint typecheck unit test demo bench chaos soak clean

# The service (root pyproject.toml) and its developer tooling (tools/: emulator, dev stack, demo), both
# editable; the service's own wheel holds neither of the tools. The tools go second: re-installing an
# older capi-consumer, whose wheel still had the capi-emulator/capi-devstack scripts, removes them.
define make_venv  # $(1): the interpreter, $(2): the venv directory
	$(1) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(1) -m venv $(2)
	$(2)/bin/pip install -q --upgrade pip
	$(2)/bin/pip install -q -c constraints.txt -e '.[dev]'
	$(2)/bin/pip install -q -c constraints.txt -e ./tools
	touch $(2)/bin/.installed
endef

$(BIN)/.installed: pyproject.toml tools/pyproject.toml constraints.txt
	$(call make_venv,$(PYTHON),$(VENV))

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

# BENCH_PYTHON=/usr/bin/python3.11: measure on another interpreter (its own venv, .venv-bench), e.g. an
# optimised build like the one the image ships; the report names the interpreter (docs/performance.md).
ifdef BENCH_PYTHON
bench: .venv-bench/bin/.installed
	.venv-bench/bin/python -m bench.run $(if $(QUICK),--quick,)

.venv-bench/bin/.installed: pyproject.toml tools/pyproject.toml constraints.txt
	rm -rf .venv-bench
	$(call make_venv,$(BENCH_PYTHON),.venv-bench)
else
bench: venv
	$(BIN)/python -m bench.run $(if $(QUICK),--quick,)
endif

# Fault tests (tests/chaos, docs/development.md#fault-tests-make-chaos-make-soak): every scenario, then a
# table; the CI subset also runs inside `make test`. SCENARIOS=a,b picks some.
chaos: venv
	$(BIN)/python -m tests.chaos.run $(if $(SCENARIOS),--scenarios $(SCENARIOS),)

soak: venv
	$(BIN)/python -m tests.chaos.run --soak --minutes $(or $(MINUTES),10) --rate $(or $(RATE),2000)

clean:
	rm -rf $(VENV) .venv-bench .mypy_cache .ruff_cache .pytest_cache

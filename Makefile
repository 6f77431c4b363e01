# Two commands on a fresh machine with Python 3 and pip: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean

$(VENV)/.made:
	$(PYTHON) -m venv $(VENV)
	touch $@

$(VENV)/.installed: $(VENV)/.made setup.cfg pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m zmqkit demo

test: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_ARGS)

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# mypy and import-linter read the zmqkit namespace from a tree of links (see .ci/tree).
lint: $(VENV)/.installed-dev
	$(PY) -m ruff check zmqkit patterns demos tests
	.ci/tree build/tree
	cd build/tree && $(CURDIR)/$(PY) -m mypy --config-file $(CURDIR)/pyproject.toml -p zmqkit
	cd build/tree && $(CURDIR)/$(VENV)/bin/lint-imports $(CURDIR)/pyproject.toml

bench: $(VENV)/.installed
	$(PY) -m zmqkit bench all

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis

# The long Jepsen-style check of replicated state (docs/reliability.md): CHAOS_REPLICAS replicas in
# network namespaces write for CHAOS_SECONDS while links are cut and processes killed; needs root.
CHAOS_SECONDS ?= 180
CHAOS_REPLICAS ?= 5
.PHONY: chaos
chaos: $(VENV)/.installed-test
	ZMQKIT_CHAOS_SECONDS=$(CHAOS_SECONDS) ZMQKIT_CHAOS_REPLICAS=$(CHAOS_REPLICAS) \
		$(PY) -m pytest tests/test_chaos.py -rP --timeout=3600 \
		-o faulthandler_timeout=3590 $(PYTEST_ARGS)

# The long soak: the soak test of `make test` with SOAK_SCALE times the messages per round and
# more rounds (minutes, not seconds). Fewer glibc arenas, so that RSS shows what is kept rather
# than fragmentation across threads (see tests/test_soak.py).
SOAK_SCALE ?= 20
.PHONY: soak
soak: $(VENV)/.installed-test
	MALLOC_ARENA_MAX=2 ZMQKIT_SOAK_SCALE=$(SOAK_SCALE) $(PY) -m pytest tests/test_soak.py -rP \
		--timeout=3600 -o faulthandler_timeout=3590 $(PYTEST_ARGS)

# tether: every target makes its own virtualenv; `make test` on a fresh machine is all the set-up.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The stand-in AgentScope Studio (tests/studio, Node): its npm dependencies, when node is
# here. Without node the tests that need it skip and say why.
STUDIO  := tests/studio
NPMSTAMP := $(STUDIO)/node_modules/.installed

.PHONY: all test test-agentscope check demo demo-agentscope bench verify diagram clean \
	mutants mutants-quick soak

all: check test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NPMSTAMP): $(STUDIO)/package.json $(STUDIO)/package-lock.json
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
		cd $(STUDIO) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "make: node/npm not found: the stand-in Studio tests will be skipped" >&2; \
	fi

test: $(STAMP) $(NPMSTAMP)
	$(BIN)/pytest -q

# Mutation testing (tests/mutants/): the curated semantic mutants, each must be killed,
# then mutmut over fsm/ (>= 90 % of the non-equivalent mutants killed). Long: not part of
# `make test`. `make mutants-quick` runs the curated set only (a few minutes).
MUTSTAMP := $(VENV)/.installed-mutants
$(MUTSTAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,mutants]'
	touch $@

mutants: $(MUTSTAMP)
	$(BIN)/python -m tests.mutants.run

mutants-quick: $(MUTSTAMP)
	$(BIN)/python -m tests.mutants.run --curated

# The chaos soak (tests/soak.py): 100 links x 1,000 messages in session mode against real
# `tether hub` processes behind the TCP fault proxy, 60 s of random faults, live progress.
# A short version (10 links, 10 s) runs in `make test`.
soak: $(STAMP)
	$(BIN)/python -m tests.soak --links 100 --messages 1000 --seconds 60

# The optional test through the real AgentScope package, in a virtualenv of its own (it is
# heavy: model SDKs, OpenTelemetry, numpy); not part of `make test`.
ASVENV  := .venv-agentscope
$(ASVENV)/.installed: pyproject.toml
	$(PY) -m venv $(ASVENV)
	$(ASVENV)/bin/pip install --quiet --upgrade pip
	$(ASVENV)/bin/pip install --quiet -e '.[dev]' 'agentscope==1.0.21' 'mcp>=1.13,<2' greenlet tqdm  # what 1.0.21 imports but does not pin or declare
	touch $@

test-agentscope: $(ASVENV)/.installed $(NPMSTAMP)
	TETHER_AGENTSCOPE=1 $(ASVENV)/bin/pytest -q -p no:cacheprovider tests/test_agentscope_real.py

check: $(STAMP)
	$(BIN)/ruff check fsm adapters tests models
	$(BIN)/mypy

diagram: $(STAMP)
	$(BIN)/tether diagram

demo: $(STAMP)
	$(BIN)/tether demo

demo-agentscope: $(STAMP) $(NPMSTAMP)
	$(BIN)/tether demo agentscope

bench: $(STAMP)
	$(BIN)/python -m tests.bench

# Model-check with spin: the default lifecycle (with its seeded bugs and the session
# protocol) and the two example specs; needs `spin` and `gcc` (apt-get install -y spin gcc).
verify: $(STAMP)
	$(BIN)/tether verify fsm.spec:DEFAULT_SPEC fsm.examples.authenticating:AUTH_SPEC \
	    fsm.examples.paused:PAUSED_SPEC

clean:
	rm -rf $(VENV) $(ASVENV) mutants .mypy_cache .ruff_cache .pytest_cache .hypothesis $(STUDIO)/node_modules

# openpole: `make demo` runs a simulated pole, `make test` runs the whole suite.
# Both create .venv with everything they need; DURATION=S stops the demo after S seconds, FLASH=1
# flashes its nodes through virtual ESP32 boards first, CITY=1 sends the pole's batches to a city's
# store (NATS JetStream, PostgreSQL, the SensorThings API and its live feed) on this machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The independent CDDL validator (zcbor) needs cbor2 < 6, openpole cbor2 >= 6.1.4: a venv of its own.
CDDL_VENV := .venv-cddl
DURATION ?= 0
NODES ?= 3
FLASH ?=
CITY ?=
PYTEST_ARGS ?=
# make test runs the suite on pytest-xdist workers. Four on a 2-core machine: the tests mostly wait
# on subprocesses (brokers, PostgreSQL, NATS, MicroPython VMs, a browser), so four beat two (the
# README's Testing section has the figures). loadgroup keeps a module's tests that share a
# module-scoped fixture on one worker (tests/conftest.py). XDIST= runs it in one process; pytest
# run by hand (a file, a test) runs in one process unless given -n.
XDIST ?= -n 4 --dist loadgroup

.PHONY: install test demo specs screenshots clean

install: $(VENV)/.installed $(CDDL_VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "openpole needs Python 3.11 or newer (this is " + sys.version.split()[0] + "): install python3.11 and run make PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "cannot create $(VENV): install the venv module (apt-get install python3-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

$(CDDL_VENV)/.installed: tools/spec/cddl/requirements.txt
	@test -x $(CDDL_VENV)/bin/python || $(PYTHON) -m venv $(CDDL_VENV) || { echo "cannot create $(CDDL_VENV): install the venv module (apt-get install python3-venv)"; exit 1; }
	$(CDDL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tools/spec/cddl/requirements.txt
	@touch $@

# The services first (.ci/services): a machine without them hears so at once, not after minutes of
# pip installs.
test:
	@bash .ci/services
	@$(MAKE) --no-print-directory install
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

demo: install
	$(BIN)/openpole sim demo --nodes $(NODES) --duration $(DURATION) $(if $(FLASH),--flash) $(if $(CITY),--city)

# The README's pictures of the pole's page, taken by its browser test (tests/test_page.py) after five
# minutes of data.
screenshots:
	@bash .ci/services
	@$(MAKE) --no-print-directory install
	OPENPOLE_SCREENSHOTS=docs/screenshots OPENPOLE_SCREENSHOTS_AFTER_S=300 $(BIN)/python -m pytest -q tests/test_page.py -k browser

specs: install
	$(BIN)/openpole spec check
	$(BIN)/openpole spec build

clean:
	rm -rf $(VENV) $(CDDL_VENV) build .pytest_cache

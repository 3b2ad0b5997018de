# make run        - set up everything (venv, dev config, CA, demo users) and run the whole stack
# make test       - install the test dependencies and run the whole test suite (minutes: every
#                   twistd-process test, the end-to-end clients when installed)
# make test-fast  - the fast loop (under a minute): leaves out the tests marked "process" (they
#                   start a twistd process; tests/conftest.py marks them), "slow" and "thunderbird";
#                   protocol tests run in process (tests/support/inprocess.py)
# make dist       - the sdist and the wheel in dist/ (python -m build), for 'pip install' on a server
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := $(shell find mailstack twisted -name '*.py') pyproject.toml setup.py etc/mailstack.toml systemd/mailstack.service

.PHONY: run test test-fast install bench dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# A real (non-editable) install: exactly what 'pip install .' gives an administrator.
$(VENV)/.installed: $(BIN)/python $(SOURCES)
	$(BIN)/pip install -q ".[test]"
	@touch $@

install: $(VENV)/.installed

var/mailstack.toml: | $(VENV)/.installed
	$(BIN)/mailstack init --dev --dir var

run: $(VENV)/.installed var/mailstack.toml
	$(BIN)/twistd --nodaemon --pidfile= mailstack --config var/mailstack.toml

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not process and not slow and not thunderbird"

bench: $(VENV)/.installed
	$(BIN)/python bench/store_open.py

dist: $(VENV)/.installed
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) build dist *.egg-info

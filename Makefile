# tracker-daemon developer commands. `make run` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup run test lint typecheck demo bench clean

setup: $(STAMP)
	@:  # up to date: say nothing (not make's "Nothing to be done")

# Re-installs only when a pyproject changes, so a second `make setup` takes well under a second.
# Quiet by design: errors, then one summary line (pip -q -q shows errors only).
PIP_INSTALL := PIP_ROOT_USER_ACTION=ignore $(BIN)/python -m pip install -q -q --disable-pip-version-check
$(STAMP): pyproject.toml client/pyproject.toml client/tracker_client/VERSION
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP_INSTALL) --upgrade pip
	@$(PIP_INSTALL) -e ./client -e '.[test]'
	@touch $(STAMP)
	@echo "set-up done: tracker-daemon $$(cat client/tracker_client/VERSION) in $(VENV) (make run starts it)"

run: setup
	$(BIN)/tracker-daemon run $(ARGS)

# The suite, after the house-style gates (ruff, mypy --strict) so style drift fails CI too.
test: setup lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check tracker_daemon client tests
	$(BIN)/ruff format --check tracker_daemon client tests

typecheck: setup
	$(BIN)/mypy tracker_daemon client/tracker_client

demo: setup
	$(BIN)/python -m tracker_daemon.demo $(ARGS)

bench: setup
	$(BIN)/tracker-daemon bench $(ARGS)

clean:
	rm -rf $(VENV) .venv-mlflow2 .venv-mlflow2.lock .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info \
		client/build client/dist client/*.egg-info

# Installs the systemd system service (as root): the unit with ExecStart= set to this venv's
# tracker-daemon, the sysusers file (then systemd-sysusers), /etc/tracker-daemon/config.toml if
# absent, and daemon-reload when systemd runs. Idempotent. DESTDIR=/some/tree installs files only.
.PHONY: install-systemd
install-systemd:
	EXE="$(abspath $(BIN))/tracker-daemon" DESTDIR="$(DESTDIR)" sh systemd/install.sh

# tracker-daemon developer commands. `make run` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup run test lint typecheck demo bench clean lock compat

setup: $(STAMP)
	@:  # up to date: say nothing (not make's "Nothing to be done")

# Installs the committed lock (constraints.txt: every package of the tree at an exact version,
# pip and setuptools included; the pyprojects keep ranges), so the same commit installs the same
# versions next month. Re-installs only when a pyproject or the lock changes, so a second
# `make setup` takes well under a second. Quiet by design: one line saying what it installs
# (so a first run does not look hung), errors, then one summary line.
LOCK        := constraints.txt
PIP_INSTALL := PIP_ROOT_USER_ACTION=ignore $(BIN)/python -m pip install -q -q --disable-pip-version-check
$(STAMP): pyproject.toml client/pyproject.toml client/tracker_client/VERSION $(LOCK)
	@echo "installing the locked dependencies ($(LOCK)) into $(VENV) (first time: a minute or two)..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP_INSTALL) -c $(LOCK) pip setuptools wheel
	@$(PIP_INSTALL) -c $(LOCK) --no-build-isolation -e ./client -e '.[test,postgres]'
	@touch $(STAMP)
	@echo "set-up done: tracker-daemon $$(cat client/tracker_client/VERSION) in $(VENV) (make run starts it)"

run: setup
	$(BIN)/tracker-daemon run $(ARGS)

# The suite, after the house-style gates (ruff, mypy --strict) so style drift fails CI too, and
# after the compatibility set on the oldest and the newest MLflow of the supported range (whose
# side venvs the suite then uses for stores made by those versions).
test: setup lint typecheck
	$(MAKE) --no-print-directory compat
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The compatibility set (tests marked compat) against the oldest supported MLflow (the floor in
# pyproject.toml) and the newest the package index serves, each in a cached side venv
# (.venv-mlflow-VERSION). COMPAT_VERSIONS="3.4.0 3.18.0" chooses the versions.
compat: setup
	$(BIN)/python -m tests.compat $(COMPAT_VERSIONS)

# Regenerates the lock from the pyprojects' ranges: a fresh venv, the newest versions they allow,
# then pip freeze. Commit constraints.txt; `make setup` then installs exactly it.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
	.venv-lock/bin/python -m pip install -q --disable-pip-version-check -e ./client -e '.[test,postgres]'
	{ echo "# The lock: every package make setup installs, at an exact version (pip constraints)."; \
	  echo "# Regenerate with make lock (README: Upgrading dependencies); do not edit by hand."; \
	  echo "# Made by make lock with $$(.venv-lock/bin/python -V) on $$(uname -sm)."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable --disable-pip-version-check; \
	} > $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK): $$(grep -vc '^#' $(LOCK)) packages"

lint: setup
	$(BIN)/ruff check tracker_daemon client tests
	$(BIN)/ruff format --check tracker_daemon client tests
	$(BIN)/lint-imports --no-cache --no-logo

typecheck: setup
	$(BIN)/mypy tracker_daemon client/tracker_client

demo: setup
	$(BIN)/python -m tracker_daemon.demo $(ARGS)

bench: setup
	$(BIN)/tracker-daemon bench $(ARGS)

clean:
	rm -rf $(VENV) .venv-mlflow2 .venv-mlflow2.lock .venv-mlflow-* .venv-lock .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info \
		client/build client/dist client/*.egg-info

# Installs the systemd system service (as root): the unit with ExecStart= set to this venv's
# tracker-daemon, the sysusers file (then systemd-sysusers), /etc/tracker-daemon/config.toml if
# absent, and daemon-reload when systemd runs. Idempotent. DESTDIR=/some/tree installs files only.
.PHONY: install-systemd
install-systemd:
	EXE="$(abspath $(BIN))/tracker-daemon" DESTDIR="$(DESTDIR)" sh systemd/install.sh

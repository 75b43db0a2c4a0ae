"""The ``mlflow ui`` hint: bare ``mlflow`` only when PATH resolves to this environment's MLflow,
else ``<this python> -m mlflow ui`` (runnable in any shell). PATH lookup is injected (a pure
unit); the scripts it returns are real files."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from tracker_daemon.ops.hints import mlflow_ui_command

URI = "sqlite:////var/lib/tracker-daemon/mlflow.db"


def test_mlflow_next_to_this_interpreter_is_used_bare(tmp_path: Path) -> None:
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "mlflow").write_text("#!/bin/sh\n")
    python = str(bindir / "python")
    cmd = mlflow_ui_command(URI, which=lambda name: str(bindir / name), executable=python)
    assert cmd == f"mlflow ui --backend-store-uri {URI}"


def test_mlflow_elsewhere_running_this_interpreter_is_used_bare(tmp_path: Path) -> None:
    # e.g. a pipx/venv script symlinked into ~/.local/bin whose #! is this interpreter
    script = tmp_path / "mlflow"
    script.write_text(f"#!{sys.executable}\nimport mlflow.cli\n")
    cmd = mlflow_ui_command(URI, which=lambda name: str(script), executable=sys.executable)
    assert cmd == f"mlflow ui --backend-store-uri {URI}"


def test_another_mlflow_on_path_is_not_used(tmp_path: Path) -> None:
    script = tmp_path / "other" / "mlflow"
    script.parent.mkdir()
    script.write_text("#!/usr/bin/python3.9\nimport mlflow.cli\n")
    python = str(tmp_path / "venv" / "bin" / "python")
    cmd = mlflow_ui_command(URI, which=lambda name: str(script), executable=python)
    assert cmd == f"{python} -m mlflow ui --backend-store-uri {URI}"


def test_no_mlflow_on_path_gives_a_runnable_command() -> None:
    cmd = mlflow_ui_command(URI, which=lambda name: None)
    assert cmd == f"{sys.executable} -m mlflow ui --backend-store-uri {URI}"
    # the command it names runs this environment's MLflow (its ui subcommand exists)
    argv = shlex.split(cmd)
    res = subprocess.run([*argv[:3], "ui", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--backend-store-uri" in res.stdout


def test_paths_with_spaces_and_redacted_passwords_are_quoted(tmp_path: Path) -> None:
    python = "/opt/my env/bin/python"
    uri = "postgresql://u:***@db/mlflow"
    cmd = mlflow_ui_command(uri, which=lambda name: None, executable=python)
    assert shlex.split(cmd) == [python, "-m", "mlflow", "ui", "--backend-store-uri", uri]

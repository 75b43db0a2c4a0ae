"""One version for both distributions: client/tracker_client/VERSION is the single source that
both pyproject.toml files read, both packages report and the daemon's client pin must equal."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tracker_client
import tracker_daemon

REPO = Path(__file__).resolve().parents[2]
VERSION = (REPO / "client" / "tracker_client" / "VERSION").read_text(encoding="ascii").strip()


def _pyproject(path: Path) -> dict[str, object]:
    with path.open("rb") as f:
        return tomllib.load(f)


def test_version_file_holds_one_release_number() -> None:
    parts = VERSION.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts), VERSION


def test_both_packages_report_the_shared_version() -> None:
    assert tracker_client.__version__ == VERSION
    assert tracker_daemon.__version__ == VERSION


def test_both_pyprojects_read_the_version_from_the_same_file() -> None:
    daemon = _pyproject(REPO / "pyproject.toml")
    client = _pyproject(REPO / "client" / "pyproject.toml")
    for data, root in ((daemon, REPO), (client, REPO / "client")):
        project = data["project"]
        assert isinstance(project, dict)
        assert "version" not in project
        assert project["dynamic"] == ["version"]
        dynamic = data["tool"]["setuptools"]["dynamic"]  # type: ignore[index]
        assert (root / dynamic["version"]["file"]).resolve() == (
            REPO / "client" / "tracker_client" / "VERSION"
        )


def test_daemon_pins_the_client_of_the_same_version() -> None:
    deps = _pyproject(REPO / "pyproject.toml")["project"]["dependencies"]  # type: ignore[index]
    pins = [d for d in deps if d.startswith("tracker-client")]
    assert pins == [f"tracker-client=={VERSION}"]


def test_both_distributions_carry_the_apache_licence() -> None:
    top = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in top and "Version 2.0, January 2004" in top
    assert "END OF TERMS AND CONDITIONS" in top
    assert (REPO / "client" / "LICENSE").read_text(encoding="utf-8") == top
    for path in (REPO / "pyproject.toml", REPO / "client" / "pyproject.toml"):
        project = _pyproject(path)["project"]
        assert isinstance(project, dict)
        assert project["license"] == "Apache-2.0"
        assert project["license-files"] == ["LICENSE"]


def test_one_mlflow_range_in_both_pyprojects_the_lock_and_the_readme() -> None:
    """The range make compat proves (tests/compat.py reads the daemon's) is the one declared
    everywhere, and the lock's MLflow is inside it."""
    from importlib import metadata

    from packaging.requirements import Requirement

    daemon: Any = _pyproject(REPO / "pyproject.toml")["project"]
    client: Any = _pyproject(REPO / "client" / "pyproject.toml")["project"]
    ranges = {Requirement(d).name: Requirement(d).specifier for d in daemon["dependencies"]}
    plugin = Requirement(client["optional-dependencies"]["mlflow"][0])
    assert plugin.name == "mlflow-skinny" and plugin.specifier == ranges["mlflow"]
    locked = (REPO / "constraints.txt").read_text().splitlines()
    assert f"mlflow=={metadata.version('mlflow')}" in locked  # this venv is the lock's
    assert ranges["mlflow"].contains(metadata.version("mlflow"))
    floor = next(s.version for s in ranges["mlflow"] if s.operator == ">=")
    readme = (REPO / "README.md").read_text()
    assert f"`mlflow>={floor},<4`" in readme and f"MLflow {floor} or newer 3.x" in readme

"""The published artefacts: ``python -m build`` makes an sdist and a wheel of both distributions,
the client wheel works in a fresh venv without MLflow (a run logged through a real daemon lands in
its store), and the two wheels installed together give a working ``tracker-daemon`` command.

Every venv here is new (``python -m venv``) and installs from the configured package index, so a
dependency missing from a pyproject fails these tests rather than being hidden by the repo venv.
"""

from __future__ import annotations

import email
import email.message
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.support.daemon import REPO, running_daemon

pytestmark = pytest.mark.integration

VERSION = (REPO / "client" / "tracker_client" / "VERSION").read_text(encoding="ascii").strip()
CLIENT_WHEEL = f"tracker_client-{VERSION}-py3-none-any.whl"
DAEMON_WHEEL = f"tracker_daemon-{VERSION}-py3-none-any.whl"

# Runs in the fresh client-only venv: logs one run through the daemon and prints what it logged.
CLIENT_SCRIPT = """
import importlib.util, json, sys
import tracker_client
assert importlib.util.find_spec("mlflow") is None, "mlflow must not be installed here"
tracker = tracker_client.connect(sys.argv[1])
with tracker.start_run(experiment="wheel", run_name="from-wheel") as run:
    run.log_params({"lr": 0.1, "batch": 64})
    run.set_tag("source", "client wheel")
    for step in range(50):
        run.log_metric("loss", 1.0 / (step + 1), step=step)
print(json.dumps({"run_id": run.run_id, "file": tracker_client.__file__,
                  "version": tracker_client.__version__, "mlflow": "mlflow" in sys.modules}))
"""


CLASSIFIERS = [
    "Development Status :: 4 - Beta",
    "Operating System :: POSIX :: Linux",
    "Programming Language :: Python :: 3",
    "Programming Language :: Python :: 3.11",
    "Topic :: Scientific/Engineering :: Artificial Intelligence",
    "Topic :: System :: Logging",
]
CLIENT_README = REPO / "client" / "README.md"


def _metadata(wheel: Path) -> email.message.Message:
    """The wheel's METADATA, parsed (headers, and the long description as the body)."""
    with zipfile.ZipFile(wheel) as zf:
        [name] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_string(zf.read(name).decode("utf-8"))


def _env() -> dict[str, str]:
    """This environment without anything that would put the repo's packages on sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_DAEMON_")}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_CURRENT_TEST", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    env["PIP_ROOT_USER_ACTION"] = "ignore"
    return env


def _run(args: list[str | Path], cwd: Path, timeout: float) -> str:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _fresh_venv(path: Path, *wheels: Path, timeout: float) -> Path:
    """A new venv at ``path`` with ``wheels`` installed with their dependencies; its python."""
    _run([sys.executable, "-m", "venv", path], cwd=path.parent, timeout=120)
    python = path / "bin" / "python"
    pip: list[str | Path] = [
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--no-compile",
    ]
    _run([*pip, "--find-links", wheels[0].parent, *wheels], cwd=path.parent, timeout=timeout)
    return python


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel of both distributions, built the way a release is: ``python -m build``
    (isolated, so setuptools comes from the index at the version the pyprojects require)."""
    out = tmp_path_factory.mktemp("dist")
    for source in (REPO / "client", REPO):
        _run([sys.executable, "-m", "build", "--outdir", out, source], cwd=REPO, timeout=300)
    return out


@pytest.mark.timeout(420)
def test_build_makes_sdist_and_wheel_of_both_with_licence_and_shared_version(dist: Path) -> None:
    assert sorted(p.name for p in dist.iterdir()) == sorted(
        [
            CLIENT_WHEEL,
            DAEMON_WHEEL,
            f"tracker_client-{VERSION}.tar.gz",
            f"tracker_daemon-{VERSION}.tar.gz",
        ]
    )
    licence = (REPO / "LICENSE").read_bytes()
    for wheel, name in ((CLIENT_WHEEL, "tracker_client"), (DAEMON_WHEEL, "tracker_daemon")):
        with zipfile.ZipFile(dist / wheel) as zf:
            info = f"{name}-{VERSION}.dist-info"
            assert zf.read(f"{info}/licenses/LICENSE") == licence
            meta = zf.read(f"{info}/METADATA").decode().splitlines()
            assert f"Version: {VERSION}" in meta
            assert "License-Expression: Apache-2.0" in meta
            assert "License-File: LICENSE" in meta
            requires = [m for m in meta if m.startswith("Requires-Dist: tracker-client")]
            names = zf.namelist()
        if name == "tracker_client":
            assert requires == []
            assert "tracker_client/VERSION" in names and "tracker_client/py.typed" in names
            assert not [n for n in names if n.startswith("tracker_daemon/")]
        else:
            assert requires == [f"Requires-Dist: tracker-client=={VERSION}"]
            assert not [n for n in names if n.startswith(("tracker_client/", "tests/"))]
    for sdist in (f"tracker_client-{VERSION}.tar.gz", f"tracker_daemon-{VERSION}.tar.gz"):
        with tarfile.open(dist / sdist) as tf:
            root = sdist.removesuffix(".tar.gz")
            member = tf.extractfile(f"{root}/LICENSE")
            assert member is not None and member.read() == licence


@pytest.mark.timeout(420)
def test_both_wheels_carry_authors_classifiers_and_their_own_long_description(dist: Path) -> None:
    for wheel, readme in ((CLIENT_WHEEL, CLIENT_README), (DAEMON_WHEEL, REPO / "README.md")):
        meta = _metadata(dist / wheel)
        assert meta["Author"] == "tracker-daemon developers", wheel
        assert meta["Maintainer"] == "tracker-daemon developers", wheel
        assert meta.get_all("Classifier") == CLASSIFIERS, wheel
        assert meta["License-Expression"] == "Apache-2.0", wheel
        # PEP 639: with License-Expression a "License ::" classifier is not allowed (setuptools
        # >= 77 refuses to build); the licence is the expression and the LICENSE file.
        assert not [c for c in meta.get_all("Classifier", []) if c.startswith("License ::")]
        # no public URL exists yet: none is invented
        assert meta.get_all("Project-URL") is None and meta["Home-page"] is None, wheel
        assert meta["Description-Content-Type"] == "text/markdown", wheel
        body = meta.get_payload()
        assert isinstance(body, str)
        assert body.strip() == readme.read_text(encoding="utf-8").strip(), wheel
    client_body = _metadata(dist / CLIENT_WHEEL).get_payload()
    assert isinstance(client_body, str)
    assert "PROTOCOL.md" in client_body and len(client_body.splitlines()) < 80
    # the sdist still ships the wire spec the README links to
    sdist = f"tracker_client-{VERSION}.tar.gz"
    with tarfile.open(dist / sdist) as tf:
        root = sdist.removesuffix(".tar.gz")
        for name in ("README.md", "PROTOCOL.md"):
            member = tf.extractfile(f"{root}/{name}")
            assert member is not None
            assert member.read() == (REPO / "client" / name).read_bytes()


def test_client_readme_usage_example_logs_a_run_through_a_daemon(tmp_path: Path) -> None:
    """The long description's example, executed as written against a real daemon."""
    text = CLIENT_README.read_text(encoding="utf-8")
    [code] = re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)
    with running_daemon(tmp_path) as d:
        env = {**_env(), "TRACKER_DAEMON_ADDRESS": d.address}
        proc = subprocess.run(
            [sys.executable, "-c", code + "print(run.run_id)\n"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.split()[-1]
    client = MlflowClient(tracking_uri=d.backend_uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "mnist"
    assert (run.info.run_name, run.info.status) == ("lr-0.1", "FINISHED")
    assert run.data.params == {"lr": "0.1", "batch_size": "64"}
    assert run.data.tags["phase"] == "train"
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(100)]


@pytest.mark.timeout(300)
def test_client_wheel_in_a_venv_without_mlflow_logs_a_run_through_a_daemon(
    dist: Path, tmp_path: Path
) -> None:
    python = _fresh_venv(tmp_path / "venv", dist / CLIENT_WHEEL, timeout=240)
    script = tmp_path / "log_run.py"
    script.write_text(CLIENT_SCRIPT)
    with running_daemon(tmp_path) as d:
        out = _run([python, script, d.address], cwd=tmp_path, timeout=120)
    res = json.loads(out.splitlines()[-1])
    assert Path(res["file"]).is_relative_to(tmp_path / "venv")  # the wheel's copy, not the repo's
    assert res["version"] == VERSION
    assert res["mlflow"] is False

    client = MlflowClient(tracking_uri=d.backend_uri)
    run = client.get_run(res["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "wheel"
    assert run.info.run_name == "from-wheel"
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "batch": "64"}
    assert run.data.tags["source"] == "client wheel"
    history = client.get_metric_history(res["run_id"], "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(50)]


@pytest.mark.timeout(600)
def test_both_wheels_installed_with_all_dependencies_run_tracker_daemon(
    dist: Path, tmp_path: Path
) -> None:
    # A full install (MLflow and everything else the daemon declares), no --no-deps: a missing
    # dependency must fail here. About 2-3 minutes, most of it unpacking MLflow's dependencies.
    python = _fresh_venv(tmp_path / "venv", dist / CLIENT_WHEEL, dist / DAEMON_WHEEL, timeout=540)
    exe = python.parent / "tracker-daemon"
    assert (
        _run([exe, "--version"], cwd=tmp_path, timeout=120).strip() == f"tracker-daemon {VERSION}"
    )
    check = "import tracker_client as c, tracker_daemon as d; print(d.__file__, c.__file__)"
    files = _run([python, "-c", check], cwd=tmp_path, timeout=120).split()
    assert [Path(f).is_relative_to(tmp_path / "venv") for f in files] == [True, True]

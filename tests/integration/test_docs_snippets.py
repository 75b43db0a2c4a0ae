"""Every code block a user is told to run in README.md, docs/*.md and client/README.md runs as
written, against a real daemon (issue 21, item 10 a, b).

How blocks are found and judged:

* A block is a fenced block (```` ```LANG ```` … ```` ``` ````), possibly indented (in a list);
  it is dedented by its fence's indentation.
* **Runnable languages** are run, each block in its own subprocess with a timeout
  (``SNIPPET_TIMEOUT_S``), against one daemon for the whole module (ipc socket in a short tmp
  dir, SQLite store), with the environment the docs tell users to set:
  ``TRACKER_DAEMON_ADDRESS`` = the daemon's address, ``MLFLOW_TRACKING_URI=tracker://`` (the
  drop-in), and the venv's ``bin`` first on ``PATH`` (``tracker-daemon``, ``mlflow``):

  - ``python``: ``python snippet.py`` in a fresh empty directory; exit 0. A block that starts a
    run must leave a new run in the store, ``FINISHED`` unless it leaves the run to the exit
    handler, and one that logs a metric a new run with metric points.
  - ``sh``: ``bash -eu`` in the repository's root (the README says "from the repository");
    exit 0. Only commands known to be harmless here are run (``SAFE_SH``: ``tracker-daemon``
    ``--help``/``--version``/``check-config``/``status``, ``export``, ``python`` reading a
    heredoc); a block with any other command is not run at all and fails unless marked, so a
    new install step or server in the docs can never be executed by the suite by accident.
  - ``toml``: written to a file and checked with ``tracker-daemon check-config --config FILE``;
    exit 0.
* **Samples** (``text``: output, directory layouts) are not run. The status sample of
  docs/operations.md is compared with a real ``tracker-daemon status`` (same row labels, in the
  same order).
* A block that must not run (installs, root-only steps, servers in the foreground, long
  measurements) carries the marker ``<!-- not-run: REASON -->`` on the line just before its fence
  (same indentation allowed). REASON must not be empty.
* A block of any other language, or a runnable block that is neither run nor marked, fails
  :func:`test_every_block_is_run_or_marked`: nothing is skipped silently. The test prints, per
  file, how many blocks were run, marked and samples.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon import REPO, Daemon, daemon_cli, daemon_env, running_daemon

pytestmark = pytest.mark.integration

SNIPPET_TIMEOUT_S = 10.0
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "client" / "README.md"]
RUNNABLE = {"python", "sh", "toml"}
SAMPLES = {"text"}
SAFE_SH: dict[str, set[str] | None] = {
    "tracker-daemon": {"--help", "--version", "check-config", "status"},
    "export": None,
    "python": {"-"},
    "python3": {"-"},
    ".venv/bin/python": {"-"},
}
MARKER = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None  # the marker's reason, or None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start = len(m["indent"]), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        assert i < len(lines), f"{path}:{start + 1}: unclosed code block"
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(prev)
        found.append(
            Block(
                path,
                start + 1,
                m["lang"],
                "\n".join(body) + "\n",
                marker["reason"] if marker else None,
            )
        )
        i += 1
    return found


def unsafe_commands(code: str) -> list[str]:
    """The commands of a shell block outside ``SAFE_SH`` (first word, and for those with a set,
    the first argument); heredoc bodies and comments are skipped, continuations joined."""
    unsafe: list[str] = []
    heredoc: str | None = None
    for line in code.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        command = line.split("#", 1)[0].strip()
        if not command:
            continue
        words = command.split()
        allowed = SAFE_SH.get(words[0], set())
        if words[0] not in SAFE_SH or (
            allowed is not None and (len(words) < 2 or words[1] not in allowed)
        ):
            unsafe.append(command)
        m = re.search(r"<<-?\s*['\"]?(\w+)", command)
        if m:
            heredoc = m.group(1)
    return unsafe


ALL = [b for doc in DOCS for b in blocks_of(doc)]
TO_RUN = [b for b in ALL if b.lang in RUNNABLE and b.not_run is None]


# ------------------------------------------------------------------ the daemon and the store


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="td-docs-"))
    try:
        with running_daemon(root) as d:
            yield d
    finally:
        shutil.rmtree(root, ignore_errors=True)


def user_env(d: Daemon, home: Path) -> dict[str, str]:
    env = daemon_env(
        {
            "TRACKER_DAEMON_ADDRESS": d.address,
            "MLFLOW_TRACKING_URI": "tracker://",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home),
        }
    )
    env.pop("XDG_STATE_HOME", None)
    return env


def runs(d: Daemon) -> dict[str, tuple[str, int]]:
    """run id -> (status, metric points) in the daemon's SQLite store."""
    db = sqlite3.connect(f"file:{d.state_dir / 'mlflow.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT r.run_uuid, r.status, (SELECT COUNT(*) FROM metrics m "
            "WHERE m.run_uuid = r.run_uuid) FROM runs r"
        ).fetchall()
    finally:
        db.close()
    return {run_id: (status, points) for run_id, status, points in rows}


def run_block(block: Block, d: Daemon, work: Path) -> subprocess.CompletedProcess[str]:
    env = user_env(d, work)
    if block.lang == "python":
        script = work / "snippet.py"
        script.write_text(block.code)
        cmd, cwd = [sys.executable, str(script)], work
    elif block.lang == "sh":
        cmd, cwd = ["bash", "-euc", block.code], REPO
    else:  # toml: the configuration file a user would write
        config = work / "config.toml"
        config.write_text(block.code)
        cmd, cwd = (
            [sys.executable, "-m", "tracker_daemon.cli", "check-config", "--config", str(config)],
            work,
        )
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT_S
    )


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("block", TO_RUN, ids=[b.name for b in TO_RUN])
def test_snippet_runs_as_written(block: Block, daemon: Daemon, tmp_path: Path) -> None:
    if block.lang == "sh":  # never run what is not known to be harmless here
        assert unsafe_commands(block.code) == [], (
            f"{block.name}: a sh block with commands this test does not run; mark it "
            "<!-- not-run: reason --> if users are not meant to run it as written"
        )
    before = runs(daemon)
    r = run_block(block, daemon, tmp_path)
    assert r.returncode == 0, (
        f"{block.name} ({block.lang}) exited {r.returncode}\n--- code\n{block.code}"
        f"--- stdout\n{r.stdout}--- stderr\n{r.stderr}"
    )
    if "start_run" not in block.code:
        return
    new = {k: v for k, v in runs(daemon).items() if k not in before}
    assert new, f"{block.name} starts a run, but no new run is in the store"
    if "log_metric" in block.code:
        assert any(points for _, points in new.values()), f"{block.name}: no metric stored {new}"
    if "with " in block.code:  # the with block ends the run: FINISHED once the process exits
        assert any(status == "FINISHED" for status, _ in new.values()), new


def test_every_block_is_run_or_marked(capsys: pytest.CaptureFixture[str]) -> None:
    problems = []
    for block in ALL:
        if block.not_run is not None and not block.not_run:
            problems.append(f"{block.name}: not-run marker without a reason")
        if block.lang not in RUNNABLE | SAMPLES and block.not_run is None:
            problems.append(
                f"{block.name}: a ```{block.lang or '(no language)'} block this test cannot run: "
                "give it a runnable language or a <!-- not-run: reason --> marker"
            )
        elif block.lang == "sh" and block.not_run is None and unsafe_commands(block.code):
            problems.append(
                f"{block.name}: a sh block with commands this test does not run "
                f"({unsafe_commands(block.code)}): mark it <!-- not-run: reason -->"
            )
    assert problems == []
    with capsys.disabled():
        for doc in DOCS:
            mine = [b for b in ALL if b.path == doc]
            run = sum(1 for b in mine if b in TO_RUN)
            marked = sum(1 for b in mine if b.not_run is not None)
            print(
                f"\n{doc.relative_to(REPO)}: {run} run, {marked} marked not-run, "
                f"{len(mine) - run - marked} samples",
                end="",
            )
    # the parser found the blocks the docs are known to have: it cannot silently find none
    assert len(TO_RUN) >= 8, [b.name for b in TO_RUN]
    assert {b.lang for b in TO_RUN} == RUNNABLE


def test_the_first_run_lands_in_the_store(daemon: Daemon, tmp_path: Path) -> None:
    """The README's "Your first run" block logs experiment hello, run first, FINISHED, with
    its param and 100 points of loss."""
    (block,) = [b for b in TO_RUN if b.path.name == "README.md" and 'run_name="first"' in b.code]
    r = run_block(block, daemon, tmp_path)
    assert r.returncode == 0, r.stderr
    db = sqlite3.connect(f"file:{daemon.state_dir / 'mlflow.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT r.status, (SELECT COUNT(*) FROM metrics m WHERE m.run_uuid = r.run_uuid "
            "AND m.key = 'loss'), (SELECT value FROM params p WHERE p.run_uuid = r.run_uuid "
            "AND p.key = 'lr') FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
            "WHERE e.name = 'hello' AND r.name = 'first'"
        ).fetchall()
    finally:
        db.close()
    assert rows and rows[-1] == ("FINISHED", 100, "0.1"), rows


def status_labels(text: str) -> list[str]:
    """The row labels of a ``tracker-daemon status`` table (not the header, not the clients)."""
    labels = []
    for line in text.splitlines()[1:]:
        m = re.match(r"^  (\S.*?)(?:\s{2,}|$)", line)
        if not m or line.lstrip().startswith("PID") or re.match(r"^\s+\d+\s", line):
            continue
        labels.append(m.group(1))
    return labels


def test_the_status_sample_has_the_rows_of_a_real_status(daemon: Daemon) -> None:
    """docs/operations.md's status sample shows the rows a real daemon prints, in its order."""
    (sample,) = [
        b
        for b in ALL
        if b.path.name == "operations.md"
        and b.lang == "text"
        and b.code.startswith("tracker-daemon ")
    ]
    r = daemon_cli("status", "--address", daemon.address, timeout=30)
    assert r.returncode == 0, r.stderr
    real = status_labels(r.stdout)
    assert "sink" in real and "backend" in real, r.stdout
    assert status_labels(sample.code) == real, f"sample:\n{sample.code}\nreal:\n{r.stdout}"

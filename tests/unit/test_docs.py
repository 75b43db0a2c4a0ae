"""The documentation's links and the README's first screens.

README.md is the entry point: its first 150 lines take a new user from a fresh clone to a run in
the MLflow UI, and the reference material lives in ``docs/*.md``. These tests check that every
relative link in README.md, docs/*.md and client/PROTOCOL.md names an existing file and, with a
``#fragment``, a heading of that file under GitHub's anchor rules (lowercase, punctuation other
than ``-`` and ``_`` dropped, each space a ``-``, ``-1``, ``-2`` … for repeated headings); that the
README's first 150 lines hold the two commands, the quick start and the ``mlflow ui`` step; and
that the configuration reference names every setting of ``Config``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tracker_daemon.config import Config

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
CHECKED = [
    ROOT / "README.md",
    ROOT / "client" / "README.md",
    ROOT / "client" / "PROTOCOL.md",
    *DOCS,
]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"`+[^`]*`+")
# [text](target) or [text](target "title"); images too. Nested brackets in the text are rare
# here and not needed.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading text (before de-duplication)."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)  # code spans keep their text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags go
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub generates for the headings of a markdown file."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = github_anchor(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link outside code, in order."""
    out: list[tuple[int, str]] = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        prose = _INLINE_CODE.sub("", line)
        out.extend((number, target) for target in _LINK.findall(prose))
        definition = _REFERENCE_DEF.match(prose)
        if definition is not None:
            out.append((number, definition.group(1)))
    return out


def broken_links(path: Path) -> list[str]:
    """Relative links of one file whose file or anchor does not exist, as 'file:line: target'."""
    problems: list[str] = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto:, …
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not linked.exists():
            problems.append(f"{where} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            problems.append(f"{where} (no such heading)")
    return problems


def test_github_anchor_rules() -> None:
    assert github_anchor("Running as a service (systemd)") == "running-as-a-service-systemd"
    assert github_anchor("When no daemon answers: offline runs") == (
        "when-no-daemon-answers-offline-runs"
    )
    assert github_anchor("Performance (tracker-daemon bench)") == "performance-tracker-daemon-bench"
    assert github_anchor("5.8 `call` and `result`") == "58-call-and-result"
    assert github_anchor("snake_case stays") == "snake_case-stays"


def test_anchors_skip_code_and_number_repeats(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("# Title\n\n```sh\n# a shell comment\n```\n\n## Notes\n\n## Notes\n")
    assert anchors(doc) == {"title", "notes", "notes-1"}


def test_broken_links_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# A\n\n## Here\n")
    doc = tmp_path / "b.md"
    doc.write_text(
        "# B\n\n[ok](a.md#here) [self](#b) [web](https://example.com/#x) `[code](nope.md)`\n"
        "[gone](missing.md) [bad](a.md#there) [bad self](#nowhere)\n"
        "```\n[fenced](missing.md)\n```\n"
    )
    assert broken_links(doc) == [
        "b.md:4: missing.md (no such file)",
        "b.md:4: a.md#there (no such heading)",
        "b.md:4: #nowhere (no such heading)",
    ]


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    assert path.exists()
    assert broken_links(path) == []


def test_docs_exist_and_readme_links_each() -> None:
    # docs/_*.md: fragments to be spliced into another page, not pages of their own
    names = {p.name for p in DOCS if not p.name.startswith("_")}
    assert {
        "architecture.md",
        "client.md",
        "configuration.md",
        "durability.md",
        "limits.md",
        "multi-host.md",
        "operations.md",
        "performance.md",
        "sql-writer.md",
    } <= names
    readme_targets = {t.partition("#")[0] for _, t in links(ROOT / "README.md")}
    assert {f"docs/{name}" for name in names} <= readme_targets


def test_readme_first_screens_get_a_new_user_to_the_mlflow_ui() -> None:
    head = "\n".join(
        (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:150],
    )
    assert "make run" in head
    assert "make test" in head
    assert "## Quick start for a training script" in head
    assert "import tracker_client" in head
    assert "start_run(" in head
    assert "log_metric(" in head
    assert "mlflow ui --backend-store-uri" in head


def test_configuration_reference_names_every_setting() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = {m.group(1) for m in re.finditer(r"^\| `([a-z_]+)` \|", text, re.MULTILINE)}
    assert rows == {field.name for field in dataclasses.fields(Config)}


def test_module_map_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    mapped = set(re.findall(r"^\| `([\w/]+\.py)` \|", text, re.MULTILINE))
    modules = {
        str(path.relative_to(ROOT))
        for package in (ROOT / "tracker_daemon", ROOT / "client" / "tracker_client")
        for path in package.rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"}
    }
    modules.add("client/tracker_client/__init__.py")  # the client's public API lives there
    assert sorted(modules - mapped) == [], "modules missing from docs/architecture.md's module map"
    assert sorted(mapped - modules) == [], "module map rows for files that do not exist"

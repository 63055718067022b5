"""The project speaks from its own documents: what the code and tests cite is in the repository.

Every ``docs/<name>.md#<anchor>`` cited in code, tests, the sandbox and the README names a document of
``docs/`` and one of its headings (GitHub's heading anchors), and nothing cites the team's working notes that
are not part of the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"docs/([a-z0-9-]+\.md)(?:#([a-z0-9_-]+))?")
OUTSIDE = re.compile(
    r"\b(?:DESIGN|CLINICAL|CONTRACT)\.md\b|clinical-evidence|\.\./shared|\bissue \d+\b", re.I
)


def sources() -> list[Path]:
    found: list[Path] = []
    for folder in ("smart_app", "launch", "tests", "benchmarks", "fhir_profiles"):
        found += [p for p in (ROOT / folder).rglob("*.py") if "node_modules" not in p.parts]
    found += [p for p in (ROOT / "smart_app").rglob("*.html")]
    return sorted([*found, ROOT / "README.md", ROOT / "Makefile"])


def anchors(document: Path) -> set[str]:
    """GitHub's anchors of a Markdown document's headings: lower case, no punctuation, dashes for spaces."""
    out = set()
    for line in document.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_citations_name_documents_and_headings_that_exist(path: Path) -> None:
    if path == Path(__file__):
        return
    text = path.read_text(encoding="utf-8")
    for name, anchor in CITED.findall(text):
        document = ROOT / "docs" / name
        assert document.is_file(), f"{path.name} cites docs/{name}, which does not exist"
        if anchor:
            assert anchor in anchors(document), f"{path.name} cites docs/{name}#{anchor}: no such heading"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_cites_documents_outside_the_repository(path: Path) -> None:
    if path == Path(__file__):
        return
    hits = [m.group(0) for m in OUTSIDE.finditer(path.read_text(encoding="utf-8"))]
    assert hits == [], f"{path.name} cites {hits}"

"""The documentation stands alone: it points only at files a user of the repository has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    p
    for pattern in ("*.md", "docs/*.md", "examples/*.md", "benchmarks/*.md", "spaces/*/*.md")
    for p in ROOT.glob(pattern)
)
SOURCES = sorted(
    p
    for folder in ("gan_rewrite", "benchmarks", "examples", "spaces", "tests")
    for p in (ROOT / folder).rglob("*.py")
    if p.resolve() != Path(__file__).resolve()
)
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)
TEAM_NOTES = re.compile(r"\b(METHOD|DESIGN|STYLE|KNOWN_MODELS)\.md\b")  # the team's notes, not in the repository


def test_the_docs_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/method.md", "docs/spec.md", "examples/README.md", "benchmarks/README.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):  # a URL or an anchor on the same page
            continue
        if not (path.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {broken}"


def test_nothing_points_at_the_teams_private_notes() -> None:
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in [*DOCS, *SOURCES]
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if TEAM_NOTES.search(line)
    ]
    assert not found, "these refer to notes a user does not have; point at docs/ instead:\n" + "\n".join(found)


def test_every_solver_option_is_explained_in_the_method_page() -> None:
    """A new method or solver option must be described in docs/method.md (and its defaults with it)."""
    import inspect

    from gan_rewrite.rewrite.solve import CODE_OPTIONS, SOLVERS

    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    missing = [f'"{method}"' for method in SOLVERS if f'`"{method}"`' not in text]
    for method, solver in SOLVERS.items():
        for name, param in inspect.signature(solver).parameters.items():
            if param.kind is inspect.Parameter.KEYWORD_ONLY and f"`{name}`" not in text:
                missing.append(f"{method}: {name}" + (" (code)" if name in CODE_OPTIONS else ""))
    assert not missing, f"docs/method.md does not explain: {missing}"

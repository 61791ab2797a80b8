"""Code and docs cite only documents inside the repository; algorithm facts live in docs/algorithm.md.

The patterns below are written so that this file does not match them itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGORITHM = ROOT / "docs" / "algorithm.md"

# Research notes that never were part of the repository, and their section signs.
OUTSIDE = re.compile(r"pwm[-]spec|tdmpc2[-]spec|performance[-]notes|shared[/]research|\N{SECTION SIGN}|ecosystem\.md")
DIFFSIM_NOTE = re.compile(r"diffsim\.md")
CITED_ANCHOR = re.compile(r"algorithm\.md#([\w-]+)")
PAGE_ANCHOR = re.compile(r"\]\(#([\w-]+)\)")


def repo_files(*suffixes: str) -> list[Path]:
    """The repository's files with these suffixes, without hidden folders (.git, .venv, benchmarks/.learning),
    caches and build outputs."""
    skip = {"__pycache__", "build", "dist", "out"}
    found = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not (d.startswith(".") or d in skip or d.endswith(".egg-info"))]
        found += [Path(folder) / name for name in names if name.endswith(suffixes)]
    return sorted(found)


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """The ATX headings of a markdown text, outside fenced code blocks."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            out.append(line.lstrip("#").strip())
    return out


def test_github_anchor_matches_the_anchors_the_code_cites():
    assert github_anchor("Extraction: critic targets") == "extraction-critic-targets"
    assert github_anchor("Pre-training: PWM's recipe") == "pre-training-pwms-recipe"
    assert github_anchor("Pre-training: the TD-MPC2 objective") == "pre-training-the-td-mpc2-objective"


def test_no_file_cites_documents_outside_the_repository():
    files = repo_files(".py", ".md")
    assert ALGORITHM in files and Path(__file__).resolve() in files
    diffsim_note_exists = any(DIFFSIM_NOTE.fullmatch(p.name) for p in files)
    offenders = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line) or (DIFFSIM_NOTE.search(line) and not diffsim_note_exists):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "cite docs/algorithm.md instead of notes outside the repository:\n" + "\n".join(offenders)


def test_every_cited_algorithm_anchor_is_a_heading():
    text = ALGORITHM.read_text(encoding="utf-8")
    anchors = [github_anchor(h) for h in headings(text)]
    assert len(anchors) == len(set(anchors)), "duplicate headings get numbered anchors: rename one"
    cited = {(a, "docs/algorithm.md") for a in PAGE_ANCHOR.findall(text)}
    for path in repo_files(".py", ".md"):
        for anchor in CITED_ANCHOR.findall(path.read_text(encoding="utf-8")):
            cited.add((anchor, str(path.relative_to(ROOT))))
    assert len(cited) > 20  # the code does cite it
    missing = sorted(f"{where}: #{anchor}" for anchor, where in cited if anchor not in anchors)
    assert not missing, "no such heading in docs/algorithm.md:\n" + "\n".join(missing)

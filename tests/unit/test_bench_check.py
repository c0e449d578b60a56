"""`make bench-check` (bench/check.py): a benchmark section is current only if its run included every change to
the code it measures; sections with uncommitted changes or no recorded run are stale."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

from bench.check import MEASURES, last_change, verdicts
from bench.report import provenance, replace_section, sections

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_sections_record_their_run_and_the_check_judges_them(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    now = replace(provenance("make bench"), dirty=False, commit=_git("rev-parse", "HEAD"))
    replace_section(doc, "quality", "## Quality", "| a | b |", now)
    replace_section(doc, "encode", "## Encode", "figures", replace(now, dirty=True))
    doc.write_text(doc.read_text() + "\n<!-- cotenancy:start -->\n## Old\nfigures\n<!-- cotenancy:end -->\n")
    text = doc.read_text()
    assert "*Run: commit `" in text and "`make bench`" in text and "load average" in text
    assert sections(doc)["quality"] == now and sections(doc)["cotenancy"] is None
    found = {key: (state, why) for key, state, why in verdicts(doc)}
    assert found["quality"][0] == "ok"
    assert found["encode"] == ("stale", f"run on {now.commit[:10]} with uncommitted changes")
    assert found["cotenancy"][0] == "stale" and "no run recorded" in found["cotenancy"][1]
    replace_section(doc, "quality", "## Quality", "| a | b |", now)  # rewritten in place, not appended
    assert doc.read_text().count("<!-- quality:start -->") == 1
    before = _git("rev-list", "--max-parents=0", "HEAD").splitlines()[0]
    if before != now.commit and last_change(MEASURES["quality"]) not in (None, before):
        replace_section(doc, "quality", "## Quality", "| a | b |", replace(now, commit=before))
        state, why = {key: (s, w) for key, s, w in verdicts(doc)}["quality"]
        assert state == "stale" and "measured code changed in" in why


def test_every_section_of_the_benchmarks_page_says_what_it_measures() -> None:
    keys = set(sections(ROOT / "docs" / "benchmarks.md"))
    assert keys and keys <= set(MEASURES), sorted(keys - set(MEASURES))

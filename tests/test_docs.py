"""The docs a newcomer reads: README.md stays a front door, and every relative link in it and in
docs/*.md points to a file that exists (a moved result or a renamed doc breaks this test)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 160
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(text: str) -> list[str]:
    """Targets of Markdown links and images outside code, without URLs, mail and in-page anchors;
    a target's own #fragment is dropped."""
    text = _CODE.sub("", _FENCE.sub("", text))
    out = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def broken_links(path: Path) -> list[str]:
    return [t for t in relative_links(path.read_text()) if not (path.parent / t).exists()]


def test_link_finder_on_a_hand_made_page(tmp_path):
    (tmp_path / "here.md").write_text("x")
    page = tmp_path / "page.md"
    page.write_text("[ok](here.md) ![img](missing.png) [web](https://example.org/a.md) "
                    "[anchor](#top) [frag](here.md#part) [gone](gone.md#part)\n"
                    "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n")
    assert relative_links(page.read_text()) == ["here.md", "missing.png", "here.md", "gone.md"]
    assert broken_links(page) == ["missing.png", "gone.md"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file(path):
    assert broken_links(path) == [], f"{path.relative_to(ROOT)}: links to missing files"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    # the two commands stay at the top, and CI runs the README's test command
    assert any(line.startswith("make demo ") for line in lines[:6])
    assert any(line.startswith("make test ") for line in lines[:6])
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("make test")


@pytest.mark.parametrize("name", ["compare-race-cnn-8ep", "compare-race-cnn-8ep-tuned",
                                  "compare-gender-cnn-8ep", "compare-gender-cnn-8ep-tuned"])
def test_results_tables_are_the_committed_runs(name):
    """docs/results.md's comparison tables are `compare_methods.py --render FILE --brief` of the
    committed JSON, cell for cell."""
    import json

    from benchmarks import compare_methods as cm

    data = json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())
    table = "\n".join(ln for ln in cm.report(data, brief=True).splitlines() if ln.startswith("|"))
    assert table in (ROOT / "docs" / "results.md").read_text()

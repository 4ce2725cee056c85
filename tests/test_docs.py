"""The documentation: the site builds in strict mode, every link resolves inside the
repository, the README is a landing page, and each persona's guide opens with its commands.

A user's clone has only this repository, so a link that leaves it (``../shared/...``) or
points at a file that is not there is a broken page for them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
#: Persona guides: each must open with the five commands that persona runs.  The learner and
#: manager guides are written alongside the learner registry and the reports.
PERSONAS = ("learners.md", "course-authors.md", "manager.md", "operators.md")

_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HTML = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.I)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def links(text: str) -> list[str]:
    """Link and image targets of a Markdown text (inline, reference-style and HTML), outside code."""
    text = _FENCE.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    return _INLINE.findall(text) + _REFDEF.findall(text) + _HTML.findall(text)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Targets in ``path`` that do not resolve to a file or folder inside ``root``.

    Web links (http, https, mailto) are not followed; everything else must exist in the
    repository, without leaving it.
    """
    out = []
    for target in links(path.read_text(encoding="utf-8")):
        if re.match(r"^(https?:|mailto:)", target, re.I):
            continue
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        if not file_part:  # an anchor in the same page (mkdocs checks those)
            continue
        if re.match(r"^[a-z][a-z0-9+.-]*:", file_part, re.I) or file_part.startswith("/"):
            out.append(f"{target} (not a relative link)")
            continue
        resolved = (path.parent / file_part).resolve()
        if not resolved.is_relative_to(root.resolve()):
            out.append(f"{target} (leaves the repository)")
        elif not resolved.exists():
            out.append(f"{target} (no such file)")
    return out


def test_link_checker_finds_broken_and_escaping_links(tmp_path):
    (tmp_path / "there.md").write_text("# there\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#x) [gone](missing.md) ![img](img/none.png) [out](../shared/DESIGN.md)\n"
        '[ref]: also-missing.md\n<img src="pic.png">\n```\n[in code](ignored.md)\n```\n'
        "[web](https://example.org/x) `[span](ignored.md)`\n"
    )
    assert broken_links(page, tmp_path) == [
        "missing.md (no such file)",
        "img/none.png (no such file)",
        "../shared/DESIGN.md (leaves the repository)",
        "also-missing.md (no such file)",
        "pic.png (no such file)",
    ]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(path):
    assert broken_links(path) == []
    assert "shared/DESIGN" not in path.read_text(encoding="utf-8"), "the design notes are not in a user's clone"


def test_site_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for page in sorted(DOCS.rglob("*.md")):
        rel = page.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if rel.name == "index" else rel / "index.html")
        assert built.is_file(), f"{page.name} was not built"
    assert (site / "img" / "panel-jupyterlab.png").is_file()


def test_readme_is_a_landing_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) < 8 * 1024, f"README is {len(text.encode())} bytes"
    first_block = _FENCE.search(text).group(0)
    assert text.index(first_block) < 200, "the two commands come first"
    assert [line.split()[:2] for line in first_block.splitlines()[1:-1]] == [["make", "demo"], ["make", "test"]]
    images = [t for t in links(text) if t.endswith(".png")]
    assert {"docs/img/panel-jupyterlab.png", "docs/img/report-voila.png"} <= set(images)
    assert "docs/architecture.md" in links(text)


def five_commands(page: Path) -> list[str]:
    """The command lines of a guide's first code block, which must open the page: within its
    first 1,200 characters, after no section heading except one about those commands."""
    text = page.read_text(encoding="utf-8")
    block = _FENCE.search(text)
    assert block, f"{page.name} has no code block"
    headings = re.findall(r"^##+\s+(.*)$", text[: block.start()], re.M)
    assert block.start() < 1200 and all("command" in h.lower() for h in headings), (
        f"{page.name}: the commands must open the page"
    )
    lines = [ln.split("#", 1)[0].strip() for ln in block.group(0).splitlines()[1:-1]]
    return [ln for ln in lines if ln]


@pytest.mark.parametrize("name", PERSONAS)
def test_each_persona_guide_opens_with_five_commands(name):
    page = DOCS / name
    if not page.exists() and name in ("learners.md", "manager.md"):
        pytest.skip(f"docs/{name} is written with its feature (learner registry / reports)")
    cmds = five_commands(page)
    assert len(cmds) == 5, cmds
    # a learner's commands are the SDK's calls in a notebook; everyone else's are shell commands
    shell = r"^(livelab|make|jupyter|bash|python)\b"
    sdk = r"^(from labs import|lab = Lab\.connect|lab\.)"
    assert all(re.match(sdk if name == "learners.md" else shell, c) for c in cmds), cmds

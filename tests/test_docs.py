"""The docs cannot drift from the CLI: every command's page holds its `--help` text verbatim,
every command is documented, and every relative link in README.md and docs/*.md resolves."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from actdb.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REGENERATE = ".venv/bin/python docs/regenerate_usage.py"

# The docs page of each command, by command group (the modules of actdb/cli/).
PAGES = {
    "info": "store.md", "sql": "store.md", "check": "store.md",
    "ingest": "ingest.md", "relocate": "ingest.md",
    "models": "models.md", "layers": "models.md", "predict": "models.md",
    "index": "query.md", "neighbors": "query.md", "classes": "query.md",
    "optimize": "optimize.md",
    "distances": "analytics.md", "map": "analytics.md", "top-images": "analytics.md",
    "top-classes": "analytics.md", "profile": "analytics.md", "compare": "analytics.md",
    "weights": "network.md", "featuremaps": "network.md", "differentiation": "network.md",
    "trajectory": "trajectory.md",
    "report": "report.md",
    "demo": "demo.md",
}


def help_text(name: str) -> str:
    """`actdb NAME --help` as the docs show it (and as docs/regenerate_usage.py writes it)."""
    result = CliRunner().invoke(cli, [name, "--help"], prog_name="actdb", terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.stdout


def usage_block(name: str) -> str:
    return f"<!-- usage: {name} -->\n```text\n{help_text(name)}```\n<!-- /usage -->"


def test_every_command_has_a_page():
    missing = sorted(set(cli.commands) - set(PAGES))
    assert not missing, (
        f"commands without a docs page: {missing}: add each to PAGES in tests/test_docs.py, put "
        f"'<!-- usage: NAME -->' and '<!-- /usage -->' on its group's page in docs/, then run {REGENERATE}")
    gone = sorted(set(PAGES) - set(cli.commands))
    assert not gone, f"PAGES in tests/test_docs.py names commands actdb no longer has: {gone}"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_holds_the_help_text(name):
    if name not in cli.commands:
        pytest.skip(f"no command {name}")
    page = DOCS / PAGES[name]
    text = page.read_text(encoding="utf-8")
    assert f"<!-- usage: {name} -->" in text, (
        f"docs/{PAGES[name]} has no usage block for `actdb {name}`: add '<!-- usage: {name} -->' and "
        f"'<!-- /usage -->' where it belongs, then run {REGENERATE}")
    assert usage_block(name) in text, (
        f"docs/{PAGES[name]}: the usage block of `actdb {name}` differs from `actdb {name} --help`; "
        f"run {REGENERATE} to rewrite the usage blocks from --help")


def test_regenerating_changes_nothing():
    """The script and the test agree on what a usage block is."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("regenerate_usage", DOCS / "regenerate_usage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = [p.name for p in sorted(DOCS.glob("*.md"))
             if module.rewrite(p.read_text(encoding="utf-8")) != p.read_text(encoding="utf-8")]
    assert not stale, f"stale usage blocks in docs/{', docs/'.join(stale)}: run {REGENERATE}"


FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


def links(page: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken relative links: {broken}"


def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [bad](#nowhere) `[code](x.md)`\n"
                    "```\n[fenced](y.md)\n```\n[web](https://example.org)\n", encoding="utf-8")
    assert links(page) == ["#title", "missing.md", "#nowhere"]
    assert anchors(page) == {"title"}

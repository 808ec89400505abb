"""Rewrite the usage blocks of docs/*.md from the real `actdb COMMAND --help`.

A usage block is whatever sits between a pair of marker comments on a docs page:

    <!-- usage: COMMAND -->
    ```text
    (the whole output of `actdb COMMAND --help`)
    ```
    <!-- /usage -->

This script replaces each block's content with the help text as click prints it at a
terminal width of 100 (the width tests/test_docs.py checks against), so the pages cannot
drift from --help. To document a new command, add an empty marker pair to its group's page
(and the command to PAGES in tests/test_docs.py), then run:

    .venv/bin/python docs/regenerate_usage.py          # rewrite the blocks in place
    .venv/bin/python docs/regenerate_usage.py --check  # only report stale blocks (exit 1)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

DOCS = Path(__file__).resolve().parent
WIDTH = 100
BLOCK = re.compile(r"(?P<open><!-- usage: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(?P<close><!-- /usage -->)", re.S)


def usage(name: str) -> str:
    """`actdb NAME --help`, exactly as printed at a terminal width of WIDTH."""
    from actdb.cli import cli

    if name not in cli.commands:
        raise SystemExit(f"no command {name!r} in actdb (commands: {', '.join(sorted(cli.commands))})")
    result = CliRunner().invoke(cli, [name, "--help"], prog_name="actdb", terminal_width=WIDTH)
    if result.exit_code != 0:
        raise SystemExit(f"actdb {name} --help exited {result.exit_code}:\n{result.output}")
    return result.stdout


def block(name: str) -> str:
    """The fenced block a page holds between the markers of NAME."""
    return f"```text\n{usage(name)}```\n"


def rewrite(text: str) -> str:
    return BLOCK.sub(lambda m: m["open"] + block(m["name"]) + m["close"], text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        new = rewrite(text)
        if new != text:
            stale.append(page)
            if not check:
                page.write_text(new, encoding="utf-8")
    verb = "stale" if check else "rewritten"
    for page in stale:
        print(f"{verb}: {page.relative_to(DOCS.parent)}")
    if not stale:
        print("usage blocks up to date")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The report's folder: pages rendered with Jinja2 (every value HTML-escaped), each written
whole (new file, rename) and recorded in `manifest.json` with the key of what it was made
from, so that a re-run rewrites only the pages whose inputs changed.

The manifest is written last: after a kill, a page it does not name (or names with
another key) is simply made again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path

import jinja2

from ..files import atomic_write

MANIFEST = "manifest.json"
FORMAT = 1  # bump when pages change shape: every page is then rewritten
UNREADABLE_SHOWN = 3  # unreadable image files named in the one note that counts them


def key_of(*parts) -> str:
    """A short digest of what a page was made from (JSON-able parts)."""
    text = json.dumps([FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def slug(name: str) -> str:
    """A file name for any label: safe characters kept, anything else replaced, and a digest
    appended when something was replaced, so that two names never share a page."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))[:80] or "_"
    if safe != str(name) or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(str(name).encode()).hexdigest()[:8]}"
    return safe


class Site:
    def __init__(self, out: Path):
        self.out = Path(out)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("actdb.report", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters["num"] = _number
        self.notes: list[str] = []
        self.unreadable: list[str] = []  # image files that could not be read: all of them when a dataset moved
        self.manifest = self._read_manifest()
        self.recorded: dict[str, str] = {}
        self.written = 0
        self.kept = 0

    def _read_manifest(self) -> dict:
        path = self.out / MANIFEST
        if not path.is_file():
            return {}
        try:
            manifest = json.loads(path.read_text())
            if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
                raise ValueError("not a report manifest")
            return manifest["files"]
        except (OSError, ValueError) as exc:
            self.notes.append(f"{path} was unreadable ({exc}); every page is made again")
            return {}

    def all_notes(self) -> list[str]:
        """The notes, unreadable images counted in one line (a moved dataset makes thousands)."""
        if not self.unreadable:
            return list(self.notes)
        shown = ", ".join(self.unreadable[:UNREADABLE_SHOWN]) + (", ..." if len(self.unreadable) > UNREADABLE_SHOWN
                                                                  else "")
        return [*self.notes, f"{len(self.unreadable)} image file(s) could not be read, so their pages show no picture "
                             f"({shown}); if the dataset moved, `actdb relocate OLD NEW` points the store at its new "
                             "place"]

    def fresh(self, path: str, key: str) -> bool:
        """Whether `path` exists as made from `key` (it is then kept, and counted)."""
        if self.manifest.get(path) == key and (self.out / path).is_file():
            self.recorded[path] = key
            self.kept += 1
            return True
        return False

    def page(self, path: str, template: str, key: str, **context) -> None:
        depth = path.count("/")
        html = self.env.get_template(template).render(root="../" * depth, **context)
        self.file(path, html.encode(), key)

    def file(self, path: str, data: bytes, key: str) -> None:
        """Written whole (new file, rename); synced to disk all at once before the manifest
        names it (one sync for thousands of pages instead of one each)."""
        target = self.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)
        self.recorded[path] = key
        self.written += 1

    def static(self) -> None:
        """The stylesheet and the table script, copied from the package."""
        for name in ("report.css", "table.js"):
            data = resources.files("actdb.report").joinpath("static", name).read_bytes()
            path = f"static/{name}"
            key = key_of(hashlib.sha256(data).hexdigest())
            if not self.fresh(path, key):
                self.file(path, data, key)

    def save_manifest(self) -> None:
        os.sync()  # every page on disk before the manifest says it is there
        atomic_write(self.out / MANIFEST, json.dumps({"format": FORMAT, "files": self.recorded}, indent=0,
                                                     sort_keys=True).encode())


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    value = float(value)
    if value != value:
        return "–"
    return f"{value:.{digits}g}"

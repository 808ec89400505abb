"""The report's folder: pages rendered with Jinja2 (every value HTML-escaped), each written
whole (new file, rename) and recorded in `manifest.json` with the key of what it was made
from, its size and its SHA-256, so that a re-run rewrites only the pages whose inputs changed
and remakes any file that was damaged, edited or deleted since.

Keys are salted with the store's identity (a report of another store into the same folder
remakes everything) and, for pages, with what every page shows (the navigation, whether
paths are absolute). A page is kept only when the file is the one recorded, every picture,
stylesheet and script it loads is too, and no picture it lacked has come back since. Files
that an earlier run recorded and this one did not make are deleted: the folder holds one
report.

The folder is claimed before anything is written (a manifest naming no file), locked while
a report is made into it, and refused when it holds other files: a report never overwrites
what it did not write. The manifest is written last: after a kill, a page it does not name
(or names with another key) is simply made again.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import html
import json
import os
import posixpath
import re
import sys
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path, PurePosixPath

import jinja2

from ..choices import invalid
from ..errors import ActdbError
from ..files import atomic_write

MANIFEST = "manifest.json"
LOCK = ".actdb-report.lock"
MADE_BY = "actdb report"
FORMAT = 2  # bump when pages change shape: every page is then rewritten
UNREADABLE_SHOWN = 3  # unreadable image files named in the one note that counts them
_LINK = re.compile(rb' (?:href|src)="([^"]*)"')  # a leading literal: 10x faster than a word boundary
_DIGEST_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def key_of(*parts) -> str:
    """A short digest of what a page was made from (JSON-able parts)."""
    text = json.dumps([FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def slug(name: str) -> str:
    """A file name for any label, unique even where the filesystem ignores case (macOS,
    Windows): safe lower-case characters kept; anything else replaced, and then, or where an
    upper-case letter, a leading dot or a reserved Windows name could make two names one
    file, a digest of the name appended."""
    text = str(name)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80] or "_"
    if (safe != text or safe.startswith(".") or safe != safe.lower() or _DIGEST_SUFFIX.search(safe)
            or safe.split(".")[0].lower() in _RESERVED):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return safe


def store_identity(store: Path) -> str:
    """What tells two stores apart in a report's keys (a digest: the site never names the path)."""
    return hashlib.sha256(os.path.realpath(store).encode()).hexdigest()[:16]


def checked_out(out: Path, store: Path) -> Path:
    """The report's folder, refused before any work when a report must not be written there:
    inside the store (its own data folders) other than STORE/report, or a folder holding files
    and no report manifest (the user's files, which a report would overwrite)."""
    out, store = Path(out).resolve(), Path(store).resolve()
    default = store / "report"
    if out != default and (out == store or store in out.parents):
        raise invalid("out", out, f"that is inside the store's own folders: write the report to {default} "
                                  "(the default) or to a folder outside the store")
    if out.is_dir() and read_manifest(out) is None and any(p.name != LOCK for p in out.iterdir()):
        raise invalid("out", out, f"that folder holds files and no actdb report ({MANIFEST}); a report would "
                                  "overwrite them: name a new or empty folder, or the folder of an earlier report")
    return out


def read_manifest(out: Path) -> dict | None:
    """The folder's report manifest (format, store, files), or None where there is none that
    an actdb report wrote."""
    try:
        manifest = json.loads((Path(out) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    if manifest.get("made_by") != MADE_BY and manifest.get("format") != 1:  # format 1 named no maker
        return None
    return manifest


def verify(out: Path) -> dict | None:
    """A report folder's files against its manifest: those whose size or SHA-256 is not the one
    recorded (edited, truncated or deleted since) are named; a re-run of `report` remakes them.
    None where the folder holds no report."""
    manifest = read_manifest(out)
    if manifest is None:
        return None
    checked, damaged = 0, []
    for path, entry in sorted(manifest["files"].items()):
        if not isinstance(entry, dict) or "sha256" not in entry:
            continue  # written by an actdb that recorded no digests
        checked += 1
        target = _inside(Path(out), path)
        if target is None or _digest_of(target) != (entry.get("size"), entry["sha256"]):
            damaged.append(path)
    return {"folder": str(out), "files": checked, "damaged": damaged}


@contextmanager
def locked(out: Path, wait: bool = False):
    """The folder, made if needed and locked for one report at a time: a second one (of this
    store or another) is refused in one line before any work, or waits with `wait`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another actdb process"
            if not wait:
                raise ActdbError(
                    f"a report is being written into {out} by {holder}; this one did nothing: run it when that "
                    "one is done, or with wait=True to wait for it, or give another out=",
                    f"a report is being written into {out} by {holder}; this one did nothing: run it when that "
                    "one is done, or with --wait to wait for it, or give another --out") from None
            print(f"actdb: report waits for {holder} to finish writing {out}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} (actdb report, since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        handle.flush()
        try:
            yield out
        finally:
            handle.truncate(0)
    finally:
        handle.close()  # closing releases the lock


class Site:
    def __init__(self, out: Path, identity: str, page_salt):
        """`identity`: the store's (see `store_identity`); `page_salt`: what every page shows
        besides its own content (the navigation, path style), part of every page's key."""
        self.out = Path(out)
        self.identity = identity
        self.page_salt = key_of(page_salt)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("actdb.report", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters["num"] = _number
        self.notes: list[str] = []
        manifest = read_manifest(self.out) or {}
        if manifest.get("store") not in (None, identity) and manifest.get("files"):
            self.notes.append(f"{self.out} held the report of another store: its pages are replaced")
        self.manifest: dict[str, dict] = {p: e if isinstance(e, dict) else {"key": e}  # format 1: keys only
                                          for p, e in manifest.get("files", {}).items()}
        self.recorded: dict[str, dict] = {}
        self.written: set[str] = set()
        self.links: dict[str, set[str]] = {}  # page -> the report files it links or loads
        self.available = lambda source: False  # whether a picture missing from a page can be made now
        self._intact: dict[str, bool] = {}
        self._missing: set[str] = set()  # pictures the next file written lacks
        self.unreadable: list[str] = []  # image files that could not be read: all of them when a dataset moved

    def claim(self) -> None:
        """Mark the folder as a report's before the first file is written into it."""
        if read_manifest(self.out) is None:
            self._save({})

    def _key(self, path: str, key: str) -> str:
        return key_of(self.identity, self.page_salt if path.endswith(".html") else None, key)

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
        """Whether `path` is the file made from `key` (it is then kept): recorded so, with its
        size and SHA-256, and for a page every file it loads as well."""
        if path in self.recorded:
            return self.recorded[path]["key"] == self._key(path, key)
        entry = self.manifest.get(path)
        if entry is None or entry.get("key") != self._key(path, key) or not self._verified(path):
            return False
        self.recorded[path] = entry
        return True

    def _verified(self, path: str) -> bool:
        """The recorded file is on disk as written, no picture it lacked can be made now, and
        (a page) the pictures, stylesheet and script it loads are verified too."""
        if path not in self._intact:
            self._intact[path] = False
            entry, target = self.manifest.get(path), _inside(self.out, path)
            data = _read(target) if entry is not None and target is not None else None
            ok = (data is not None and (len(data), hashlib.sha256(data).hexdigest()) == (entry.get("size"),
                                                                                       entry.get("sha256"))
                  and not any(self.available(source) for source in entry.get("missing", ())))
            if ok and path.endswith(".html"):
                targets = _links(path, data)
                ok = all(self._keep(t) for t in targets if not t.endswith(".html"))
                self.links[path] = targets
            self._intact[path] = ok
        return self._intact[path]

    def _keep(self, path: str) -> bool:
        """A file a kept page loads: kept as recorded when it is intact."""
        if path in self.recorded:
            return True
        if path in self.manifest and self._verified(path):
            self.recorded[path] = self.manifest[path]
            return True
        return False

    def picture_missing(self, source: str) -> None:
        """The next file written shows `source` as "no picture": it is made again once `source` can be read."""
        self._missing.add(source)

    def page(self, path: str, template: str, key: str, **context) -> None:
        depth = path.count("/")
        data = self.env.get_template(template).render(root="../" * depth, **context).encode()
        self.links[path] = _links(path, data)
        self.file(path, data, key)

    def file(self, path: str, data: bytes, key: str) -> None:
        """Written whole (new file, rename); synced to disk all at once before the manifest
        names it (one sync for thousands of pages instead of one each)."""
        target = self.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)
        entry = {"key": self._key(path, key), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if self._missing:
            entry["missing"] = sorted(self._missing)
            self._missing = set()
        self.recorded[path] = entry
        self.written.add(path)

    def static(self) -> None:
        """The stylesheet and the table script, copied from the package."""
        for name in ("report.css", "table.js"):
            data = resources.files("actdb.report").joinpath("static", name).read_bytes()
            path = f"static/{name}"
            key = key_of(hashlib.sha256(data).hexdigest())
            if not self.fresh(path, key):
                self.file(path, data, key)

    def finish(self) -> list[str]:
        """Delete what an earlier run recorded and this one did not make, then write the
        manifest (after one sync of everything written); the files deleted."""
        broken = sorted((page, target) for page, targets in self.links.items() if page in self.recorded
                        for target in targets if target not in self.recorded)
        if broken:
            page, target = broken[0]
            self.notes.append(f"{len(broken)} links lead to no file of this report (the first: {page} -> {target})")
        removed = []
        for path in sorted(set(self.manifest) - set(self.recorded)):
            target = _inside(self.out, path)
            if target is not None and target.is_file():
                target.unlink()
                removed.append(path)
                _remove_empty_folders(target.parent, self.out)
        os.sync()  # every page on disk before the manifest says it is there
        self._save(self.recorded)
        return removed

    def _save(self, files: dict) -> None:
        atomic_write(self.out / MANIFEST, json.dumps({"format": FORMAT, "made_by": MADE_BY, "store": self.identity,
                                                      "files": files}, indent=0, sort_keys=True).encode())

    @property
    def kept(self) -> int:
        return len(set(self.recorded) - self.written)


def _links(path: str, data: bytes) -> set[str]:
    """The report files a page links or loads, as paths from the report's folder."""
    folder = posixpath.dirname(path)
    return {target for value in set(_LINK.findall(data)) if (target := _target(folder, value)) is not None}


@functools.lru_cache(maxsize=1 << 16)
def _target(folder: str, value: bytes) -> str | None:
    """A link's file from the report's folder; None for one that leaves the report (a URL, an absolute path)."""
    text = html.unescape(value.decode("utf-8", "replace")).split("#", 1)[0]
    if not text or ":" in text.split("/", 1)[0] or text.startswith("/"):
        return None
    return posixpath.normpath(posixpath.join(folder, text))


def _inside(out: Path, path: str) -> Path | None:
    """`out / path` for a manifest's relative path; None for one that would leave the folder."""
    relative = PurePosixPath(path)
    if relative.is_absolute() or not relative.parts or ".." in relative.parts or path in (MANIFEST, LOCK):
        return None
    return out.joinpath(*relative.parts)


def _read(target: Path) -> bytes | None:
    try:
        return target.read_bytes()
    except OSError:
        return None


def _digest_of(target: Path) -> tuple[int, str] | None:
    data = _read(target)
    return None if data is None else (len(data), hashlib.sha256(data).hexdigest())


def _remove_empty_folders(folder: Path, out: Path) -> None:
    while folder != out and out in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    value = float(value)
    if value != value:
        return "–"
    return f"{value:.{digits}g}"

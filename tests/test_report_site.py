"""`actdb report`'s folder (issue 26, findings 5, 6, 7 and 10): what it refuses to write
into, what its keys cover (the store, the navigation, failed images, the weights of feature
visualizations, pictures that were missing), how a re-run verifies what it keeps and
removes what it no longer makes, links only to pages it makes, file names that stay apart
where case is ignored, paths that leave the machine, a read-only store, `check` of the
report and `--serve` on a port in use.

One store for the module: the tiny store, the same model with unit 0 of conv2 dead (an array
"tiny conv2 (mean)" that differs from the first by its weights alone), classes `Foo`, `foo`
and `FOO` and unlabelled images from a list, and a feature visualization made with the dead
model's weights."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
import pytest

import actdb
from conftest import invoke, one_line_error, write_image

REPORT = ["report", "--layers", "conv2", "--units", "0-2", "--top", "4"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tiny_store_template, tiny_model_path, tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("report-site")
    store = root / "store"
    shutil.copytree(tiny_store_template, store)
    model = keras.models.load_model(tiny_model_path)
    conv = model.get_layer("conv2")
    kernel, bias = conv.get_weights()
    bias[0] = -1e4  # unit 0 is 0 on every image
    conv.set_weights([kernel, bias])
    dead = root / "dead" / "tiny.keras"
    dead.parent.mkdir()
    model.save(dead)
    train = tiny_store_template.parent / "train"
    assert invoke("--store", store, "ingest", train, "--model", dead, "--preprocess", "tf", "--layers", "conv2",
                  "--quiet").exit_code == 0
    rng = np.random.default_rng(8)
    rows = [(f"{label}{i}.png", label) for label in ("Foo", "foo", "FOO") for i in range(2)]
    rows += [(f"loose{i}.png", "") for i in range(6)]
    for name, _ in rows:
        write_image(root / "extra" / name, rng)
    pd.DataFrame({"path": [f"extra/{n}" for n, _ in rows], "label": [l for _, l in rows]}).to_csv(
        root / "list.csv", index=False)
    result = invoke("--store", store, "ingest", root / "list.csv", "--model", tiny_model_path, "--preprocess", "tf",
                    "--layers", "conv2", "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("--store", store, "optimize", "--model", dead, "--preprocess", "tf", "--layer", "conv2",
                    "--units", "1", "--steps", 4, "--size", 32, "--name", "other-weights", "--quiet")
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def site(store):
    result = invoke("--store", store, *REPORT, "--json")
    assert result.exit_code == 0, result.output
    return store / "report"


def arrays(store):
    """(base mean, base max, dead mean) as stored."""
    db = actdb.open(store)
    found = db.arrays()
    dead = next(a for a in found if a.model_path and "dead" in a.model_path)
    base = [a for a in found if a.layer == "conv2" and a.weights != dead.weights]
    return db, next(a for a in base if a.reduce == "mean"), next(a for a in base if a.reduce == "max"), dead


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[str] = []
        self.figures: list[tuple[int, bool]] = []  # (data-id, linked) of each shown image
        self._figure = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.targets += [attrs[n] for n in ("href", "src") if attrs.get(n)]
        if tag == "figure" and "data-id" in attrs:
            self._figure = [int(attrs["data-id"]), False]
            self.figures.append(self._figure)
        if tag == "a" and self._figure is not None:
            self._figure[1] = True

    def handle_endtag(self, tag):
        if tag == "figure" and self._figure is not None:
            self.figures[-1] = tuple(self._figure)
            self._figure = None


def parsed(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def manifest_files(folder: Path) -> set[str]:
    return set(json.loads((folder / "manifest.json").read_text())["files"])


# ---- finding 5: where a report may be written ---------------------------------------------------

def test_a_folder_of_other_files_or_inside_the_store_is_refused_before_any_work(store, tmp_path):
    mine = tmp_path / "mine"
    (mine / "static").mkdir(parents=True)
    (mine / "index.html").write_text("my page")
    (mine / "static" / "report.css").write_text("my style")
    (mine / "manifest.json").write_text('{"name": "a web app", "files": {}}')  # someone else's manifest
    before = files_of(mine)
    store_before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    one_line_error(invoke("--store", store, *REPORT, "--out", mine), "--out", "holds files and no actdb report")
    assert files_of(mine) == before
    for inside in ("optimized", "activations.zarr", "indexes", ".", "report/sub", "activations.zarr/new"):
        one_line_error(invoke("--store", store, *REPORT, "--out", store / inside), "inside the store")
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == store_before  # nothing written, nothing made


def test_a_second_report_into_a_folder_being_written_is_refused(store, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".actdb-report.lock", "a+") as held:  # a report of another store, under way
        fcntl.flock(held, fcntl.LOCK_EX)
        one_line_error(invoke("--store", store, *REPORT, "--out", out), "being written", "--wait")
    assert [p.name for p in out.iterdir()] == [".actdb-report.lock"]


# ---- finding 6: links, names, top classes, feature visualizations ------------------------------

def test_every_page_links_only_files_of_the_report_and_neighbours_without_a_page_are_shown_unlinked(store, site):
    db, base, _, _ = arrays(store)
    pages = list(site.rglob("*.html"))
    for page in pages:
        for target in parsed(page).targets:
            assert (page.parent / target).resolve().is_file(), f"{page.relative_to(site)} links {target}: missing"
    with_page = {int(p.stem) for p in (site / "image").glob("*.html")}
    ids, rows = db.activations(base.model, base.layer, weights=base.weights, return_ids=True)
    unlinked = 0
    for image_id in sorted(with_page):
        html = (site / "image" / f"{image_id}.html").read_text()
        heading = f"(mean, weights {base.weights[:len('file:sha256=') + 12]})"
        panel = next(part for part in html.split("<h2>")[1:]
                     if heading in part.split("</h2>")[0]).split("<h3>Nearest classes", 1)[0]
        figures = parsed_text(panel).figures
        distances = np.linalg.norm(rows - rows[ids.tolist().index(image_id)], axis=1)
        nearest = [int(i) for i in ids[np.lexsort((ids, distances))] if i != image_id][:8]
        assert [i for i, _ in figures] == nearest
        assert all(linked == (i in with_page) for i, linked in figures)
        unlinked += sum(not linked for _, linked in figures)
    assert unlinked > 0  # the unlabelled images no page shows are neighbours, shown without a link


def parsed_text(text: str) -> _Links:
    parser = _Links()
    parser.feed(text)
    return parser


def test_arrays_that_differ_by_weights_have_names_and_folders_of_their_own(store, site):
    _, base, _, dead = arrays(store)
    nav = re.findall(r'<nav>(.*?)</nav>', (site / "index.html").read_text(), re.S)[0]
    names = re.findall(r'<a href="[^"]+/index.html">([^<]+)</a>', nav)
    assert len(names) == len(set(names)) == 3
    titles = {re.search(r"<h1>(.*?)</h1>", (site / href).read_text()).group(1)
              for href in re.findall(r'href="([^"]+/index.html)"', nav)}
    short = {a.weights: a.weights[:len("file:sha256=") + 12] for a in (base, dead)}  # both are .keras files
    assert short[base.weights] != short[dead.weights]
    assert len(titles) == 3 and all(any(f"(mean, weights {w})" in t for t in titles) for w in short.values())


def expected_top_class(labels: pd.Series, ids: np.ndarray, column: np.ndarray, top: int) -> str:
    """The most frequent class among the unit's top images that are above its minimum; a tie
    to the class of the higher-ranked image; none when no image is above the minimum."""
    order = np.lexsort((ids, -column))[:top]
    counted = [labels.loc[ids[i]] for i in order if column[i] > column.min() and pd.notna(labels.loc[ids[i]])]
    if not counted:
        return ""
    counts = pd.Series(counted).value_counts()
    best = counts[counts == counts.max()].index
    return next(c for c in counted if c in best)


def layer_folder(site: Path, array) -> str:
    """The folder of the array's pages, found by what its layer page says of it."""
    index = (site / "index.html").read_text()
    return next(h for h in re.findall(r'href="([^"]+)/index.html"', index)
                if f"reduce {array.reduce}, weights {array.weights})" in (site / h / "index.html").read_text())


def test_the_top_class_comes_from_images_above_the_units_minimum(store, site):
    db, base, _, dead = arrays(store)
    labels = db.sql("SELECT id, label FROM images").set_index("id").label
    for array in (dead, base):
        ids, rows = db.activations(array.model, array.layer, weights=array.weights, return_ids=True)
        table = (site / layer_folder(site, array) / "index.html").read_text().split("<tbody>", 1)[1]
        shown = {}
        for row in table.split("<tr>")[1:]:
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
            shown[int(re.sub(r"<[^>]+>", "", cells[0]))] = cells[6]
        assert sorted(shown) == [0, 1, 2]
        for unit, top_class in shown.items():
            assert top_class == expected_top_class(labels, ids, rows[:, unit], 4), (array.weights, unit)
    assert np.all(db.activations(dead.model, dead.layer, weights=dead.weights)[:, 0] == 0)


def test_a_feature_visualization_shows_on_the_unit_pages_of_its_own_weights_only(store, site):
    _, base, _, dead = arrays(store)
    folders = {a.weights: layer_folder(site, a) for a in (base, dead)}
    assert 'optimized/other-weights.html' in (site / folders[dead.weights] / "1.html").read_text()
    assert 'optimized/' not in (site / folders[base.weights] / "1.html").read_text()
    page = (site / "optimized" / "other-weights.html").read_text()
    assert re.findall(r'<a href="../([^"]+)">the unit\'s page</a>', page) == [f"{folders[dead.weights]}/1.html"]


def test_classes_that_differ_by_case_are_three_files_where_case_is_ignored(store, site):
    db = actdb.open(store)
    index = (site / "index.html").read_text()
    hrefs = {name: re.search(rf'<a href="(class/[^"]+)">{name}</a>', index).group(1) for name in ("Foo", "foo", "FOO")}
    assert len({h.lower() for h in hrefs.values()}) == 3
    for name, href in hrefs.items():
        html = (site / href).read_text()
        assert f"<h1>class {name}</h1>" in html
        members = db.sql("SELECT id FROM images WHERE label = ? ORDER BY id", [name]).id.tolist()
        assert [i for i, _ in parsed_text(html).figures] == members


def test_pages_name_no_absolute_path(store, site):
    db = actdb.open(store)
    sources = db.sql("SELECT DISTINCT source FROM images").source
    folders = {str(store.resolve().parent), *(str(Path(source).parent) for source in sources)}
    for path, data in files_of(site).items():
        assert not any(folder.encode() in data for folder in folders), path
    image_id, path, source = db.sql("SELECT id, path, source FROM images WHERE path LIKE '%/train/%' "
                                    "ORDER BY id LIMIT 1").iloc[0]
    relative = PurePath(Path(source).name) / PurePath(path).relative_to(source)
    assert f"<code>{relative}</code>" in (site / f"image/{image_id}.html").read_text()
    assert f"Store <code>{store.name}</code>" in (site / "index.html").read_text()


# ---- finding 6: what a re-run keeps, remakes and removes -----------------------------------------

def test_a_rerun_remakes_damaged_files_and_check_names_them(store, site):
    before = files_of(site)
    unit = next(p for p in before if re.fullmatch(r"tiny/conv2[^/]*/1\.html", p))
    thumb = next(p for p in before if p.startswith("thumbs/"))
    strip = next(p for p in before if p.startswith("strips/"))
    (site / unit).write_bytes(before[unit][:100])  # truncated
    (site / "class/tench.html").write_text(before["class/tench.html"].decode().replace("tench", "trout"))  # edited
    (site / thumb).unlink()
    (site / strip).unlink()
    (site / "static/table.js").write_text("/* edited */")
    damaged = {unit, "class/tench.html", thumb, strip, "static/table.js"}
    checked = invoke("--store", store, "check", "--json")
    assert checked.exit_code == 0, checked.output  # the store is sound
    report = json.loads(checked.output)
    assert report["ok"] and set(report["report"]["damaged"]) == damaged
    assert any("report" in note and "actdb report" in note for note in report["notes"])
    result = json.loads(invoke("--store", store, *REPORT, "--json").output)
    assert files_of(site) == before
    assert result["files_removed"] == 0 and result["pages_written"] >= len(damaged)
    assert json.loads(invoke("--store", store, "check", "--json").output)["report"]["damaged"] == []


def test_the_failed_image_count_follows_the_store(store, site, tiny_model_path, tmp_path):
    assert "0 images that failed" in (site / "index.html").read_text()
    broken = tmp_path / "broken" / "n01440764"
    broken.mkdir(parents=True)
    (broken / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    result = invoke("--store", store, "ingest", broken.parent, "--model", tiny_model_path, "--preprocess", "tf",
                    "--layers", "conv2", "--quiet")
    assert result.exit_code == 1  # none of the listed images could be ingested: an error row, no new rows
    assert invoke("--store", store, *REPORT).exit_code == 0
    assert "1 images that failed" in (site / "index.html").read_text()


@pytest.fixture(scope="module")
def small(store, tmp_path_factory):
    """A second, small report (one array, two units) made into an empty folder while the file of
    one shown image (a member of class Foo) was away: (folder, its summary, the image's id and path,
    the image page as first made)."""
    db = actdb.open(store)
    image_id, path = db.sql("SELECT id, path FROM images WHERE label = 'Foo' ORDER BY id LIMIT 1").iloc[0]
    out = tmp_path_factory.mktemp("small") / "site"
    out.mkdir()
    moved = Path(path).with_suffix(".away")
    os.replace(path, moved)
    try:
        result = invoke("--store", store, *SMALL, "--out", out, "--json")
    finally:
        os.replace(moved, path)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output), int(image_id), path, (out / f"image/{image_id}.html").read_text()


SMALL = ["report", "--layers", "fc", "--units", "0-1", "--top", "2"]


def test_a_page_made_while_a_picture_was_missing_shows_it_once_it_is_back(store, small):
    out, first, image_id, path, page = small
    assert any(path in note for note in first["notes"])
    assert "no picture" in page.split("<h2", 1)[0]
    invoke("--store", store, *SMALL, "--out", out)
    hero = (out / f"image/{image_id}.html").read_text().split("<h2", 1)[0]
    assert "no picture" not in hero
    digest = actdb.open(store).sql("SELECT content_hash FROM images WHERE id = ?", [image_id]).content_hash[0]
    assert f"thumbs/{digest[:24]}.jpg" in hero


def test_pages_no_longer_made_are_removed(store, small):
    out = small[0]
    assert (out / "tiny/fc/1.html").is_file()
    fewer = json.loads(invoke("--store", store, *SMALL[:3], "--units", "0", "--top", "2", "--out", out,
                              "--json").output)
    on_disk = set(files_of(out)) - {"manifest.json", ".actdb-report.lock"}
    assert on_disk == manifest_files(out)
    assert not (out / "tiny/fc/1.html").exists() and not (out / "strips/tiny/fc/1.jpg").exists()
    assert fewer["files_removed"] >= 2
    for page in out.rglob("*.html"):
        for target in parsed(page).targets:
            assert (page.parent / target).resolve().is_file(), f"{page.relative_to(out)} links {target}: missing"


def test_absolute_paths_only_when_asked(store, small):
    out = small[0]
    db = actdb.open(store)
    image_id, path = db.sql("SELECT id, path FROM images WHERE label = 'tench' ORDER BY id LIMIT 1").iloc[0]
    result = invoke("--store", store, *SMALL, "--out", out, "--absolute-paths")
    assert result.exit_code == 0, result.output
    assert f"Store <code>{store.resolve()}</code>" in (out / "index.html").read_text()
    assert f"<code>{path}</code>" in (out / f"image/{image_id}.html").read_text()


def test_a_report_of_another_store_into_the_same_folder_keeps_nothing_of_the_first(store, small, tmp_path):
    out = small[0]
    other = tmp_path / "other"
    shutil.copytree(store, other, ignore=shutil.ignore_patterns("report"))  # the same rows, data versions, ...
    mine = set(files_of(out))
    second = json.loads(invoke("--store", other, *SMALL, "--out", out, "--json").output)
    assert second["files_kept"] == 0 and second["pages_written"] >= len(mine) - 2  # all but the manifest and lock
    assert f"Store <code>{other.name}</code>" in (out / "index.html").read_text()
    assert set(files_of(out)) - {"manifest.json", ".actdb-report.lock"} == manifest_files(out)


@pytest.mark.slow
def test_optimize_makes_the_visualization_a_unit_lacks_in_its_own_weights(store, site):
    """Unit 1 of the first model has only the dead model's visualization: --optimize makes one
    with the first model's weights (before, it counted the other one and skipped the unit)."""
    db, base, _, dead = arrays(store)

    def visualizations(array) -> list[str]:
        return db.sql("SELECT name FROM optimized_images WHERE model = ? AND layer = ? AND weights = ? AND unit = 1 "
                      "AND objective = 'channel'", [array.model, array.layer, array.weights]).name.tolist()

    assert visualizations(base) == [] and visualizations(dead) == ["other-weights"]
    result = invoke("--store", store, "report", "--layers", "conv2", "--units", "1", "--top", "4", "--optimize")
    assert result.exit_code == 0, result.output
    made = visualizations(base)
    assert len(made) == 1 and visualizations(dead) == ["other-weights"]
    page = (site / layer_folder(site, base) / "1.html").read_text()
    assert f"optimized/{made[0]}.html" in page and "optimized/other-weights.html" not in page


# ---- finding 7: --serve; finding 10: a read-only store ---------------------------------------------

def test_serve_on_a_port_in_use_is_refused_before_the_report_is_built(store, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = tmp_path / "never"
        one_line_error(invoke("--store", store, *REPORT, "--out", out, "--serve", "--port", port), "--port", str(port))
    assert not out.exists()


READ_ONLY = """
import json, sys
from click.testing import CliRunner
from actdb.cli import cli

results = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, args)
    crashed = not isinstance(result.exception, (SystemExit, type(None)))
    results.append({"exit_code": result.exit_code, "output": result.output,
                    "crashed": repr(result.exception) if crashed else None})
print(json.dumps(results))
"""


@pytest.mark.slow
def test_a_read_only_store_is_reported_into_a_writable_folder(store, site, tiny_store_template, tmp_path):
    """For real: the stores bind-mounted read-only in a mount namespace of their own (EROFS even to root)."""
    unindexed = tmp_path / "unindexed"
    shutil.copytree(tiny_store_template, unindexed)
    mounts = " && ".join(f"mount --bind -o ro '{s}' '{s}'" for s in (store, unindexed))
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mounts], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private read-only bind mount here: {probe.stderr.strip()[:200]}")
    out = tmp_path / "site"
    commands = [["--store", str(store), "report", "--layers", "conv2", "--units", "0", "--top", "2", "--out", str(out)],
                ["--store", str(unindexed), "report", "--layers", "fc", "--out", str(tmp_path / "fc")],
                ["--store", str(store), "report", "--layers", "conv2"]]  # into STORE/report: read-only too
    process = subprocess.run(["unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", sys.executable, "-c",
                              READ_ONLY, json.dumps(commands)], capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    done, refused, inside = json.loads(process.stdout.strip().splitlines()[-1])
    assert done["exit_code"] == 0 and not done["crashed"], done
    assert (out / "index.html").is_file() and (out / "tiny").is_dir()  # the store's arrays indexed by `site`
    lines = [line for line in refused["output"].splitlines() if line.strip()]
    assert refused["exit_code"] == 1 and len(lines) == 1 and lines[0].startswith("Error: "), refused
    assert "read-only" in lines[0] and "actdb index --model tiny --layer fc" in lines[0]
    assert not (tmp_path / "fc").exists()
    lines = [line for line in inside["output"].splitlines() if line.strip()]
    assert inside["exit_code"] == 1 and len(lines) == 1 and "read-only" in lines[0] and "--out FOLDER" in lines[0]

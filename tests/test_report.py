"""`actdb report`: the all-units pass against NumPy on the stored rows, the site's pages at
their stable paths with the numbers of the store, and incremental re-runs. Escaping and
the browser tests are in test_report_browser.py."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import actdb
from actdb.analytics.unit_summary import summarize, summarize_blocks
from conftest import invoke, one_line_error, write_image

ARRAY = {"model": "tiny", "layer": "conv2"}


@pytest.fixture(scope="module")
def stored(tiny_store):
    db = actdb.open(tiny_store)
    ids, rows = db.activations("tiny", "conv2", return_ids=True)
    return db, db.array("tiny", "conv2"), ids, rows


def test_the_all_units_pass_equals_numpy_on_every_unit(stored):
    db, array, ids, rows = stored
    summary = summarize(db, array, k=7)
    assert summary.rows == len(ids) and summary.exact
    for unit in range(array.channels):
        column = rows[:, unit]
        top = np.lexsort((ids, -column))[:7]  # highest first, ties by id
        bottom = np.lexsort((ids, column))[:7]
        assert summary.top_ids[unit].tolist() == ids[top].tolist()
        np.testing.assert_allclose(summary.top_values[unit], column[top], rtol=0, atol=0)
        assert summary.bottom_ids[unit].tolist() == ids[bottom].tolist()
        assert summary.density[unit] == pytest.approx(np.mean(column > 0))
        assert summary.mean[unit] == pytest.approx(column.astype(np.float64).mean(), rel=1e-9)
        counts, edges = summary.histogram(unit, bins=10)
        expected, expected_edges = np.histogram(column, bins=10, range=(column.min(), column.max()))
        assert counts.tolist() == expected.tolist()
        np.testing.assert_allclose(edges, expected_edges, rtol=1e-6)
        for q, image_id, value in summary.quantile_examples(unit):
            assert value == pytest.approx(np.quantile(column, q, method="nearest"))
            assert rows[ids.tolist().index(image_id), unit] == value
        correlations = np.corrcoef(rows.T.astype(np.float64))[unit]
        for other, r in summary.similar_units(unit, n=3):
            assert r == pytest.approx(correlations[other])
        expected_similar = [u for u in np.argsort(-np.nan_to_num(correlations, nan=-2), kind="stable")
                            if u != unit][:3]
        assert [u for u, _ in summary.similar_units(unit, n=3)] == expected_similar


def test_ties_go_to_the_smaller_id_as_a_full_sort_orders_them():
    """ReLU units are 0 on many images: the bottom k of such a unit is a tie broken by id."""
    rng = np.random.default_rng(0)
    rows = np.maximum(rng.normal(size=(500, 4)), 0).astype(np.float32)
    rows[:, 2] = 0.0  # a dead unit
    ids = np.arange(500) * 7 + 3
    blocks = [(ids[i:i + 64], None, rows[i:i + 64]) for i in range(0, 500, 64)]
    summary = summarize_blocks(blocks, 4, k=9)
    for unit in range(4):
        assert summary.bottom_ids[unit].tolist() == ids[np.lexsort((ids, rows[:, unit]))[:9]].tolist()
        assert summary.top_ids[unit].tolist() == ids[np.lexsort((ids, -rows[:, unit]))[:9]].tolist()
    assert summary.density[2] == 0 and summary.maximum[2] == 0


def test_negative_values_and_the_sample_do_not_depend_on_block_sizes():
    rng = np.random.default_rng(1)
    rows = rng.normal(-2, 3, size=(3000, 3)).astype(np.float32)
    ids = np.arange(3000)
    whole = summarize_blocks([(ids, None, rows)], 3, k=5, rate=0.1)
    pieces = summarize_blocks([(ids[i:i + 100], None, rows[i:i + 100]) for i in range(0, 3000, 100)], 3, k=5,
                              rate=0.1)
    assert whole.sample_ids.tolist() == pieces.sample_ids.tolist()
    assert 200 < len(whole.sample_ids) < 400 and not whole.exact
    np.testing.assert_array_equal(whole.minimum, rows.min(axis=0))
    np.testing.assert_array_equal(whole.maximum, rows.max(axis=0))
    np.testing.assert_array_equal(whole.sample, rows[whole.sample_ids])


@pytest.fixture(scope="module")
def site(tiny_store):
    result = invoke("--store", tiny_store, "report", "--layers", "conv2", "--top", "6", "--json")
    assert result.exit_code == 0, result.output
    return tiny_store / "report", json.loads(result.output)


def _section_ids(html: str, heading: str) -> list[int]:
    part = html.split(heading, 1)[1].split("<h2", 1)[0]
    return [int(i) for i in re.findall(r'href="../../image/(\d+)\.html"', part)]


def test_pages_at_stable_paths_show_the_stored_numbers(site, stored):
    folder, summary = site
    db, array, ids, rows = stored
    assert summary["report"] == str(folder / "index.html") and summary["units"] == 32  # conv2 mean and max
    assert (folder / "index.html").is_file() and (folder / "tiny/conv2/index.html").is_file()
    labels = db.sql("SELECT id, label FROM images").set_index("id").label
    for unit in (0, 5, 15):
        html = (folder / f"tiny/conv2/{unit}.html").read_text()
        top = np.lexsort((ids, -rows[:, unit]))[:6]
        assert _section_ids(html, "Top 6 stored images") == ids[top].tolist()
        bottom = np.lexsort((ids, rows[:, unit]))[:6]
        assert _section_ids(html, "Bottom 6") == ids[bottom].tolist()
        means = {c: rows[(labels.loc[ids] == c).to_numpy(), unit].mean() for c in labels.unique()}
        best = max(means, key=means.get)
        by_mean = html.split("Top classes by mean", 1)[1]
        assert re.search(r'class/(\w+)\.html', by_mean).group(1) == best
    for label in labels.unique():
        assert (folder / f"class/{label}.html").is_file()
    for image_id in ids[np.lexsort((ids, -rows[:, 0]))[:6]]:
        page = (folder / f"image/{image_id}.html").read_text()
        assert f"id:{image_id}" in page
    layer = (folder / "tiny/conv2/index.html").read_text()
    assert layer.count('<tr><td data-value=') == 16


def test_class_pages_rank_units_by_the_z_of_the_class_mean(site, stored):
    folder, _ = site
    db, array, ids, rows = stored
    labels = db.sql("SELECT id, label FROM images").set_index("id").label.loc[ids].to_numpy()
    z = (rows[labels == "tench"].mean(axis=0) - rows.mean(axis=0)) / rows.std(axis=0)
    html = (folder / "class/tench.html").read_text().split("Units most specific to it", 1)[1]
    shown = [int(u) for u in re.findall(r'tiny/conv2/(\d+)\.html', html)]
    assert shown[:5] == np.argsort(-z, kind="stable")[:5].tolist()


def test_an_unchanged_store_rewrites_nothing_and_new_rows_rewrite_their_pages(tiny_store, site, tiny_model_path,
                                                                          tmp_path):
    folder, _ = site
    again = invoke("--store", tiny_store, "report", "--layers", "conv2", "--top", "6", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["pages_written"] == 0
    before = (folder / "tiny/conv2/3.html").read_text()
    extra = tmp_path / "extra" / "n01440764"
    rng = np.random.default_rng(5)
    for i in range(3):
        write_image(extra / f"new_{i}.png", rng)
    result = invoke("--store", tiny_store, "ingest", extra.parent, "--model", tiny_model_path, "--preprocess", "tf",
                    "--layers", "conv2", "--quiet")
    assert result.exit_code == 0, result.output
    third = json.loads(invoke("--store", tiny_store, "report", "--layers", "conv2", "--top", "6", "--json").output)
    assert third["pages_written"] > 32
    after = (folder / "tiny/conv2/3.html").read_text()
    db = actdb.open(tiny_store)
    rows_now = db.array("tiny", "conv2").rows_done
    assert f"over {rows_now} stored images" in after and before != after


def test_bad_options_are_one_line_before_any_work(tiny_store, tmp_path):
    one_line_error(invoke("--store", tiny_store, "report", "--layers", "nope"), "no stored array", "nope")
    one_line_error(invoke("--store", tiny_store, "report", "--layers", "conv2", "--units", "0-99"), "99")
    one_line_error(invoke("--store", tiny_store, "report", "--top", "0"), "top")
    (tmp_path / "file").write_text("x")
    one_line_error(invoke("--store", tiny_store, "report", "--out", tmp_path / "file" / "site"), "not a folder")
    assert not (tiny_store / "report" / "tiny" / "fc").exists()


def test_a_tie_for_the_top_class_goes_to_the_class_the_strip_starts_with():
    from actdb.report.build import _class_counts

    counts = _class_counts(["palace", "espresso", None, "espresso", "palace", "tabby"])
    assert list(counts.items()) == [("palace", 2), ("espresso", 2), ("tabby", 1)]

"""actdb compare: linear CKA against its closed form, debiased CKA against the Gram-matrix
U-statistic, RSA against SciPy pdist + spearmanr, all on the stored rows of a real ingest."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

import actdb
from conftest import invoke, one_line_error, write_image
from test_analytics_circuits import assert_sensible_png

CLASSES = ["n01440764", "n01443537", "n01484850", "n02105056", "n02321529"]  # five ImageNet classes
LAYERS = ["conv1", "conv2", "fc"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(21)
    for wnid in CLASSES:
        for i in range(4):
            write_image(root / "train" / wnid / f"{wnid}_{i}.png", rng)
    store = root / "store"
    result = invoke("--store", store, "ingest", root / "train", "--model", tiny_model_path, "--preprocess", "tf",
                    "--layers", ",".join(LAYERS), "--quiet")
    assert result.exit_code == 0, result.output
    return store


def closed_form_cka(x, y):
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def unbiased_gram_cka(x, y):
    """Kornblith et al.'s Gram-matrix route: U-centred Gram matrices (zero diagonal), their inner products."""
    def u_centre(gram):
        n = len(gram)
        gram = gram.copy()
        np.fill_diagonal(gram, 0)
        means = gram.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None] + means[None, :]
        np.fill_diagonal(gram, 0)
        return gram

    gx, gy = u_centre(x @ x.T), u_centre(y @ y.T)
    return np.sum(gx * gy) / (np.linalg.norm(gx) * np.linalg.norm(gy))


def compare_json(run_cli, store, *args):
    result = run_cli("--store", store, "compare", "--model", "tiny", "--layers", ",".join(LAYERS), "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stored_rows(store):
    db = actdb.open(store)
    return [db.activations("tiny", layer).astype(np.float64) for layer in LAYERS]


@pytest.mark.parametrize("method, oracle", [("cka", closed_form_cka), ("cka-debiased", unbiased_gram_cka)])
def test_cka_equals_the_closed_form(run_cli, store, method, oracle):
    report = compare_json(run_cli, store, "--method", method)
    assert report["names"] == [f"tiny/{layer}" for layer in LAYERS] and report["images"] == 20
    values = stored_rows(store)
    expected = [[oracle(a, b) for b in values] for a in values]
    np.testing.assert_allclose(report["matrix"], expected, rtol=1e-6, atol=1e-9)
    assert {(p["a"], p["b"]) for p in report["pairs"]} == {("tiny/conv1", "tiny/conv2"), ("tiny/conv1", "tiny/fc"),
                                                           ("tiny/conv2", "tiny/fc")}


def test_rsa_equals_scipy_pdist_and_spearmanr(run_cli, store):
    report = compare_json(run_cli, store, "--method", "rsa")
    labels = actdb.open(store).sql("SELECT label FROM images ORDER BY id").label
    rdms = [pdist(pd.DataFrame(v).groupby(labels.to_numpy()).mean().to_numpy(), "correlation")
            for v in stored_rows(store)]
    assert report["classes"] == 5 and all(len(r) == 10 for r in rdms)
    for i in range(3):
        for j in range(3):
            expected = 1.0 if i == j else spearmanr(rdms[i], rdms[j]).statistic
            assert report["matrix"][i][j] == pytest.approx(expected, abs=1e-9)


def test_where_and_max_images_choose_the_rows(run_cli, store):
    report = compare_json(run_cli, store, "--where", "label <> 'tench'", "--max-images", 10, "--seed", 2)
    assert report["images"] == 10
    db = actdb.open(store)
    kept = db.sql("SELECT id FROM images WHERE label <> 'tench' ORDER BY id").id.to_numpy()
    ids = np.sort(kept[np.random.default_rng(2).choice(len(kept), 10, replace=False)])
    values = [db.activations("tiny", layer, ids=ids).astype(np.float64) for layer in LAYERS]
    assert report["matrix"][0][2] == pytest.approx(closed_form_cka(values[0], values[2]), rel=1e-6)


def test_cka_invariances():
    from actdb.analytics.compare import linear_cka

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (50, 8))
    y = np.tanh(x @ rng.normal(0, 1, (8, 6))) + rng.normal(0, 0.3, (50, 6))
    rotation, _ = np.linalg.qr(rng.normal(0, 1, (8, 8)))
    for debiased in (False, True):
        value = linear_cka(x, y, debiased)
        assert 0 < value < 1
        assert linear_cka(x @ rotation, y, debiased) == pytest.approx(value, rel=1e-9)
        assert linear_cka(7.5 * x, 0.01 * y, debiased) == pytest.approx(value, rel=1e-9)
        assert linear_cka(x + 3.0, y, debiased) == pytest.approx(value, rel=1e-9)
        assert linear_cka(y, y, debiased) == pytest.approx(1.0, rel=1e-12)
    # not invariant to an arbitrary invertible map (CKA is not CCA): the check can fail
    assert linear_cka(x @ rng.normal(0, 1, (8, 8)), y) != pytest.approx(linear_cka(x, y), rel=1e-3)


def test_spearman_handles_ties_as_scipy_does():
    from actdb.analytics.compare import spearman

    a = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.5])
    b = np.array([2.0, 1.0, 4.0, 4.0, 3.0, 9.0, 1.0, 0.0])
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_heatmap_is_a_sensible_png(run_cli, store, tmp_path):
    compare_json(run_cli, store, "--plot", tmp_path / "cka.png")
    assert_sensible_png(tmp_path / "cka.png")


@pytest.mark.parametrize("args, message", [
    (("--model", "tiny", "--layers", "conv2"), "at least two different arrays"),
    (("--model", "tiny", "--layers", "conv2,conv9"), "no stored array tiny/conv9/mean"),
    (("--model", "tiny", "--layers", "conv1,conv2", "--where", "label = 'nothing'"), "only 0 image(s)"),
    (("--model", "tiny", "--layers", "conv1,conv2", "--method", "rsa", "--where", "label = 'tench'"),
     "rsa compares class centroids and needs at least 3"),
    (("--layer", "conv2"), "name the arrays one way"),
])
def test_bad_compare_input_is_one_line(run_cli, store, args, message):
    result = run_cli("--store", store, "compare", *args)
    one_line_error(result, message)


@pytest.mark.slow
def test_compare_reads_stored_rows_without_importing_tensorflow(store):
    from test_layers import probe

    report = probe("--store", store, "compare", "--model", "tiny", "--layers", "conv1,fc", "--json")
    assert report["exit_code"] == 0, report["output"]
    assert json.loads(report["output"])["images"] == 20
    assert not report["tensorflow"]

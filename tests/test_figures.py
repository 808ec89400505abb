"""Every figure actdb draws shows class and file names as they are written: a class named like
TeX (`$\\foo$`, which matplotlib's mathtext cannot parse) or in a script no installed font has
(CJK) is drawn, not a traceback or a font warning on stderr."""
from __future__ import annotations

import inspect
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from actdb import figures
from actdb.analytics import plots
from actdb.optimize import sheet
from actdb.report import charts
from conftest import invoke, write_image

TEX = "$\\foo$"  # mathtext: "Unknown symbol: \foo"
CJK = "猫"  # no glyph in DejaVu Sans


@pytest.fixture(scope="module")
def store(tiny_store_template, tiny_model_path, tmp_path_factory):
    """The tiny store plus two classes named as above, 3 images each."""
    store = tmp_path_factory.mktemp("names") / "store"
    shutil.copytree(tiny_store_template, store)
    rng = np.random.default_rng(8)
    for name in (TEX, CJK):
        for i in range(3):
            write_image(store.parent / "odd" / name / f"{i}.png", rng)
    ingested = invoke("--store", store, "ingest", store.parent / "odd", "--model", tiny_model_path, "--preprocess",
                      "tf", "--layers", "conv2,fc", "--quiet")
    assert ingested.exit_code == 0, ingested.output
    return store


def run_without_font_warnings(*args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke(*args)
    assert result.exit_code == 0, result.output
    glyphs = [str(w.message) for w in caught if "Glyph" in str(w.message)]
    assert not glyphs and "Glyph" not in result.stderr, glyphs or result.stderr
    return result


@pytest.mark.parametrize("command", [
    ["map", "--model", "tiny", "--layer", "conv2"],
    ["trajectory", "id:0", "--model", "tiny", "-k", 2, "--class", TEX],
    ["top-classes", "--model", "tiny", "--layer", "conv2", "--unit", 0],
    ["distances", "--model", "tiny", "--layer", "conv2", "--classes", f"{TEX},{CJK}", "--random-classes", 0],
])
def test_plots_draw_tex_and_cjk_class_names_as_text(store, tmp_path, command):
    path = tmp_path / "plot.png"
    run_without_font_warnings("--store", store, *command, "--plot", path)
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_the_report_draws_them_too(store, tmp_path):
    out = tmp_path / "site"
    run_without_font_warnings("--store", store, "report", "--model", "tiny", "--layers", "conv2", "--units", "0-1",
                              "--top", 3, "--out", out)
    heatmap = next(out.rglob("*.png"))  # the layer's class x unit map: every class name on its axis
    with Image.open(heatmap) as image:
        assert image.format == "PNG"


def test_a_label_is_kept_as_written_and_the_sessions_settings_are_left_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt
    import pandas as pd

    before = matplotlib.rcParams["text.parse_math"], list(matplotlib.rcParams["font.family"])
    frame = pd.DataFrame({"class": [TEX, CJK, "tabby"], "score": [3.0, 2.0, 1.0]})
    user_figure, ax = plt.subplots()  # a notebook's own axes, drawn into and shown later
    plots.top_classes_figure(frame, ax=ax)
    assert (matplotlib.rcParams["text.parse_math"], list(matplotlib.rcParams["font.family"])) == before
    user_figure.savefig(tmp_path / "shown.png")  # outside actdb's settings: no mathtext error
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert TEX in labels and CJK in labels and not any(t.get_parse_math() for t in ax.get_yticklabels())
    plt.close(user_figure)


@pytest.mark.parametrize("module", [plots, charts, sheet])
def test_every_function_that_draws_is_a_drawing(module):
    """The mechanism covers every figure: each public function making a figure is `@figures.drawing`."""
    for name, function in inspect.getmembers(module, inspect.isfunction):
        if function.__module__ != module.__name__ or name.startswith("_"):
            continue
        source = inspect.getsource(inspect.unwrap(function))
        if "figures.figure(" in source or "figures.axes(" in source or "plt.figure(" in source:
            assert getattr(function, "draws_plain_text", False), f"{module.__name__}.{name}"

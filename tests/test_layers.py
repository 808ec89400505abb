"""The house's layers (pyproject's import-linter contracts) and TensorFlow only where a model runs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_layer_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.slow
def test_a_store_module_importing_a_feature_breaks_the_contracts(tmp_path):
    """The check can fail: a copy of the package whose store reaches up into query."""
    shutil.copytree(ROOT / "actdb", tmp_path / "actdb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    arrays = tmp_path / "actdb" / "store" / "arrays.py"
    arrays.write_text(arrays.read_text() + "\nfrom ..query import api  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "actdb.store.arrays -> actdb.query.api" in result.stdout


# Runs a command in a fresh interpreter and reports whether TensorFlow was imported.
PROBE = """
import json, sys
from click.testing import CliRunner
from actdb.cli import cli
result = CliRunner().invoke(cli, sys.argv[1:])
print(json.dumps({"exit_code": result.exit_code, "output": result.output,
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def probe(*args) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def indexed_store(tmp_path_factory, tiny_model_path):
    from click.testing import CliRunner

    from actdb.cli import cli
    from conftest import make_imagenet_tree

    root = tmp_path_factory.mktemp("layers")
    source = make_imagenet_tree(root / "train", per_class=3, seed=2)
    store = root / "store"
    runner = CliRunner()
    ingest = ["--store", store, "ingest", source, "--model", tiny_model_path, "--preprocess", "tf", "--layers", "conv2"]
    assert runner.invoke(cli, [*map(str, ingest), "--quiet"]).exit_code == 0
    assert runner.invoke(cli, ["--store", str(store), "index"]).exit_code == 0
    return store


@pytest.mark.slow
def test_catalog_and_stored_row_commands_do_not_import_tensorflow(indexed_store, tmp_path):
    import numpy as np

    vector = tmp_path / "q.npy"
    np.save(vector, np.ones(16, np.float32))
    commands = [
        ("info",), ("sql", "SELECT count(*) AS n FROM images"), ("models",), ("index",),
        ("neighbors", "id:3", "-k", "2"), ("classes", "id:3", "--top", "2"), ("neighbors", vector, "-k", "2"),
    ]
    for command in commands:
        report = probe("--store", indexed_store, *command)
        assert report["exit_code"] == 0, (command, report["output"])
        assert not report["tensorflow"], f"`actdb {' '.join(map(str, command))}` imported TensorFlow"


@pytest.mark.slow
def test_a_query_by_image_file_does_import_tensorflow(indexed_store):
    """The probe can see an import: a file query must run the model."""
    import actdb

    path = actdb.open(indexed_store).images().path[0]
    report = probe("--store", indexed_store, "neighbors", path, "-k", "2")
    assert report["exit_code"] == 0, report["output"]
    assert report["tensorflow"]

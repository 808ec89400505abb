"""Issue 9: what a new user and a fuzzer found. Each test reproduces one case: SQL that reaches
outside the store, lost chunks served as data, tracebacks, a store the CLI could not query."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner
from scipy.spatial.distance import cdist

import actdb
from actdb.cli import cli
from conftest import invoke, make_imagenet_tree, one_line_error, write_image

ARRAY = ["--model", "tiny", "--layer", "conv2"]


def ingest_args(store, source, model, *extra):
    return ["--store", store, "ingest", source, "--model", model, "--preprocess", "tf", "--layers", "conv2,fc",
            "--quiet", *extra]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_path):
    """A labelled store (3 classes x 6 images, one file broken) with an l2 index."""
    root = tmp_path_factory.mktemp("hardening")
    source = make_imagenet_tree(root / "train", per_class=6, seed=9)
    (source / "n01440764" / "n01440764_9999.png").write_bytes(b"not a png")
    store = root / "store"
    result = invoke(*ingest_args(store, source, tiny_model_path))
    assert result.exit_code == 0, result.output
    assert invoke("--store", store, "index", *ARRAY).exit_code == 0
    return {"store": store, "source": source, "model": tiny_model_path, "root": root}


def copy_of(built, tmp_path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(built["store"], store)
    return store


# ---- security: user SQL reaches only the catalog -----------------------------------------------

OUTSIDE = ["SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('/etc/passwd')",
           "SELECT * FROM read_blob('/etc/passwd')", "SELECT * FROM glob('/etc/*')",
           "SELECT * FROM read_csv('https://example.com/x.csv')"]


@pytest.mark.parametrize("query", OUTSIDE)
def test_sql_cannot_read_files_or_load_extensions(built, query):
    one_line_error(invoke("--store", built["store"], "sql", query), "only the catalog")
    with pytest.raises(actdb.ActdbError, match="only the catalog"):
        actdb.open(built["store"]).sql(query)


@pytest.mark.parametrize("query", OUTSIDE[:4])
def test_where_cannot_read_files(built, query):
    where = f"path IN (SELECT * FROM ({query}) LIMIT 1) OR true"
    one_line_error(invoke("--store", built["store"], "neighbors", "id:0", *ARRAY, "--where", where),
                   "only the catalog")


def test_sql_still_reads_the_catalog_and_refuses_ambiguous_output(built):
    result = invoke("--store", built["store"], "sql", "SELECT path FROM images WHERE id = 0", "--json")
    assert result.exit_code == 0 and "\\/" not in result.output
    assert json.loads(result.stdout)[0]["path"].startswith(str(built["source"]))
    one_line_error(invoke("--store", built["store"], "sql", "SELECT 1; SELECT 2"), "one statement")
    one_line_error(invoke("--store", built["store"], "sql", "SELECT 1", "--json", "--csv"), "--json or --csv")
    assert "class_centroids" in invoke("sql", "--help").output


# ---- integrity -----------------------------------------------------------------------------------

def chunk_file(store: Path, layer: str = "conv2") -> Path:
    files = sorted((store / "activations.zarr").glob(f"tiny/*/{layer}/mean/c/*/*"))
    assert len(files) == 1  # 18 rows: one chunk
    return files[0]


def test_a_deleted_chunk_is_an_error_and_check_repair_restores_it(built, tmp_path):
    store = copy_of(built, tmp_path)
    original = actdb.open(store).activations("tiny", "conv2")
    chunk_file(store).unlink()
    with pytest.raises(actdb.ActdbError, match=r"chunk .*missing.*actdb check --repair"):
        actdb.open(store).activations("tiny", "conv2")
    one_line_error(invoke("--store", store, "neighbors", "id:0", *ARRAY, "-k", 3), "check --repair")
    report = json.loads(invoke("--store", store, "check", "--json").stdout)
    assert not report["ok"] and [p["problem"] for p in report["problems"]] == ["missing chunk"]
    assert report["problems"][0]["array"].endswith("conv2/mean")
    assert invoke("--store", store, "check").exit_code == 1
    indexed = "SELECT count(*) AS n FROM indexes i JOIN array_list a ON a.array_id = i.array_id WHERE a.layer = 'conv2'"
    assert actdb.open(store).sql(indexed).n[0] == 1
    repaired = invoke("--store", store, "check", "--repair")
    assert repaired.exit_code == 0 and "repaired" in repaired.output
    assert actdb.open(store).sql(indexed).n[0] == 0  # its index held the unmarked rows' vectors
    assert len(list((store / "indexes").glob("*.faiss"))) == 0
    rerun = invoke(*ingest_args(store, built["source"], built["model"], "--json"))
    summary = json.loads(rerun.stdout)
    assert summary["ingested"] == 18 and summary["failed"] == 1  # the broken file, not retried
    run = actdb.open(store).sql("SELECT ingested, failed FROM runs WHERE id = ?", [summary["run_id"]]).iloc[0]
    assert run.tolist() == [18, 1]  # the runs row says what the summary said
    np.testing.assert_array_equal(actdb.open(store).activations("tiny", "conv2"), original)
    assert json.loads(invoke("--store", store, "check", "--json").stdout)["ok"]


def test_a_corrupt_chunk_and_a_deleted_index_file_are_found_and_repaired(built, tmp_path):
    store = copy_of(built, tmp_path)
    original = actdb.open(store).activations("tiny", "fc")
    chunk = chunk_file(store, "fc")
    chunk.write_bytes(chunk.read_bytes()[:40] + b"garbage" * 10)
    index_file = next((store / "indexes").glob("*.faiss"))
    index_file.unlink()
    with actdb.open(store) as db:
        with pytest.raises(actdb.ActdbError, match=r"chunk .* cannot be decoded"):
            db.activations("tiny", "fc")
        report = db.check()
        assert sorted(p["problem"] for p in report["problems"]) == ["corrupt chunk", "missing index file"]
        assert db.check(repair=True)["repaired"]
        assert db.check()["ok"] and db.sql("SELECT count(*) AS n FROM indexes").n[0] == 0
    assert invoke(*ingest_args(store, built["source"], built["model"])).exit_code == 0
    np.testing.assert_array_equal(actdb.open(store).activations("tiny", "fc"), original)


def test_zarr_without_catalog_is_refused_touching_nothing(built, tmp_path):
    store = copy_of(built, tmp_path)
    (store / "catalog.duckdb").unlink()
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    one_line_error(invoke(*ingest_args(store, built["source"], built["model"])), "activations.zarr", "catalog")
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    one_line_error(invoke("--store", store, "info"), "activations.zarr")


def test_catalog_without_zarr_is_refused(built, tmp_path):
    store = copy_of(built, tmp_path)
    shutil.rmtree(store / "activations.zarr")
    one_line_error(invoke(*ingest_args(store, built["source"], built["model"])), "activations.zarr")


def test_a_corrupt_catalog_is_reported_as_such(built, tmp_path):
    store = copy_of(built, tmp_path)
    (store / "catalog.duckdb").write_bytes(b"this is not a database" * 100)
    message = one_line_error(invoke("--store", store, "info"), "not a DuckDB database")
    assert "another program" not in message


def test_sigterm_is_recorded_as_interrupted_with_exit_143(tmp_path, tiny_model_path):
    """In-process (a subprocess costs a TensorFlow import): SIGTERM arrives once rows are committed."""
    import threading

    source = make_imagenet_tree(tmp_path / "train", per_class=20, seed=4)
    store = tmp_path / "store"

    def ingested():
        try:
            return int(actdb.open(store).sql("SELECT max(ingested) AS n FROM runs").n[0] or 0)
        except (actdb.ActdbError, duckdb.Error):
            return 0

    usual_handler = signal.getsignal(signal.SIGTERM)

    def terminate_when_rows_are_committed():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if signal.getsignal(signal.SIGTERM) is not usual_handler and ingested() > 0:
                os.kill(os.getpid(), signal.SIGTERM)  # the ingest's handler is installed: it stops the run
                return
            time.sleep(0.01)

    sender = threading.Thread(target=terminate_when_rows_are_committed)
    sender.start()
    result = CliRunner().invoke(cli, list(map(str, ingest_args(store, source, tiny_model_path, "--batch-size", "2",
                                                                "--commit-seconds", "0"))))
    sender.join()
    assert result.exit_code == 143, result.output
    assert signal.getsignal(signal.SIGTERM) is usual_handler  # put back after the run
    db = actdb.open(store)
    run = db.sql("SELECT status, ingested FROM runs").iloc[0]
    assert run.status == "interrupted" and 0 < run.ingested < 60
    assert db.sql("SELECT count(*) AS n FROM done").n[0] == 2 * run.ingested  # two layers, all committed


def test_a_running_run_whose_process_is_gone_shows_as_killed(built, tmp_path):
    import socket

    store = copy_of(built, tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    con = duckdb.connect(str(store / "catalog.duckdb"))  # what kill -9 leaves behind
    con.execute("INSERT INTO runs (id, started, status, params) VALUES (7, current_timestamp, 'running', ?)",
                [json.dumps({"pid": gone.pid, "host": socket.gethostname()})])
    con.execute("INSERT INTO runs (id, started, status, params) VALUES (8, current_timestamp, 'running', ?)",
                [json.dumps({"pid": os.getpid(), "host": socket.gethostname()})])  # this process: alive
    con.close()
    statuses = {r["id"]: r["status"] for r in actdb.open(store).info()["runs"]}
    assert statuses[7] == "killed" and statuses[8] == "running"
    assert "killed" in invoke("--store", store, "info").output


# ---- a store the CLI could not query: one layer under two weights ----------------------------------

def test_weights_selects_among_arrays_that_differ_only_in_weights(built, tmp_path):
    store = copy_of(built, tmp_path)
    con = duckdb.connect(str(store / "catalog.duckdb"))  # the case: imagenet, then random:1 weights
    con.execute("UPDATE models SET weights = 'imagenet'")
    con.execute("INSERT INTO models SELECT 2, name, 'random:seed=1', weights_digest, preprocess, input_size, "
                "model_path, weights_path FROM models WHERE id = 1")
    con.execute("INSERT INTO arrays SELECT 99, 2, layer, reduce, channels, dtype, precision, resize, zarr_path "
                "FROM arrays WHERE layer = 'conv2'")
    con.close()
    message = one_line_error(invoke("--store", store, "neighbors", "id:0", *ARRAY), "several")
    assert "--weights random:1" in message and "--weights imagenet" in message
    result = invoke("--store", store, "neighbors", "id:0", *ARRAY, "--weights", "imagenet", "-k", 2, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["id"] == 0
    with pytest.raises(actdb.ActdbError) as error:
        actdb.open(store).activations("tiny", "conv2")
    assert "--" not in str(error.value) and "weights='random:1'" in str(error.value)
    vectors = actdb.open(store).activations("tiny", "conv2", weights="imagenet")
    for command in (("top-images", "--unit", 3, "-k", 4), ("top-classes", "--unit", 3), ("profile", "id:0")):
        one_line_error(invoke("--store", store, *command, *ARRAY), "several")
        picked = invoke("--store", store, *command, *ARRAY, "--weights", "imagenet", "--json")
        assert picked.exit_code == 0, picked.output
    top = json.loads(invoke("--store", store, "top-images", "--unit", 3, "-k", 4, *ARRAY, "--weights", "imagenet",
                            "--json").output)
    np.testing.assert_allclose([r["value"] for r in top], np.sort(vectors[:, 3])[::-1][:4], rtol=1e-6)
    one_line_error(invoke("--store", store, "compare", "--model", "tiny", "--layers", "conv2,fc"), "several")
    compared = invoke("--store", store, "compare", "--model", "tiny", "--layers", "conv2,fc", "--weights", "imagenet")
    assert compared.exit_code == 0 and "cka over" in compared.output


# ---- correctness ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(2)
    for i in range(5):
        write_image(root / "flat" / f"img{i}.png", rng)
    store = root / "store"
    assert invoke(*ingest_args(store, root / "flat", tiny_model_path)).exit_code == 0
    return store


def test_index_and_neighbors_work_without_labels(unlabelled):
    assert invoke("--store", unlabelled, "index", *ARRAY).exit_code == 0
    result = invoke("--store", unlabelled, "neighbors", "id:2", *ARRAY, "-k", 1, "--json")
    assert json.loads(result.stdout)[0]["id"] == 2
    one_line_error(invoke("--store", unlabelled, "classes", "id:2", *ARRAY), "no classes")


@pytest.mark.parametrize("by", ["centroid", "mean"])
def test_classes_leave_a_stored_query_out_of_its_class(built, by):
    db = actdb.open(built["store"])
    ids, vectors = db.activations("tiny", "conv2", return_ids=True)
    labels = db.images().set_index("id").label.loc[ids].to_numpy()
    frame = db.classes("id:4", model="tiny", layer="conv2", by=by)
    got = dict(zip(frame["class"], frame.distance))
    others = ids != 4
    for label in set(labels):
        members = vectors[(labels == label) & others]
        expected = (np.linalg.norm(vectors[ids == 4][0] - members.mean(axis=0, dtype=np.float64)) if by == "centroid"
                    else cdist(vectors[ids == 4], members)[0].mean())
        assert got[label] == pytest.approx(float(expected), rel=1e-5)


def test_an_ingest_where_every_file_fails_exits_nonzero(tmp_path, tiny_model_path):
    (tmp_path / "bad").mkdir()
    for i in range(2):
        (tmp_path / "bad" / f"x{i}.jpg").write_bytes(b"nope")
    one_line_error(invoke(*ingest_args(tmp_path / "store", tmp_path / "bad", tiny_model_path)),
                   "none of the 2 listed images")


def test_info_counts_stored_rows_and_failures_apart(built):
    summary = json.loads(invoke("--store", built["store"], "info", "--json").stdout)
    assert summary["images"] == 18 and summary["failed_images"] == 1
    assert {c["label"]: c["images"] for c in summary["top_classes"]}["tench"] == 6
    run = summary["runs"][-1]
    assert run["failed"] == 1 and run["ingested"] == 18


# ---- tracebacks to one-line errors ----------------------------------------------------------------

def test_symlink_loop_at_the_top_of_a_source(tmp_path, tiny_model_path):
    source = make_imagenet_tree(tmp_path / "src", per_class=1)
    (source / "loop").symlink_to(source / "loop")
    one_line_error(invoke(*ingest_args(tmp_path / "store", source, tiny_model_path)), "loop")
    assert not (tmp_path / "store").exists()


def test_bad_npy_queries(built, tmp_path):
    cases = {"strings.npy": np.array(["a"] * 16), "nan.npy": np.full(16, np.nan)}
    for name, value in cases.items():
        np.save(tmp_path / name, value)
    (tmp_path / "text.npy").write_text("1, 2, 3")
    run = lambda name: invoke("--store", built["store"], "neighbors", tmp_path / name, *ARRAY)  # noqa: E731
    one_line_error(run("strings.npy"), "numbers")
    assert "allow_pickle" not in one_line_error(run("text.npy"), "not a NumPy .npy file")
    assert "stored" not in one_line_error(run("nan.npy"), "NaN")


def test_corrupt_image_query_and_predict_id(built, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 50)
    message = one_line_error(invoke("--store", built["store"], "neighbors", broken, *ARRAY), "broken.png")
    assert "{{" not in message and "corrupt" in message
    result = invoke("--store", built["store"], "predict", "id:3", "--models", built["model"], "--top", 2, "--json")
    assert result.exit_code == 0, result.output
    by_id = json.loads(result.stdout)
    path = actdb.open(built["store"]).sql("SELECT path FROM images WHERE id = 3").path[0]
    by_file = json.loads(invoke("predict", path, "--models", built["model"], "--top", 2, "--json").stdout)
    assert [r["query"] for r in by_id] == ["id:3"] * 2
    assert [{**r, "query": 0} for r in by_id] == [{**r, "query": 0} for r in by_file]
    one_line_error(invoke("predict", "id:3", "--models", built["model"]), "store")


def test_id_of_a_failed_image_says_why(built):
    failed = actdb.open(built["store"]).sql("SELECT image_id FROM errors").image_id[0]
    message = one_line_error(invoke("--store", built["store"], "neighbors", f"id:{failed}", *ARRAY), "failed")
    assert "ingest it" not in message and "not an image" in message


# ---- messages ----------------------------------------------------------------------------------

def test_missing_store_message_names_a_working_command(tmp_path):
    message = one_line_error(invoke("--store", tmp_path / "nothing", "info"))
    assert f"actdb --store {tmp_path / 'nothing'} ingest SOURCE" in message


@pytest.mark.slow
def test_models_json_and_ingest_default_model_works_offline():
    result = invoke("models", "--json")
    assert "efficientnet_lite0" in {m["name"] for m in json.loads(result.stdout)}
    from actdb.ingest.run import IngestOptions
    from actdb.models import load_model

    layer = load_model(IngestOptions.model, "random").keras_model.get_layer(IngestOptions.layers)
    assert IngestOptions.model == "efficientnet_lite0" and layer.name == "avg_pool"
    defaults = {p.name: p.default for p in cli.commands["ingest"].params}
    assert (defaults["model"], defaults["layers"]) == (IngestOptions.model, IngestOptions.layers)


# ---- the Python API -------------------------------------------------------------------------------

def test_api_vectors_strings_and_unknown_classes(built):
    with actdb.open(built["store"]) as db:
        ids, vectors = db.activations("tiny", "conv2", return_ids=True)
        frame = db.neighbors(vectors[[5, 7]], model="tiny", layer="conv2", k=1)
        assert frame.id.tolist() == ids[[5, 7]].tolist()  # ids skip the image that failed
        assert db.neighbors(vectors[5], model="tiny", layer="conv2", k=1).id.tolist() == [5]
        assert db.classes(vectors[5], model="tiny", layer="conv2").shape[0] == 3
        tench = db.activations("tiny", "conv2", classes="tench")
        assert len(tench) == 6
        with pytest.raises(actdb.ActdbError, match="espresso"):
            db.activations("tiny", "conv2", classes="espresso")
        with pytest.raises(actdb.ActdbError, match=r"run db\.index\(model='tiny', layer='conv2', metric='cosine'\)"):
            db.neighbors("id:0", model="tiny", layer="conv2", metric="cosine")
        report = db.index(model="tiny", layer="conv2", recall=0.9)
        assert report["action"] == "up to date"


def test_a_deleted_array_is_an_error_and_check_repair_lets_ingest_rebuild_it(built, tmp_path):
    store = copy_of(built, tmp_path)
    original = actdb.open(store).activations("tiny", "conv2")
    shutil.rmtree(chunk_file(store).parents[2])  # tiny/WEIGHTS/conv2/mean
    one_line_error(invoke("--store", store, "neighbors", "id:0", *ARRAY), "is missing", "check --repair")
    report = actdb.open(store).check(repair=True)
    assert [p["problem"] for p in report["problems"]] == ["missing array"]
    assert actdb.open(store).check()["ok"]
    assert invoke(*ingest_args(store, built["source"], built["model"])).exit_code == 0
    np.testing.assert_array_equal(actdb.open(store).activations("tiny", "conv2"), original)

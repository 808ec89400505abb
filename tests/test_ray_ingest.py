"""--engine ray writes the store --engine local writes: equal arrays and catalog rows, through
a worker that dies, a driver killed with SIGKILL, and a second writer.

One local Ray (2 CPUs, no dashboard, a small object store) is shared by these tests. The
model stores two layers of 1000+ channels; chunks of 1/16 the usual bytes (16 rows, in this
module and in the commands it starts) make the 78 images five shards (tasks) for two workers.
The killed driver joins that Ray through --address, as a driver joins a cluster.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import numpy as np
import pytest

import actdb
from actdb.ingest.engines.ray import RayEngine, ShardWorker
from actdb.store import arrays
from actdb.store.locks import writer_lock
from conftest import invoke, make_imagenet_tree, random_seed

pytestmark = pytest.mark.slow
LAYERS = "wide,predictions"
CHUNK_ROWS = 16
CHUNK_BYTES = CHUNK_ROWS * 1024 * 4  # 16 rows of 1024 (and of 1000) float32 channels
N_IMAGES = 78
N_SHARDS = 5  # ceil(78 / 16)

# `actdb` in a process of its own, with this module's chunks. As the killed driver
# (COMMIT_ONE_SHARD set), it commits the first shard a worker reports and then waits while the
# workers write on: it is killed mid-run with exactly one shard committed, however slow the
# machine (no race between the kill and the end of the run).
ACTDB = f"""
import os, time
from actdb.store import arrays
arrays.TARGET_CHUNK_BYTES, arrays.MIN_CHUNK_ROWS = {CHUNK_BYTES}, {CHUNK_ROWS}
if os.environ.get("COMMIT_ONE_SHARD"):
    from actdb.ingest.engines import ray as engine

    add = engine._Committer.add

    def add_one_then_wait(committer, result):
        if committer.ingested:
            time.sleep(600)  # killed meanwhile
        add(committer, result)

    engine._Committer.add = add_one_then_wait
from actdb.cli import main
main()
"""


def actdb_process(*args) -> list[str]:
    return [sys.executable, "-c", ACTDB, *map(str, args)]


@pytest.fixture(scope="module", autouse=True)
def small_chunks():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(arrays, "TARGET_CHUNK_BYTES", CHUNK_BYTES)
        patch.setattr(arrays, "MIN_CHUNK_ROWS", CHUNK_ROWS)
        yield


CATALOG_QUERIES = {
    "images": "SELECT id, path, content_hash, wnid, class_index, label, split, width, height FROM images ORDER BY id",
    "done": "SELECT a.layer, d.image_id FROM done d JOIN arrays a ON a.id = d.array_id ORDER BY ALL",
    "predictions": "SELECT image_id, rank, class_index, probability FROM predictions ORDER BY ALL",
    "arrays": "SELECT layer, reduce, channels, dtype, precision, resize, zarr_path FROM arrays ORDER BY layer",
    "errors": "SELECT count(*) AS n FROM errors",
    "chunk digests": "SELECT a.layer, c.chunk, c.rows, c.digest FROM chunk_digests c JOIN arrays a ON a.id = c.array_id "
                     "ORDER BY ALL",
}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    import keras

    with random_seed(2):
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1")(inputs)
        x = keras.layers.Conv2D(1024, 1, activation="relu", name="wide")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        outputs = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    path = tmp_path_factory.mktemp("models") / "wide.keras"
    keras.Model(inputs, outputs, name="wide").save(path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_imagenet_tree(tmp_path_factory.mktemp("data") / "train", per_class=N_IMAGES // 3, seed=5)


def ingest_args(store, source, model, *extra):
    return ["--store", store, "ingest", source, "--model", model, "--preprocess", "tf", "--layers", LAYERS,
            "--predictions", "--batch-size", 16, "--commit-seconds", 0, "--quiet", *extra]


@pytest.fixture(scope="module")
def local_store(tmp_path_factory, dataset, wide_model):
    """The local engine's store, made with one TensorFlow thread, as each Ray worker here runs
    (one CPU each): a float sum split over two threads rounds differently (measured: 8% of
    this model's softmax outputs differ in the last bit between 1 and 2 threads), so the
    engines are compared at equal threads per process."""
    store = tmp_path_factory.mktemp("local") / "store"
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    result = subprocess.run(actdb_process(*ingest_args(store, dataset, wide_model)), env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return store


def assert_same_store(store, reference):
    db, ref = actdb.open(store), actdb.open(reference)
    for layer in LAYERS.split(","):
        ours, theirs = db.activations("wide", layer), ref.activations("wide", layer)
        assert ours.shape == (N_IMAGES, 1000 if layer == "predictions" else 1024)
        np.testing.assert_array_equal(ours, theirs)  # bit for bit, not close
    for name, query in CATALOG_QUERIES.items():
        ours, theirs = db.sql(query), ref.sql(query)
        assert len(ours) == len(theirs) and ours.equals(theirs), name
    counts = db.sql("SELECT count(*) AS n, count(DISTINCT (array_id, image_id)) AS distinct_n FROM done").iloc[0]
    assert counts.tolist() == [2 * N_IMAGES, 2 * N_IMAGES]
    report = db.check()
    assert report["ok"] and report["checked"]["digests"] == report["checked"]["chunks"] == 2 * N_SHARDS, report


def worker_that_dies_once(marker: str):
    """A test-only actor: the first to finish a shard's writes dies before the driver hears of
    them. Defined in a function, so Ray ships the class itself to its workers."""

    class DiesOnce(ShardWorker):
        def _shard(self, *args):
            result = super()._shard(*args)
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return result

    return DiesOnce


def test_ray_engine_writes_the_local_engines_store_even_when_a_worker_dies(
        local_ray, tmp_path, dataset, wide_model, local_store, monkeypatch):
    marker = tmp_path / "worker-died"
    monkeypatch.setattr(RayEngine, "worker_class", worker_that_dies_once(str(marker)))
    store = tmp_path / "store"
    result = invoke(*ingest_args(store, dataset, wide_model, "--engine", "ray", "--workers", 2, "--json"))
    assert result.exit_code == 0, result.output
    assert marker.exists(), "no worker died: the retry was not tested"
    summary = json.loads(result.stdout)
    assert summary["engine"] == "ray" and summary["ingested"] == N_IMAGES and summary["failed"] == 0
    assert sum(w["images"] for w in summary["workers"]) == N_IMAGES  # the dead worker's shard counted once
    assert sum(w["shards"] for w in summary["workers"]) == N_SHARDS
    assert all(w["images_per_s"] > 0 for w in summary["workers"])
    assert_same_store(store, local_store)

    again = json.loads(invoke(*ingest_args(store, dataset, wide_model, "--engine", "ray", "--json")).stdout)
    assert again["ingested"] == 0 and again["skipped"] == N_IMAGES
    assert_same_store(store, local_store)


def done_rows(store):
    try:
        return actdb.open(store).sql("SELECT count(*) AS n FROM done").n[0]
    except (actdb.ActdbError, duckdb.Error):
        return 0


def test_a_killed_driver_resumes_to_the_same_store(local_ray, tmp_path, dataset, wide_model, local_store):
    store = tmp_path / "store"
    address = local_ray.get_runtime_context().gcs_address
    command = actdb_process(*ingest_args(store, dataset, wide_model, "--engine", "ray", "--workers", 2,
                                         "--address", address))
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "COMMIT_ONE_SHARD": "1"},
                              start_new_session=True)  # its own process group, so nothing of it outlives the test
    try:
        deadline = time.monotonic() + 240  # it waits after its first commit: no race with the run's end
        while driver.poll() is None and done_rows(store) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert driver.poll() is None, f"the driver ended before the kill: {driver.stderr.read()[-2000:]}"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed_at = done_rows(store)
    assert 0 < killed_at < 2 * N_IMAGES, f"not killed mid-run: {killed_at} done rows"

    result = invoke(*ingest_args(store, dataset, wide_model, "--engine", "ray", "--workers", 2, "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ingested"] + summary["skipped"] == N_IMAGES and summary["skipped"] > 0
    assert_same_store(store, local_store)
    statuses = actdb.open(store).sql("SELECT status FROM runs ORDER BY id").status.tolist()
    assert statuses == ["killed", "done"]  # the rerun found the dead driver's run still "running"


def test_a_second_writer_is_refused(local_ray, tmp_path, dataset, wide_model):
    store = tmp_path / "store"
    store.mkdir()
    with writer_lock(store, "actdb ingest"):
        result = invoke(*ingest_args(store, dataset, wide_model, "--engine", "ray"))
    assert result.exit_code != 0
    assert "is being written by pid" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (store / "catalog.duckdb").exists()


def test_without_ray_the_engine_says_how_to_install_it(tmp_path, dataset, wide_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = invoke(*ingest_args(tmp_path / "store", dataset, wide_model, "--engine", "ray"))
    assert result.exit_code != 0
    assert "pip install 'actdb[ray]'" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()


def test_the_store_probe_tells_a_node_that_does_not_share_the_store(tmp_path):
    from actdb.ingest.engines.ray import _probe_store

    shared, elsewhere = tmp_path / "shared", tmp_path / "same-name-on-another-node"
    (shared / "activations.zarr").mkdir(parents=True)
    (elsewhere / "activations.zarr").mkdir(parents=True)
    (shared / ".ray-probe-abc").write_text("abc")  # what the driver wrote
    assert _probe_store(str(shared), "abc") is None
    assert _probe_store(str(elsewhere), "abc") == "it does not see the store's files"
    (elsewhere / ".ray-probe-abc").write_text("old")
    assert _probe_store(str(elsewhere), "abc") == "it sees another file at that path"
    assert list((shared / "activations.zarr").iterdir()) == []  # the probe cleans up after itself


@pytest.fixture
def a_node_that_dies(local_ray, monkeypatch):
    """Ray lists one more node alive than it has; `dead()` makes the next listings say it died
    (so its pinned probe fails with TaskUnschedulableError, as on a cluster that lost it)."""
    listed = local_ray.nodes
    ghost = {"NodeID": os.urandom(28).hex(), "Alive": True, "NodeManagerAddress": "10.0.0.99"}
    state = {"alive": True, "listings": 0}

    def nodes():
        state["listings"] += 1
        alive = state["alive"] and (state["listings"] == 1 or not state.get("dies_after_listing"))
        return [*listed(), {**ghost, "Alive": alive}]

    monkeypatch.setattr(local_ray, "nodes", nodes)
    return state


def test_a_node_lost_while_the_store_is_probed_is_left_out_not_a_failed_run(a_node_that_dies, local_ray, tmp_path):
    from actdb.ingest.engines.ray import check_store

    store = tmp_path / "store"
    (store / "activations.zarr").mkdir(parents=True)
    a_node_that_dies["dies_after_listing"] = True
    check_store(local_ray, store)  # the real node answers; the lost one counts as gone
    assert a_node_that_dies["listings"] >= 2 and not list(store.glob(".ray-probe-*"))


def test_a_probe_lost_on_a_node_still_listed_alive_is_refused_in_one_line(a_node_that_dies, local_ray, tmp_path):
    from actdb.errors import ActdbError
    from actdb.ingest.engines.ray import check_store

    store = tmp_path / "store"
    (store / "activations.zarr").mkdir(parents=True)
    lost = r"^the store probe on Ray node 10\.0\.0\.99 was lost .* run the ingest again$"
    with pytest.raises(ActdbError, match=lost):
        check_store(local_ray, store)

"""kill -9 at several moments of a real ingest subprocess, then resume: no lost or
duplicate rows, and the arrays equal those of an uninterrupted run."""
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
from conftest import make_imagenet_tree

pytestmark = pytest.mark.slow
LAYERS = "conv1,conv2"


def ingest_command(store, source, model):
    return [sys.executable, "-m", "actdb", "--store", str(store), "ingest", str(source), "--model", str(model),
            "--preprocess", "tf", "--layers", LAYERS, "--batch-size", "4", "--commit-seconds", "0", "--quiet",
            "--json"]


def count(store, sql):
    """Peek at the catalog the way a second process would; None while it cannot be read yet."""
    try:
        return actdb.open(store).sql(sql).iloc[0, 0]
    except (actdb.ActdbError, duckdb.Error):
        return None


def kill_when(process, store, ready, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if ready(store):
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_imagenet_tree(tmp_path_factory.mktemp("data") / "train", per_class=40, seed=3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset, tiny_model_path):
    """An uninterrupted run, read by another process all along (the way `actdb info` would)."""
    store = tmp_path_factory.mktemp("reference") / "store"
    process = subprocess.Popen(ingest_command(store, dataset, tiny_model_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    try:
        while process.poll() is None:
            n = count(store, "SELECT count(*) FROM done")
            if n:
                vectors = actdb.open(store).activations("tiny", "conv1")
                seen.append((n, len(vectors), int(np.isnan(vectors).sum())))
            time.sleep(0.05)
    finally:
        process.wait()
    assert process.returncode == 0
    db = actdb.open(store)
    return {"seen": seen, **{layer: db.activations("tiny", layer, ids=np.arange(120)) for layer in LAYERS.split(",")}}


def test_readers_see_committed_rows_during_an_ingest(reference):
    seen = reference["seen"]
    assert any(0 < n < 240 for n, _, _ in seen), f"no reader saw the ingest half done: {seen}"
    assert all(rows > 0 and nans == 0 for _, rows, nans in seen)  # every row said to be done is really there


def test_killed_ingests_resume_to_the_uninterrupted_result(tmp_path, dataset, tiny_model_path, reference):
    store = tmp_path / "store"
    kill_points = [
        lambda: (count(store, "SELECT count(*) FROM images") or 0) > 0,  # images registered, nothing computed
        lambda: (count(store, "SELECT count(*) FROM done") or 0) > done_before,  # after a commit
        lambda: (count(store, "SELECT count(*) FROM done") or 0) >= done_before + 40,  # well into the run
    ]
    done_before = 0
    for ready in kill_points:
        process = subprocess.Popen(ingest_command(store, dataset, tiny_model_path),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert kill_when(process, store, lambda _: ready()), "the ingest ended before the kill point"
        done_before = count(store, "SELECT count(*) FROM done")
        assert done_before < 240
        report = actdb.open(store).check()  # what was committed is what the chunks hold, whenever the kill came
        assert report["ok"] and report["checked"]["digests"] == report["checked"]["chunks"], report

    finished = subprocess.run(ingest_command(store, dataset, tiny_model_path), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(finished.stdout)
    assert summary["ingested"] + summary["skipped"] == 120 and summary["failed"] == 0 and summary["skipped"] > 0

    db = actdb.open(store)
    images = db.sql("SELECT count(*) AS n, count(DISTINCT path) AS paths, max(id) AS top FROM images").iloc[0]
    assert images.tolist() == [120, 120, 119]
    assert db.sql("SELECT count(*) AS n FROM done").n[0] == 240
    for layer in LAYERS.split(","):
        np.testing.assert_array_equal(db.activations("tiny", layer, ids=np.arange(120)), reference[layer])
    statuses = db.sql("SELECT status FROM runs ORDER BY id").status.tolist()
    assert statuses == ["killed"] * 3 + ["done"]  # a killed run cannot mark itself; the next writer does

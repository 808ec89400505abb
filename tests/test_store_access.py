"""Issue 17: a read-only store answers every command that only reads (no lock file needed) and
refuses a write in one line; a command that will write is refused, or waits with --wait,
before any work while another process writes the store.

Read-only is made for real, never by patching: a read-only bind mount in a private mount
namespace (`unshare -m`, or `unshare -r -m` for a normal user, so the filesystem says EROFS
even to root), and a store without write permission (as root, with the capabilities that
ignore permissions dropped: `setpriv --bounding-set=-dac_override,...`). Each runs the
commands in one subprocess and reports back as JSON."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

import actdb
from conftest import invoke, one_line_error

REPO = Path(__file__).resolve().parents[1]
ARRAY = ["--model", "tiny", "--layer", "conv2"]

READS = {
    "info": ["info", "--json"],
    "sql": ["sql", "SELECT count(*) AS n FROM done", "--json"],
    "check": ["check", "--json"],
    "neighbors": ["neighbors", "id:0", *ARRAY, "-k", "3", "--json"],
    "classes": ["classes", "id:0", *ARRAY, "--json"],
    "distances": ["distances", *ARRAY, "--json"],
    "map": ["map", *ARRAY, "--method", "pca", "--json"],
    "map cached": ["map", *ARRAY, "--method", "tsne", "--json"],
    "top-images": ["top-images", *ARRAY, "--unit", "0", "--json"],
    "top-classes cached": ["top-classes", *ARRAY, "--unit", "0", "--json"],
    "top-classes computed": ["top-classes", "--model", "tiny", "--layer", "fc", "--unit", "0", "--json"],
    "profile": ["profile", "id:0", *ARRAY, "--json"],
    "compare": ["compare", "--model", "tiny", "--layers", "conv2,fc", "--json"],
}
WRITES = {
    "index": ["index", *ARRAY, "--rebuild"],
    "check --repair": ["check", "--repair"],
    "ingest": ["ingest", "/nonexistent/source", "--model", "tiny", "--layers", "fc"],
    "optimize": ["optimize", "--model", "/nonexistent/model.keras", "--layer", "conv2", "--units", "0"],
}

RUNNER = """
import json, sys
from pathlib import Path
from click.testing import CliRunner
from actdb.cli import cli

store, commands = sys.argv[1], json.loads(sys.argv[2])
try:
    (Path(store) / "probe").write_text("x")
    refused = None
except OSError as exc:
    refused = exc.strerror
results = {}
for name, args in commands.items():
    result = CliRunner().invoke(cli, ["--store", store, *args])
    crashed = result.exception if not isinstance(result.exception, (SystemExit, type(None))) else None
    results[name] = {"exit_code": result.exit_code, "output": result.output, "stdout": result.stdout,
                     "crashed": repr(crashed) if crashed else None}
print(json.dumps({"write_refused": refused, "results": results}))
"""


@pytest.fixture(scope="module")
def readable(tiny_store, tmp_path_factory):
    """The tiny store with what the reads use already made: an index, a t-SNE map, unit stats of
    conv2 (not of fc: that one is computed by the read). What each read prints on a writable
    copy is what it must print on a read-only one."""
    for args in (["index", *ARRAY], READS["map cached"], READS["top-classes cached"]):
        result = invoke("--store", tiny_store, *args)
        assert result.exit_code == 0, result.output
    scratch = tmp_path_factory.mktemp("writable") / "store"
    shutil.copytree(tiny_store, scratch)
    expected = {name: invoke("--store", scratch, *args).stdout for name, args in READS.items()}
    return {"store": tiny_store, "expected": expected}


def run_read_only(wrapper: list[str], store: Path, env: dict | None = None) -> dict:
    commands = {**READS, **WRITES}
    process = subprocess.run([*wrapper, sys.executable, "-c", RUNNER, str(store), json.dumps(commands)],
                             capture_output=True, text=True, cwd=REPO, timeout=600,
                             env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1",
                                  **(env or {})})
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def read_only_filesystem(store: Path):
    """The store bind-mounted read-only onto itself, in a mount namespace of its own (a normal
    user gets one inside a user namespace of its own, where it is root)."""
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    probe = subprocess.run([*unshare, "sh", "-c", f"mount --bind -o ro '{store}' '{store}'"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private read-only bind mount here: {probe.stderr.strip()[:200]}")
    script = f'mount --bind -o ro "{store}" "{store}" && exec "$@"'
    return [*unshare, "sh", "-c", script, "sh"], store, {}


# Root reads and writes whatever the permissions say: these capabilities are what lets it.
DAC_CAPABILITIES = "-dac_override,-dac_read_search"


def without_write_permission(store: Path):
    """The copy made unwritable (a-w). A normal user is then refused by the permissions; root
    runs without the capabilities that ignore them, so that it stays the owner of every file
    and folder on the way (a private, 0700 checkout included) and is refused like anyone."""
    for path in [store, *store.rglob("*")]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    if os.geteuid() != 0:
        return [], store, {}
    if shutil.which("setpriv") is None:
        pytest.skip("root ignores permissions, and setpriv (util-linux) is not here to drop that")
    wrapper = ["setpriv", f"--inh-caps={DAC_CAPABILITIES}", f"--ambient-caps={DAC_CAPABILITIES}",
               f"--bounding-set={DAC_CAPABILITIES}"]
    probe = subprocess.run([*wrapper, sys.executable, "-c", "import sys, click, actdb; open(sys.argv[1], 'a')",
                            str(store / "x")], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)})  # as run_read_only runs it
    if "PermissionError" not in probe.stderr:
        pytest.skip("root without its permission override cannot run this Python here, or still writes: "
                    f"{(probe.stderr or 'a write worked').strip()[-200:]}")
    return wrapper, store, {}


def files_of(store: Path) -> dict:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}


def without_size(text: str):
    document = json.loads(text)
    if isinstance(document, dict):
        document.pop("bytes_on_disk", None)
        document.pop("store", None)
    return document


@pytest.mark.slow
@pytest.mark.parametrize("how", ["read-only filesystem", "no write permission"])
def test_every_read_works_on_a_read_only_store_and_a_write_is_one_line(readable, tmp_path, how):
    store = tmp_path / "store"
    shutil.copytree(readable["store"], store)
    (store / "catalog.lock").unlink(missing_ok=True)  # reading must not need a lock file either
    wrapper, store, env = (read_only_filesystem(store) if how == "read-only filesystem"
                           else without_write_permission(store))
    before = files_of(store)
    report = run_read_only(wrapper, store, env)
    assert report["write_refused"] in ("Read-only file system", "Permission denied")  # honestly read-only
    results = report["results"]
    for name in READS:
        result = results[name]
        assert result["crashed"] is None and result["exit_code"] == 0, (name, result)
        assert without_size(result["stdout"]) == without_size(readable["expected"][name]), name
    with duckdb.connect(str(store / "catalog.duckdb"), read_only=True) as con:
        assert json.loads(results["sql"]["stdout"]) == [{"n": con.execute("SELECT count(*) FROM done").fetchone()[0]}]
    for name in WRITES:
        result = results[name]
        assert result["crashed"] is None and result["exit_code"] == 1, (name, result)
        lines = [line for line in result["output"].splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: store ") and "is read-only here" in lines[0], lines
        assert f"actdb {name.split(' ')[0]}" in lines[0]  # names the command that would write
    assert files_of(store) == before


# ---- writers check before they work -------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from actdb.store.locks import writer_lock

store, release = Path(sys.argv[1]), Path(sys.argv[2])
with writer_lock(store, "actdb ingest"):
    print("held", flush=True)
    while not release.exists():
        time.sleep(0.02)
"""


class Holder:
    """Another process holding the store's write lock, as an ingest does, until released."""

    def __init__(self, store: Path, tmp_path: Path):
        self.release_file = tmp_path / "release"
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), str(self.release_file)],
                                        stdout=subprocess.PIPE, text=True, cwd=REPO,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.process.stdout.readline().strip() == "held"
        self.released_at = None

    def release(self) -> None:
        self.released_at = time.monotonic()
        self.release_file.write_text("")
        self.process.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.release()


@pytest.fixture
def busy_store(tiny_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    with Holder(store, tmp_path) as holder:
        yield store, holder


def no_work(*args, **kwargs):
    raise AssertionError("a model was loaded while another process writes the store")


@pytest.mark.slow
def test_optimize_is_refused_before_any_work_naming_the_writer(busy_store, tiny_model_path, monkeypatch):
    store, holder = busy_store
    monkeypatch.setattr("actdb.models.load_model", no_work)
    started = time.monotonic()
    line = one_line_error(invoke("--store", store, "optimize", "--model", tiny_model_path, "--preprocess", "tf",
                                 "--layer", "conv2", "--units", "0", "--steps", "2", "--size", "32"),
                          f"pid {holder.process.pid} (actdb ingest", "actdb optimize did nothing", "--wait")
    assert time.monotonic() - started < 5, line
    with pytest.raises(actdb.ActdbError, match=f"pid {holder.process.pid}.*wait=True"):
        actdb.open(store).optimize(model=str(tiny_model_path), preprocess="tf", layer="conv2", units="0", steps=2)


@pytest.mark.slow
def test_ingest_index_and_repair_are_refused_before_any_work(busy_store, tiny_model_path, monkeypatch):
    store, holder = busy_store
    monkeypatch.setattr("actdb.ingest.run.load_model", no_work)
    source = store.parent / "nothing-listed-yet"
    for args in (["ingest", source, "--model", tiny_model_path, "--preprocess", "tf", "--layers", "fc"],
                 ["index", *ARRAY], ["check", "--repair"]):
        one_line_error(invoke("--store", store, *args), f"pid {holder.process.pid} (actdb ingest",
                       f"actdb {args[0]}", "did nothing", "--wait")
    assert invoke("--store", store, "check").exit_code == 0  # a reader still works


@pytest.mark.slow
def test_wait_waits_for_the_writer_and_then_writes(busy_store, capfd):
    store, holder = busy_store
    timer = threading.Timer(1.5, holder.release)
    timer.start()
    try:
        report = actdb.open(store).index(model="tiny", layer="fc", wait=True)
        finished = time.monotonic()
    finally:
        timer.join()
    assert holder.released_at is not None and finished > holder.released_at
    assert report["n_rows"] == 30
    assert f"actdb index waits for pid {holder.process.pid} (actdb ingest" in capfd.readouterr().err
    with duckdb.connect(str(store / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("SELECT n_rows FROM indexes i JOIN arrays a ON a.id = i.array_id "
                           "WHERE a.layer = 'fc'").fetchone() == (30,)


@pytest.mark.slow
def test_the_cli_passes_wait(busy_store):
    store, holder = busy_store
    timer = threading.Timer(1.0, holder.release)
    timer.start()
    try:
        result = invoke("--store", store, "check", "--repair", "--wait", "--json")
    finally:
        timer.join()
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"], result.output


def test_a_second_writer_in_one_process_is_refused_too(tiny_store, tmp_path):
    """The up-front lock is re-entrant only inside one writing command, never across two."""
    from actdb.store.locks import writer_lock

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    with writer_lock(store, "actdb ingest"):
        one_line_error(invoke("--store", store, "index", *ARRAY), f"pid {os.getpid()} (actdb ingest")
    assert invoke("--store", store, "index", *ARRAY).exit_code == 0
    assert np.isfinite(actdb.open(store).activations("tiny", "conv2")).all()

"""Parameter constraints declared once next to each command (actdb.params) and checked once at
its door: a bad value is one line naming the keyword for notebook users and the flag on the
command line, before any work; NumPy integers are integers; text is not a boolean."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from scipy.spatial.distance import cdist

import actdb
from actdb import database
from actdb.errors import ActdbError
from actdb.params import AnyOf, Boolean, Integer, Names, Real, Seed, check, declared
from conftest import invoke, one_line_error

ARRAY = {"model": "tiny", "layer": "conv2"}
DROP = "1=1; DROP TABLE images"

# (command, its required arguments, the bad keyword and value)
BAD = [
    ("neighbors", {"queries": "id:0", **ARRAY}, "k", 0),
    ("neighbors", {"queries": "id:0", **ARRAY}, "k", 2.5),
    ("neighbors", {"queries": "id:0", **ARRAY}, "where", DROP),
    ("neighbors", {"queries": "id:0", **ARRAY}, "metric", "l3"),
    ("classes", {"queries": "id:0", **ARRAY}, "class_name", 5),
    ("classes", {"queries": "id:0", **ARRAY}, "by", "nearest"),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "seed", -1),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "seed", 1.5),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "seed", 2**40),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "layers", 5),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "layers", ""),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "class_name", 5),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "plot", 5),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "plot", "trajectory.jpg"),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "exact", "yes"),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "k", 0),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "calibration", 1.0),
    ("trajectory", {"queries": "id:0", "model": "tiny"}, "calibration_where", DROP),
    ("map", ARRAY, "out", 5),
    ("map", ARRAY, "plot", 5),
    ("map", ARRAY, "seed", -1),
    ("map", ARRAY, "centroids", "no"),
    ("report", {}, "optimize", "no"),
    ("report", {}, "top", 0),
    ("report", {}, "out", 5),
    ("report", {}, "layers", 5),
    ("distances", ARRAY, "pairs", 0),
    ("distances", ARRAY, "random_classes", -1),
    ("distances", ARRAY, "per_class", "5"),  # its range: checked by the selection, as before
    ("distances", ARRAY, "reduce", "median"),
    ("top_images", ARRAY, "unit", 3.7),
    ("top_images", {"unit": 0, **ARRAY}, "bottom", "no"),
    ("top_images", {"unit": 0, **ARRAY}, "montage", "montage.jpg"),
    ("top_classes", {"unit": 0, **ARRAY}, "top", -2),
    ("top_classes", {"unit": 0, **ARRAY}, "by", "max"),
    ("compare", {"model": "tiny", "layers": "conv2,fc"}, "max_images", 1),
    ("index", ARRAY, "recall", 0),
    ("index", ARRAY, "recall", 2.0),
    ("index", ARRAY, "rebuild", "no"),
    ("index", ARRAY, "kind", "lsh"),
    ("check", {}, "repair", "yes"),
    ("ingest", {"source": "photos"}, "per_class", 0),
    ("ingest", {"source": "photos"}, "predictions", "no"),
    ("ingest", {"source": "photos"}, "seed", -1),
    ("ingest", {"source": "photos"}, "layers", 5),
    ("optimize", {"layer": "conv2"}, "seed", -1),
    ("optimize", {"layer": "conv2"}, "steps", 2.5),
    ("optimize", {"layer": "conv2"}, "overwrite", "no"),
    ("optimize", {"layer": "conv2"}, "out", 5),
    ("profile", {"queries": "id:0", **ARRAY}, "plot", 5),
    ("unit_stats", ARRAY, "refresh", "no"),
    ("optimized", {}, "sheet", 5),
    ("predict", {"queries": "photo.png"}, "top", 0),
    ("featuremaps", {"query": "photo.png", **ARRAY}, "unit", -1),
    ("differentiation", {"sets": ["noise:4"], "model": "tiny"}, "seed", -1),
    ("weights", {**ARRAY, "unit": 0}, "top", 0),
    ("demo", {}, "views", 0),
]


@pytest.mark.parametrize("command, arguments, name, value", BAD)
def test_a_bad_value_is_one_line_naming_the_keyword_before_any_work(tmp_path, command, arguments, name, value):
    db = database.Database(tmp_path / "no-store-here")  # any work would fail on the missing store instead
    with pytest.raises(ActdbError) as refused:
        getattr(db, command)(**arguments, **{name: value})
    message, cli_message = str(refused.value), refused.value.cli_message
    assert "\n" not in message and "\n" not in cli_message
    assert message.startswith(f"{name}={value!r}: "), message
    flag = {"class_name": "--class"}.get(name, f"-{name}" if len(name) == 1 else f"--{name.replace('_', '-')}")
    assert cli_message.startswith(f"{flag} {value if value != '' else repr('')}: "), cli_message
    assert not (tmp_path / "no-store-here").exists()


def test_module_level_commands_check_at_the_door_too():
    with pytest.raises(ActdbError, match=r"^port=0: "):
        database.serve_report("report", port=0)
    with pytest.raises(ActdbError, match=r"^top=0: "):
        database.predict("photo.png", top=0)
    with pytest.raises(ActdbError, match=r"^seed=-1: "):
        database.optimize(layer="conv2", seed=-1, out="anywhere")


@pytest.fixture(scope="module")
def store(tiny_store):
    assert invoke("--store", tiny_store, "index", "--model", "tiny", "--layer", "conv2").exit_code == 0
    return tiny_store


def test_numpy_integers_are_integers(store):
    db = actdb.open(store)
    ids, rows = db.activations("tiny", "conv2", return_ids=True)
    found = db.neighbors("id:3", **ARRAY, k=np.int64(3))
    distances = cdist(rows[ids == 3].astype(np.float64), rows.astype(np.float64))[0]
    expected = ids[np.lexsort((ids, distances))][:3]
    assert found.id.tolist() == expected.tolist()
    np.testing.assert_allclose(found.distance, np.sort(distances)[:3], rtol=1e-5, atol=1e-6)
    result = db.trajectory("id:3", model="tiny", k=np.int32(3), seed=np.uint8(2), exact=np.bool_(True))
    assert result.k == 3 and type(result.k) is int
    assert set(result.search.values()) == {"exact (asked)"}


def test_constraints_normalize_what_they_accept():
    assert check("k", Integer(1), np.int64(4)) == 4 and type(check("k", Integer(1), np.int64(4))) is int
    assert check("seed", Seed(), np.uint32(2**32 - 1)) == 2**32 - 1
    assert check("exact", Boolean(), np.bool_(False)) is False
    assert check("recall", Real(0, 1, closed="right"), np.float32(0.5)) == 0.5
    assert check("layers", Names(comma=True), ["a", "b"]) == "a,b"
    assert check("per_class", AnyOf(Integer(1), None), None) is None
    for constraint, value in [(Integer(1), True), (Real(0, 1), float("nan")), (Real(0, 1, closed="neither"), 1),
                              (Boolean(), 1), (Names(), [""]), (Names(), ["a", 3])]:
        with pytest.raises(ActdbError):
            check("x", constraint, value)


PARSED = {"units", "channels", "queries", "highlight"}  # unit lists and query values: parsed by their own grammar


def test_the_declarations_are_data_on_every_command():
    commands = {name: member for name, member in inspect.getmembers(database.Database)
                if not name.startswith("_") and callable(member) and name in database.Database.__dict__}
    assert {"trajectory", "neighbors", "report", "ingest", "optimize", "predict", "weights"} <= set(commands)
    for name, command in commands.items():
        parameters = inspect.signature(command).parameters
        takes = {p for p, v in parameters.items()
                 if v.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)} - {"self"}
        has_options = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in parameters.values())
        constraints = declared(command)
        assert has_options or set(constraints) <= takes, (name, set(constraints) - takes)
        positional = {p for p, v in parameters.items() if v.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
                      and v.default is inspect.Parameter.empty}
        assert takes - set(constraints) - positional <= PARSED, (name, takes - set(constraints) - positional)
    assert declared(database.Database.trajectory)["k"] == Integer(1, counting="neighbour")


@pytest.mark.parametrize("args, flag", [
    (["trajectory", "id:0", "--model", "tiny", "-k", "0"], "-k 0: give at least 1 neighbour"),
    (["trajectory", "id:0", "--model", "tiny", "--layers", ""], "--layers '': names nothing"),
    (["trajectory", "id:0", "--model", "tiny", "--calibration-where", DROP], f"--calibration-where {DROP}: "),
    (["trajectory", "id:0", "--model", "tiny", "--class", ""], "--class '': "),
    (["trajectory", "id:0", "--model", "tiny", "--calibration", "1"], "--calibration 1.0: "),
    (["neighbors", "id:0", "--model", "tiny", "--layer", "conv2", "--where", DROP], f"--where {DROP}: "),
    (["top-images", "--model", "tiny", "--layer", "conv2", "--unit", "0", "-k", "0"], "-k 0: "),
    (["top-classes", "--model", "tiny", "--layer", "conv2", "--unit", "0", "--top", "0"], "--top 0: "),
    (["distances", "--model", "tiny", "--layer", "conv2", "--random-classes", "-1"], "--random-classes -1: "),
    (["map", "--model", "tiny", "--layer", "conv2", "--out", "points.txt"], "--out "),
    (["report", "--top", "0"], "--top 0: "),
])
def test_the_command_line_names_the_flag(store, args, flag):
    line = one_line_error(invoke("--store", store, *args))
    assert line.startswith(f"Error: {flag}"), line

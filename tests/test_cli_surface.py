"""The command line is a thin skin over the notebook API: every command of `actdb --help` is
a `Database` method of the same name taking the same option names, and every `--json`
is strict JSON (no NaN, no Infinity)."""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from actdb.cli import cli
from actdb.database import Database
from actdb.ingest.plan import IngestOptions
from actdb.optimize.run import OptimizeOptions
from conftest import invoke, make_imagenet_tree, write_image

# Options that only shape what the terminal shows; the API returns the whole result.
PRINTING_ONLY = {"as_json", "as_csv", "quiet"}  # quiet: the API's progress=False
CLI_ONLY = {("profile", "top"): "rows printed per query", ("weights", "expanded"): "implied by from_layer=",
            ("report", "serve"): "actdb.serve_report(path, port=)", ("report", "port"): "actdb.serve_report(path, port=)"}
OPTIONS_CLASS = {"ingest": IngestOptions, "optimize": OptimizeOptions}  # **options methods


def listed_commands() -> list[str]:
    """The commands as a user sees them in `actdb --help`."""
    text = invoke("--help").output
    section = text.split("Commands:", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]*)\s", section, re.M)]


def test_every_command_in_help_is_a_database_method():
    commands = listed_commands()
    assert len(commands) == len(cli.commands) >= 21, commands
    for command in commands:
        method = getattr(Database, command.replace("-", "_"), None)
        assert callable(method), f"`actdb {command}` has no Database.{command.replace('-', '_')}"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_option_is_a_keyword_of_its_method(command):
    method = getattr(Database, command.replace("-", "_"))
    parameters = inspect.signature(method).parameters
    accepted = set(parameters)
    if command in OPTIONS_CLASS:
        accepted |= {f.name for f in dataclasses.fields(OPTIONS_CLASS[command])}
    for param in cli.commands[command].params:
        if param.name in PRINTING_ONLY or (command, param.name) in CLI_ONLY:
            continue
        assert param.name in accepted, f"actdb {command} {param.opts[0]} is not a keyword of Database.{method.__name__}"
    for param in cli.commands[command].params:
        if param.param_type_name == "option" and param.name in parameters:
            assert parameters[param.name].kind is inspect.Parameter.KEYWORD_ONLY, \
                f"Database.{method.__name__} takes {param.name}= positionally; options are keyword-only"


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def inputs(tiny_store, tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("surface")
    image = write_image(root / "photo.png", np.random.default_rng(3))
    folder = root / "folder"
    for i in range(3):
        write_image(folder / f"{i}.png", np.random.default_rng(10 + i))
    assert invoke("--store", tiny_store, "index", *ARRAY).exit_code == 0  # neighbors and classes need it
    dataset = Path(Database(tiny_store).images().path[0]).parents[1]  # the shared source: relocated to a copy
    shutil.copytree(dataset, root / "moved")
    return {"STORE": tiny_store, "MODEL": tiny_model_path, "IMAGE": image, "FOLDER": folder,
            "SOURCE": make_imagenet_tree(root / "train", per_class=2, seed=4), "NEW": root / "new-store",
            "OUT": root / "optimized", "DATASET": dataset, "MOVED": root / "moved"}


ARRAY = ["--model", "tiny", "--layer", "conv2"]
NETWORK = ["--model", "MODEL", "--preprocess", "tf"]
JSON_COMMANDS = {
    "info": [],
    "sql": ["SELECT label, count(*) AS n, 'nan'::DOUBLE AS nan, 'inf'::DOUBLE AS inf FROM images GROUP BY label"],
    "check": [],
    "models": [],
    "layers": ["MODEL"],
    "index": ARRAY,
    "neighbors": ["id:0", *ARRAY, "-k", "3"],
    "classes": ["id:0", *ARRAY],
    "distances": ARRAY,
    "map": [*ARRAY, "--method", "pca"],
    "top-images": [*ARRAY, "--unit", "0"],
    "top-classes": [*ARRAY, "--unit", "0"],
    "profile": ["id:0", *ARRAY],
    "compare": ["--model", "tiny", "--layers", "conv2,fc"],
    "trajectory": ["id:0", "--model", "tiny", "-k", "3", "--class", "tench"],
    "predict": ["IMAGE", "--models", "MODEL"],
    "weights": [*NETWORK, "--layer", "conv2", "--unit", "0"],
    "featuremaps": ["IMAGE", *NETWORK, "--layer", "conv1"],
    "differentiation": ["noise:3", "FOLDER", *NETWORK, "--units", "10"],
    "optimize": [*NETWORK, "--layer", "conv2", "--units", "0", "--steps", "2", "--size", "32", "--out", "OUT",
                 "--quiet"],
    "ingest": ["SOURCE", *NETWORK, "--layers", "fc", "--quiet"],
    "report": ["--model", "tiny", "--layers", "fc", "--units", "0-1"],
    "relocate": ["DATASET", "MOVED"],
}
WITHOUT_JSON = {"demo": "a story told in steps; each step's command has --json"}


def test_every_command_but_the_demo_has_json():
    has_json = {name for name, command in cli.commands.items() if any(p.name == "as_json" for p in command.params)}
    assert has_json == set(JSON_COMMANDS) and set(cli.commands) - has_json == set(WITHOUT_JSON)


@pytest.mark.parametrize("command", sorted(JSON_COMMANDS))
def test_json_output_is_strict(inputs, command):
    args = [str(inputs.get(a, a)) for a in JSON_COMMANDS[command]]
    store = inputs["NEW"] if command == "ingest" else inputs["STORE"]
    result = invoke("--store", store, command, *args, "--json")
    assert result.exit_code == 0, result.output
    document = strict(result.stdout)
    assert isinstance(document, (dict, list)) and document, result.stdout[:300]
    assert "\\/" not in result.stdout  # paths print as written


def test_not_a_number_prints_as_null(inputs):
    result = invoke("--store", inputs["STORE"], "sql", *JSON_COMMANDS["sql"], "--json")
    rows = strict(result.stdout)
    assert len(rows) == 3 and all(row["nan"] is None and row["inf"] is None and row["n"] == 10 for row in rows)

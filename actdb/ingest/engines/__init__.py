"""Engines execute an ingest plan (`plan.Plan`), chosen once by name: `local` in this
process, `ray` on Ray Data. Add one by adding a module with a `connect(options)` that
returns a `plan.Engine`, and its name to `choices.ENGINES`."""
from __future__ import annotations

from importlib import import_module

from ...choices import ENGINES, check_choice


def engine(options):
    """The engine `options.engine` names, connected (Ray: joined or started) before any model
    loads, so that GPUs go to its workers."""
    name = check_choice("engine", options.engine, ENGINES)
    return import_module(f"{__name__}.{name}").connect(options)

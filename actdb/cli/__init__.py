"""The `actdb` command line: a thin layer over the notebook API. Each command parses its
options, makes one `Database` call (or one of `actdb.database`'s functions, for commands
that need no store) and prints the result with `output.emit`.

One module per command group: store (info, sql, check), ingest, models (models, layers,
predict), query (index, neighbors, classes), optimize, analytics (distances, map,
top-images, top-classes, profile, compare), network (weights, featuremaps,
differentiation), report and demo.
"""
from __future__ import annotations

import sys

import click

from .. import database
from ..errors import ActdbError, Terminated

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class ActdbGroup(click.Group):
    """Turns ActdbError (and a closed pipe) into a one-line message and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ActdbError as exc:
            raise click.ClickException(exc.cli_message) from None
        except click.BadParameter as exc:  # a value out of range or of the wrong kind: one line, not the usage
            raise click.ClickException(exc.format_message()) from None
        except Terminated:
            sys.exit(128 + 15)  # the run was recorded as interrupted; exit as a process killed by SIGTERM
        except BrokenPipeError:
            sys.exit(1)


class Session:
    """What every command gets: the --store option, opened on demand."""

    def __init__(self, store: str | None):
        self.store = store

    def db(self, create: bool = False) -> database.Database:
        return database.open(self.store, create=create)

    def db_if(self, needed: bool) -> database.Database | None:
        """The store, opened only when the arguments name stored images (id:N, where:SQL, ...):
        commands that run a model on files need none, and an unrelated $ACTDB_STORE cannot fail them."""
        return self.db() if needed else None


@click.group(cls=ActdbGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="actdb")
@click.option("--store", envvar="ACTDB_STORE", type=click.Path(file_okay=False), help="Store directory (or $ACTDB_STORE).")
@click.pass_context
def cli(ctx, store):
    """actdb: a batch activation database for CNN interpretability.

    \b
    actdb --store imagenet.actdb ingest ~/ILSVRC/train --classes sea_cucumber,groenendael --per-class 100
    actdb --store imagenet.actdb info
    actdb --store imagenet.actdb sql "SELECT label, count(*) FROM images GROUP BY label"
    """
    ctx.obj = Session(store)


def progress_bar(enabled: bool = True) -> bool:
    """Bars go to stderr, and only to a terminal."""
    return enabled and sys.stderr.isatty()


from . import analytics, demo, ingest, models, network, optimize, query, report, store  # noqa: E402, F401 - register


def main() -> None:
    cli(prog_name="actdb")

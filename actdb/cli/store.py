"""What is in a store and whether it is sound: info, sql, check; relocate, when a dataset moved."""
from __future__ import annotations

import click
import pandas as pd

from ..errors import ActdbError
from . import cli
from .options import json_option, wait_option
from .output import emit, table


@cli.command()
@json_option
@click.pass_obj
def info(session, as_json):
    """What the store holds: images, classes, models, arrays, errors, size on disk."""
    summary = session.db().info()

    def text():
        click.echo(f"store {summary['store']}: {summary['images']} images stored, {summary['classes']} classes, "
                   f"{summary['failed_images']} images failed ({summary['errors']} errors), "
                   f"{summary['bytes_on_disk'] / 1e6:.1f} MB on disk")
        for title in ("sources", "models", "arrays", "top_classes", "runs"):
            click.echo(f"\n{title.replace('_', ' ')}:")
            table(pd.DataFrame(summary[title]))

    emit(summary, as_json, text)


@cli.command()
@click.argument("query")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Rows as CSV.")
@click.pass_obj
def sql(session, query, as_json, as_csv):
    """Read-only SQL on the catalog (tables: images, models, arrays, runs, done,
    predictions, errors, indexes, class_centroids, imagenet_classes, optimized_images,
    optimized_vectors, unit_stats, chunk_digests; view: array_list). One statement; it reaches only the
    catalog (no files, URLs or extensions).

    \b
    actdb sql "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY n DESC"
    """
    if as_json and as_csv:
        raise ActdbError("give --json or --csv, not both")
    frame = session.db().sql(query)
    if as_csv:
        click.echo(frame.to_csv(index=False), nl=False)
        return
    emit(frame, as_json, lambda: table(frame))


@cli.command()
@click.option("--repair", is_flag=True, help="Unmark the rows of damaged chunks (the same ingest then recomputes "
              "them), drop broken or stale index files, add checksums to arrays made without them.")
@wait_option
@json_option
@click.pass_context
def check(ctx, repair, wait, as_json):
    """Verify the store: every done row's chunk exists, decodes (its crc32c checksum holds) and
    holds the rows its commit recorded (their digest), no NaN in done rows, arrays and catalog
    agree on shapes, index files, optimized PNGs and kept unit statistics match their records.
    Exit 1 if something is wrong. The files of the report in STORE/report are checked against its
    manifest too: damaged ones are named in a note (not the store's data; `actdb report` makes
    them again).

    \b
    actdb check
    actdb check --repair && actdb ingest SOURCE ...   # recompute what was lost
    """
    report = ctx.obj.db().check(repair=repair, wait=wait)

    def text():
        counts = ", ".join(f"{n} {what}" for what, n in report["checked"].items())
        if report["report"]:
            counts += f", {report['report']['files']} report files"
        n = len(report["problems"])
        click.echo(f"checked {counts}: " + ("no problems" if report["ok"] else f"{n} problem{'s' * (n > 1)}"))
        if report["problems"]:
            table(pd.DataFrame(report["problems"]))
        for note in report["notes"]:
            click.echo(f"note: {note}")
        for action in report["repaired"]:
            click.echo(f"repaired: {action}")

    emit(report, as_json, text)
    if any(not (repair and p["repairable"]) for p in report["problems"]):
        ctx.exit(1)



@cli.command()
@click.argument("old")
@click.argument("new", type=click.Path(file_okay=False))
@wait_option
@json_option
@click.pass_obj
def relocate(session, old, new, wait, as_json):
    """The dataset stored from folder OLD moved to NEW: point the store's images at their new
    paths (ids, rows, indexes and every derived result stay). Ingesting NEW instead would
    store every image a second time.

    \b
    actdb relocate /data/photos /mnt/archive/photos
    """
    report = session.db().relocate(old, new, wait=wait)
    emit(report, as_json, lambda: click.echo(f"relocated {report['images']} images from {report['old']} to "
                                             f"{report['new']}"))

"""actdb report: the store as a static site (a Microscope for your model and data)."""
from __future__ import annotations

import contextlib

import click

from .. import database
from . import cli, progress_bar
from .options import CommaList, Units, json_option, wait_option
from .output import emit


@cli.command()
@click.option("--model", help="Only this model's arrays (default: every stored array).")
@click.option("--layers", type=CommaList(), help="Only these layers, comma-separated (default: all).")
@click.option("--units", type=Units(), help="Units with a page: 4, a list 4,17 or ranges 0-63 (default: all).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder of the site (default: STORE/report).")
@click.option("--top", type=int, default=16, show_default=True, help="Top and bottom images kept per unit.")
@click.option("--optimize", is_flag=True,
              help="First optimize the chosen units that have no feature visualization yet.")
@click.option("--absolute-paths", is_flag=True,
              help="Name the store and the images by their full paths (for a site kept beside the store; by "
                   "default pages name folders only, so that the site can be zipped and sent).")
@click.option("--serve", is_flag=True, help="Then serve the site on localhost (Ctrl-C stops).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port for --serve.")
@wait_option
@json_option
@click.pass_obj
def report(session, model, layers, units, out, top, optimize, absolute_paths, serve, port, wait, as_json):
    """Write a static site of the store: an index, a page per array with every unit in one
    sortable table, a page per unit (top, bottom and quantile images, histogram, top classes,
    similar units, feature visualizations), per class, per shown image and per optimized
    image (nearest images and classes in every array, most excited units), all linked. It
    opens from file:// with no server or network; re-runs rewrite only what changed or was
    damaged, and delete pages no longer made. --out must be new, empty or an earlier report.

    \b
    actdb report --model efficientnet_lite0 --layers top_activation --units 0-63 --optimize
    """
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(database.report_server(port)) if serve else None  # bound before the work
        summary = session.db().report(model=model, layers=layers or "all", units=units, out=out, top=top,
                                      optimize=optimize, absolute_paths=absolute_paths, wait=wait,
                                      progress=progress_bar())

        def text():
            click.echo(f"report: {summary['pages_written']} files written, {summary['files_kept']} unchanged, "
                       f"{summary['files_removed']} removed ({summary['units']} units of {len(summary['arrays'])} "
                       f"arrays, {summary['images']} images, {summary['classes']} classes, {summary['optimized']} "
                       "optimized images)")
            for note in summary["notes"]:
                click.echo(f"note: {note}")
            click.echo(f"open {summary['report']}")

        emit(summary, as_json, text)
        if server:
            server.serve(summary["report"])

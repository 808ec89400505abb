"""`actdb demo`: the main job end to end, each step an actdb command run as typed."""
from __future__ import annotations

import click

from . import cli, progress_bar


@cli.command()
@click.option("--model", type=click.Choice(["efficientnet_lite0", "vgg19"]),
              help="Default: vgg19 when its ImageNet weights are cached, else efficientnet_lite0.")
@click.option("--views", type=click.IntRange(1, 100), default=8, show_default=True,
              help="Augmented views per photo.")
@click.pass_context
def demo(ctx, model, views):
    """Real photos end to end: ingest augmented views, classify, index, query nearest images and classes;
    optimized images of EfficientNet-Lite0, classified and placed among the stored classes; and the
    analytics' plots (STORE/plots/)."""
    db = ctx.obj.db(create=True)
    for step in db.demo(model=model, views=views, progress=progress_bar()):
        if step.title:
            click.echo(step.title)
        if step.command:
            run_command(ctx, ["--store", str(db.path), *step.command])
        if step.show:
            click.echo(step.show())


def run_command(ctx, arguments: list[str]) -> None:
    """One actdb command line, in this process, exactly as `actdb ARGUMENTS` would run it."""
    code = cli.main(arguments, prog_name="actdb", standalone_mode=False)
    if code:
        ctx.exit(code)

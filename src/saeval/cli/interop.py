"""``saeval export saebench RESULTS DEST`` and ``saeval import saebench DIR --out RESULTS``: SAEBench's result
files out of and into a results folder (saeval.interop.saebench; imported lazily, no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saeval.cli.common import EXIT_JOBS_FAILED, one_line_errors

export_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                         help="Write results in another tool's format.")
import_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                         help="Read another tool's results into a results folder, for the report.")


def _finish(outcome, verb: str) -> None:
    for line in outcome.notes:
        typer.echo(f"note: {line}", err=True)
    for line in outcome.problems:
        typer.echo(f"bad: {line}", err=True)
    for path in outcome.written:
        typer.echo(str(path))
    typer.echo(f"{verb} {len(outcome.written)} file(s), {len(outcome.problems)} left out", err=True)
    if outcome.problems:
        raise typer.Exit(EXIT_JOBS_FAILED)


@export_app.command("saebench")
@one_line_errors
def export_saebench(
    results: Annotated[Path, typer.Argument(help="saeval results folder (OUT of saeval run)")],
    dest: Annotated[Path, typer.Argument(help="folder to write DEST/<eval_type_id>/<release>_<sae_id>"
                                              "_eval_results.json into")],
) -> None:
    """SAEBench's result files (core, scr, tpp, sparse_probing, autointerp; saeval_<eval> for the others)."""
    from saeval.interop.saebench import export_saebench as run_export

    _finish(run_export(results, dest), "exported")


@import_app.command("saebench")
@one_line_errors
def import_saebench(
    source: Annotated[Path, typer.Argument(help="a SAEBench result file, or a folder searched for *.json")],
    out: Annotated[Path, typer.Option(help="saeval results folder; files go to OUT/imported/saebench/")],
) -> None:
    """Check SAEBench result files with SAEBench's output models and store them for `saeval report`."""
    from saeval.interop.saebench import import_saebench as run_import

    _finish(run_import(source, out), "imported")

"""The ``saeval`` command line. Each command group lives in its own module; none imports torch at module
level, so ``saeval --help`` stays instant and bad input fails before any model loads."""

from __future__ import annotations

import typer

from saeval.cli import clip, interop, listing, report, run, studies, train

# Plain (not boxed) usage errors: each is one line naming the flag to fix.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Evaluate sparse autoencoders.")

app.command("run")(run.run)
app.command("show")(listing.show)
app.command("list")(listing.list_)
app.command("train")(train.train)
app.command("report")(report.report)
app.command("demo")(report.demo)
app.command("case-study")(studies.case_study)
app.command("faithful")(studies.faithful)
app.command("steer-clip")(clip.steer_clip)
app.add_typer(interop.export_app, name="export")
app.add_typer(interop.import_app, name="import")

__all__ = ["app"]

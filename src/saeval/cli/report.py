"""``saeval report DIR`` and ``saeval demo`` (the embedded default end to end, then its report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saeval.cli.common import one_line_errors


@one_line_errors
def report(
    out: Annotated[Path, typer.Argument(help="results folder")],
    output: Annotated[Path | None, typer.Option(help="HTML path (default OUT/report.html)")] = None,
) -> None:
    """Build one self-contained HTML report from a results folder."""
    from saeval.report import build_report

    print(build_report(out, output))


@one_line_errors
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out/demo"),
    force: Annotated[bool, typer.Option(help="recompute results whose config hash matches")] = False,
) -> None:
    """The embedded default end to end, offline: SmolLM2-135M, two TopK SAEs, every eval and study, report."""
    from saeval.runner.plan import check_out_dir

    check_out_dir(out)
    from saeval.demo import run_demo

    report_path = run_demo(out, force=force)
    typer.echo(f"demo done: results in {out}/, report {report_path}", err=True)

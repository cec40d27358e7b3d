"""``saeval run``: evals on SAEs, configured by flags, ``--config FILE`` and ``--set EVAL.FIELD=VALUE``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saeval.cli.common import EXIT_JOBS_FAILED, one_line_errors
from saeval.runner.request import RunRequest

F = RunRequest.model_fields


def _help(name: str) -> str:
    return f"{F[name].description} [default: {F[name].default}]"


@one_line_errors
def run(
    sae: Annotated[list[str] | None, typer.Option("--sae", help=_help("saes") + " (repeatable)")] = None,
    model: Annotated[str | None, typer.Option(help=_help("model"))] = None,
    evals: Annotated[str | None, typer.Option(help="comma-separated " + _help("evals"))] = None,
    out: Annotated[Path | None, typer.Option(help=_help("out"))] = None,
    hook: Annotated[str | None, typer.Option(help=_help("hook"))] = None,
    corpus: Annotated[str | None, typer.Option(help=_help("corpus"))] = None,
    preset: Annotated[str | None, typer.Option(help=_help("preset"))] = None,
    device: Annotated[str | None, typer.Option(help=_help("device"))] = None,
    dtype: Annotated[str | None, typer.Option(help=_help("dtype"))] = None,
    seed: Annotated[int | None, typer.Option(help=_help("seed"))] = None,
    tokens: Annotated[int | None, typer.Option(
        help="shorthand for --set core.n_eval_tokens=N --set core.n_density_tokens=N", min=1)] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="EVAL.FIELD=VALUE, VALUE as JSON or a plain string (repeatable; saeval show EVAL)")] = None,
    config: Annotated[Path | None, typer.Option(help="run config file (.toml, .yaml, .json); flags override")] = None,
    backend: Annotated[str | None, typer.Option(help=_help("backend"))] = None,
    address: Annotated[str | None, typer.Option(help=_help("address"))] = None,
    workers: Annotated[int | None, typer.Option(help=_help("workers"), min=1)] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(help=_help("gpus_per_worker"), min=0)] = None,
    plugin: Annotated[list[str] | None, typer.Option("--plugin", help=F["plugins"].description)] = None,
    force: Annotated[bool, typer.Option("--force", help=F["force"].description)] = False,
    strict: Annotated[bool, typer.Option("--strict", help=F["strict"].description)] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help=F["fail_fast"].description)] = False,
) -> None:
    """Run evals on one or more SAEs; writes OUT/<sae>/<eval>.json. A rerun skips results whose config hash
    matches and recomputes the rest."""
    from saeval.runner.overrides import parse_sets, read_config_file
    from saeval.runner.request import build_request

    file_values = read_config_file(config) if config else {}
    sets = parse_sets(set_)
    if tokens is not None:
        sets.setdefault("core", {}).update({"n_eval_tokens": tokens, "n_density_tokens": tokens})
    flags = {"saes": sae or None, "model": model, "evals": evals, "out": out, "hook": hook, "corpus": corpus,
             "preset": preset, "device": device, "dtype": dtype, "seed": seed, "backend": backend,
             "address": address, "workers": workers, "gpus_per_worker": gpus_per_worker, "plugins": plugin or None,
             "force": force or None,
             "strict": strict or None, "fail_fast": fail_fast or None}
    request = build_request(file_values, flags, sets)

    from saeval.runner.execute import execute

    outcomes = execute(request)
    failed = [o for o in outcomes if o.status == "failed"]
    typer.echo(f"results in {request.out}/ — `saeval report {request.out}` builds the HTML report", err=True)
    if failed:
        raise typer.Exit(EXIT_JOBS_FAILED)

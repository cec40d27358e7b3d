"""Run evals on SAEs in this process. A result is skipped only when its config hash matches; otherwise it is
recomputed and replaced atomically, and the log names what changed. A failed job is recorded and the others
go on (unless ``fail_fast``); jobs that need a failed prerequisite are marked failed too."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.runner.fingerprints import config_hash, describe_changes, hash_inputs, provenance, sae_fingerprint
from saeval.runner.names import result_folders
from saeval.runner.plan import PlannedEval, resolve_evals

console = Console(stderr=True)


@dataclass
class JobOutcome:
    sae: str
    eval: str
    status: str  # done | skipped (up to date) | failed
    path: str | None = None
    seconds: float = 0.0
    error: str | None = None


def _load_current(path: Path, spec, digest: str):
    """The typed result at ``path`` when its config hash is ``digest``; else (None, the stored record or None).
    A result whose hash matches but that no longer validates (an older schema) is recomputed."""
    from saeval.results import read_result

    if not path.exists():
        return None, None
    try:
        record = read_result(path)
    except SaevalError as err:
        console.print(f"[yellow]{err}; recomputing[/yellow]")
        return None, None
    if record.get("config_hash") != digest:
        return None, record
    try:
        return spec.result_cls.model_validate(record), record
    except ValueError:
        return None, record


def run_one(ctx: EvalContext, sae, planned: PlannedEval, folder: str, out_dir: Path, force: bool, strict: bool,
            inputs: dict[str, Any], sae_path: str | None) -> tuple[JobOutcome, Any]:
    from saeval.data.budget import size_policy
    from saeval.results import result_path, write_result

    spec = planned.spec
    digest = config_hash(inputs)
    path = result_path(out_dir, folder, spec.name)
    current, stored = (None, None) if force else _load_current(path, spec, digest)
    if current is not None:
        console.print(f"[dim]skip {folder}/{spec.name}: up to date (config hash {digest})[/dim]")
        return JobOutcome(folder, spec.name, "skipped", str(path)), current
    why = "--force" if force else ("new" if stored is None else describe_changes(stored.get("hash_inputs", {}), inputs))
    console.print(f"[bold]{spec.name}[/bold] on {folder} (preset {ctx.preset}; {why})")
    start = time.time()
    with size_policy(strict) as sizes:
        result = spec.run_fn()(ctx, sae, planned.config)
    result.seconds = round(time.time() - start, 2)
    result.config_hash = digest
    result.hash_inputs = inputs
    result.provenance = provenance(ctx, sae, sae_path, inputs)
    result.warnings = [*sizes.warnings, *result.warnings]
    result.sizes = {**sizes.sizes, **result.sizes}
    for warning in sizes.warnings:
        console.print(f"  [yellow]warning:[/yellow] {warning}")
    written = write_result(out_dir, result, folder)
    console.print(f"  wrote {written} in {result.seconds:.1f}s")
    return JobOutcome(folder, spec.name, "done", str(written), result.seconds), result


def run_evals(
    ctx: EvalContext,
    saes: list[Any],
    eval_names: list[str],
    out_dir: Path,
    force: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None,
    strict: bool = False,
    fail_fast: bool = True,
    sae_paths: list[str | None] | None = None,
) -> list[JobOutcome]:
    """Each eval (and its prerequisites) on each SAE, prerequisites first; returns one outcome per job."""
    planned = resolve_evals(eval_names, ctx.preset, overrides)
    out_dir = Path(out_dir)
    folders = result_folders(saes)
    outcomes: list[JobOutcome] = []
    for i, sae in enumerate(saes):
        sae_fp = sae_fingerprint(sae)
        hashes: dict[str, str] = {}
        failed: dict[str, str] = {}
        for job in planned:
            deps = job.spec.prerequisites(job.config)
            missing = [d for d in deps if d in failed]
            if missing:
                outcomes.append(JobOutcome(folders[i], job.name, "failed", error=f"needs {missing[0]}, which failed"))
                failed[job.name] = outcomes[-1].error or ""
                continue
            inputs = hash_inputs(ctx, job, sae_fp, {d: hashes[d] for d in deps})
            try:
                outcome, result = run_one(ctx, sae, job, folders[i], out_dir, force, strict, inputs,
                                          (sae_paths or [None] * len(saes))[i])
            except Exception as err:  # one job's failure must not take the other SAEs and evals down
                if fail_fast:
                    raise
                line = " ".join(str(err).split())[:300] or type(err).__name__
                console.print(f"[red]failed[/red] {folders[i]}/{job.name}: {type(err).__name__}: {line}")
                outcomes.append(JobOutcome(folders[i], job.name, "failed", error=f"{type(err).__name__}: {line}"))
                failed[job.name] = line
                continue
            hashes[job.name] = result.config_hash
            ctx.provide(sae, result)
            outcomes.append(outcome)
    return outcomes

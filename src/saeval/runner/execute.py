"""``saeval run`` end to end: check everything, then load the model once and run each hook group's jobs."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from saeval.errors import SaevalError
from saeval.runner.local import JobOutcome
from saeval.runner.names import safe_component
from saeval.runner.plan import (
    PlannedEval,
    check_device,
    check_model_ref,
    check_out_dir,
    check_transcoder_evals,
    expand_sae_refs,
    resolve_evals,
)
from saeval.runner.request import RunRequest

console = Console(stderr=True)


def check_request(request: RunRequest) -> tuple[list[str], list[PlannedEval]]:
    """Every check that needs no model: evals, configs, presets, paths, device, output folder. Returns the
    expanded SAE references."""
    planned = resolve_evals(request.evals, request.preset, request.overrides, request.device)
    names = {p.name for p in planned}
    for name in request.overrides:
        if name not in names:
            console.print(f"[yellow]note:[/yellow] fields given for {name}, which this run does not include")
    refs = expand_sae_refs(request.saes)
    check_model_ref(request.model)
    check_device(request.device)
    check_out_dir(request.out)
    return refs, planned


def resolve_hook(sae, hook: str | None) -> str:
    if hook and sae.cfg.hook_name and hook != sae.cfg.hook_name:
        raise SaevalError(f"--hook {hook} differs from SAE {sae.name}'s hook {sae.cfg.hook_name}; drop --hook")
    if not (hook or sae.cfg.hook_name):
        raise SaevalError(f"SAE {sae.name} does not say which hook it reads: pass --hook")
    return hook or sae.cfg.hook_name


def check_sae_fits(host, sae, hook: str) -> None:
    host.hook(hook)  # a one-line error naming the valid hooks
    if sae.d_in != host.d_model:
        raise SaevalError(f"SAE {sae.name} has d_in={sae.d_in} but {host.name} has width {host.d_model} at {hook}")
    if getattr(sae, "is_transcoder", False):  # its decoder writes another hook, which must exist and fit too
        host.hook(sae.cfg.hook_name_out)
        if sae.d_out != host.d_model:
            raise SaevalError(f"transcoder {sae.name} has d_out={sae.d_out} but {host.name} has width "
                              f"{host.d_model} at {sae.cfg.hook_name_out}")


def execute(request: RunRequest) -> list[JobOutcome]:
    """Run the request; results land in ``request.out``, a summary in ``OUT/run_summary.json``."""
    refs, planned = check_request(request)  # before torch is even imported
    start = time.time()
    if request.backend == "ray":
        from saeval.runner.ray_backend import execute_ray

        outcomes = execute_ray(request, refs, planned)
        finish(request, outcomes, start)
        return outcomes

    import torch

    from saeval.evals import EvalContext
    from saeval.hosts import LanguageHost
    from saeval.runner.local import run_planned
    from saeval.saes.formats import load_sae

    host = LanguageHost.load(request.model, device=request.device, dtype=getattr(torch, request.dtype))
    groups: dict[str, list[tuple[Any, str]]] = {}
    outcomes: list[JobOutcome] = []
    errors: list[SaevalError] = []
    for ref in refs:  # every SAE is checked before any eval starts
        try:
            sae = load_sae(ref, device=request.device)
            hook = resolve_hook(sae, request.hook)
            check_sae_fits(host, sae, hook)
            check_transcoder_evals(sae, planned)
        except SaevalError as err:
            errors.append(err)
            outcomes += failed_jobs(planned, safe_component(Path(ref).name), str(err))
            continue
        groups.setdefault(hook, []).append((sae, ref))
    if errors and (request.fail_fast or not groups):  # nothing else to run: bad input, one line
        raise errors[0]
    for err in errors:
        console.print(f"[red]skipping an SAE[/red]: {err}")
    run_memo: dict = {}
    for hook, members in groups.items():
        ctx = EvalContext(host=host, hook=hook, corpus=request.corpus, seed=request.seed, preset=request.preset,
                          run_memo=run_memo)
        outcomes += run_planned(ctx, [sae for sae, _ in members], planned, request.out, force=request.force,
                                strict=request.strict, fail_fast=request.fail_fast,
                                sae_paths=[ref for _, ref in members])
    finish(request, outcomes, start)
    return outcomes


def failed_jobs(planned: list[PlannedEval], folder: str, error: str) -> list[JobOutcome]:
    """One failed outcome per planned eval of an SAE that could not be loaded or does not fit the model."""
    return [JobOutcome(folder, p.name, "failed", error=error) for p in planned]


def finish(request: RunRequest, outcomes: list[JobOutcome], start: float) -> None:
    """``OUT/run_summary.json`` and the end-of-run tables: every job, then counts and seconds per eval."""
    from saeval.io import write_json_atomic

    seconds = round(time.time() - start, 2)
    summary = {"seconds": seconds, "backend": request.backend, "request": request.model_dump(mode="json"),
               "counts": dict(Counter(o.status for o in outcomes)), "jobs": [o.to_dict() for o in outcomes]}
    write_json_atomic(Path(request.out) / "run_summary.json", summary)
    table = Table(title="saeval run")
    for col in ("sae", "eval", "status", "seconds", "error"):
        table.add_column(col)
    for o in outcomes:
        style = {"failed": "red", "skipped": "dim"}.get(o.status, "")
        table.add_row(o.sae, o.eval, f"[{style}]{o.status}[/{style}]" if style else o.status, f"{o.seconds:.1f}",
                      o.error or "")
    console.print(table)
    per_eval: dict[str, list[JobOutcome]] = defaultdict(list)
    for o in outcomes:
        per_eval[o.eval].append(o)
    totals = Table(title=f"{len(outcomes)} jobs in {seconds:.1f}s wall ({request.backend})")
    for col in ("eval", "done", "skipped (up to date)", "failed", "job seconds"):
        totals.add_column(col)
    for name, group in per_eval.items():
        c = Counter(o.status for o in group)
        seconds_sum = f"{sum(o.seconds for o in group):.1f}"
        totals.add_row(name, str(c["done"]), str(c["skipped"]), str(c["failed"]), seconds_sum)
    console.print(totals)

"""``saeval run`` end to end: check everything, then load the model once and run each hook group's jobs."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from saeval.errors import SaevalError
from saeval.runner.local import JobOutcome
from saeval.runner.plan import check_device, check_model_ref, check_out_dir, expand_sae_refs, resolve_evals
from saeval.runner.request import RunRequest

console = Console(stderr=True)


def check_request(request: RunRequest) -> list[str]:
    """Every check that needs no model: evals, configs, presets, paths, device, output folder. Returns the
    expanded SAE references."""
    planned = resolve_evals(request.evals, request.preset, request.overrides)
    names = {p.name for p in planned}
    for name in request.overrides:
        if name not in names:
            console.print(f"[yellow]note:[/yellow] fields given for {name}, which this run does not include")
    refs = expand_sae_refs(request.saes)
    check_model_ref(request.model)
    check_device(request.device)
    check_out_dir(request.out)
    return refs


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


def execute(request: RunRequest) -> list[JobOutcome]:
    """Run the request; results land in ``request.out``, a summary in ``OUT/run_summary.json``."""
    refs = check_request(request)  # before torch is even imported

    import torch

    from saeval.evals import EvalContext
    from saeval.hosts import LanguageHost
    from saeval.io import write_json_atomic
    from saeval.runner.local import run_evals
    from saeval.saes.formats import load_sae

    start = time.time()
    host = LanguageHost.load(request.model, device=request.device, dtype=getattr(torch, request.dtype))
    saes = [load_sae(ref, device=request.device) for ref in refs]
    groups: dict[str, list[int]] = {}
    for i, sae in enumerate(saes):
        hook = resolve_hook(sae, request.hook)
        check_sae_fits(host, sae, hook)
        groups.setdefault(hook, []).append(i)
    outcomes: list[JobOutcome] = []
    for hook, members in groups.items():
        ctx = EvalContext(host=host, hook=hook, corpus=request.corpus, seed=request.seed, preset=request.preset)
        outcomes += run_evals(ctx, [saes[i] for i in members], request.evals, request.out, force=request.force,
                              overrides=request.overrides, strict=request.strict, fail_fast=request.fail_fast,
                              sae_paths=[refs[i] for i in members])
    summary = {"seconds": round(time.time() - start, 2), "request": request.model_dump(mode="json"),
               "jobs": [o.__dict__ for o in outcomes]}
    write_json_atomic(Path(request.out) / "run_summary.json", summary)
    print_summary(outcomes)
    return outcomes


def print_summary(outcomes: list[JobOutcome]) -> None:
    table = Table(title="saeval run", show_lines=False)
    for col in ("sae", "eval", "status", "seconds", "error"):
        table.add_column(col)
    for o in outcomes:
        style = {"failed": "red", "skipped": "dim"}.get(o.status, "")
        table.add_row(o.sae, o.eval, f"[{style}]{o.status}[/{style}]" if style else o.status, f"{o.seconds:.1f}",
                      o.error or "")
    console.print(table)

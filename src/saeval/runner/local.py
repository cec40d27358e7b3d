"""Run evals on SAEs in this process. A result is skipped only when its config hash matches; otherwise it is
recomputed and replaced atomically, and the log names what changed. A failed job is recorded and the others
go on (unless ``fail_fast``); jobs that need a failed prerequisite are marked failed too.

Where results are read and written is a :class:`ResultStore`: the output folder here; on Ray, workers hold a
:class:`MemoryStore` of what the driver sent and return what they computed, and the driver alone writes."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.runner.fingerprints import config_hash, describe_changes, hash_inputs, provenance, sae_fingerprint
from saeval.runner.names import result_folders
from saeval.runner.plan import PlannedEval, check_transcoder_evals, resolve_evals

console = Console(stderr=True)


@dataclass
class JobOutcome:
    sae: str
    eval: str
    status: str  # done | skipped (up to date) | failed
    path: str | None = None
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResultStore(Protocol):
    def load(self, folder: str, eval_name: str) -> dict[str, Any] | None: ...

    def save(self, folder: str, result) -> str: ...


class DiskStore:
    """Results as ``OUT/<folder>/<eval>.json``."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)

    def path(self, folder: str, eval_name: str) -> Path:
        from saeval.results import result_path

        return result_path(self.out_dir, folder, eval_name)

    def load(self, folder: str, eval_name: str) -> dict[str, Any] | None:
        from saeval.results import read_result

        path = self.path(folder, eval_name)
        if not path.exists():
            return None
        try:
            return read_result(path)
        except SaevalError as err:
            console.print(f"[yellow]{err}; recomputing[/yellow]")
            return None

    def save(self, folder: str, result) -> str:
        return self.save_record(folder, result.model_dump(mode="json"))

    def save_record(self, folder: str, record: dict[str, Any]) -> str:
        """A result already dumped to JSON (a Ray worker's reply), written atomically."""
        from saeval.io import write_json_atomic

        return str(write_json_atomic(self.path(folder, record["eval"]), record))


class MemoryStore:
    """The records a driver sent, plus the results computed here (to send back)."""

    def __init__(self, records: dict[tuple[str, str], dict[str, Any]] | None = None):
        self.records = dict(records or {})
        self.saved: list[tuple[str, dict[str, Any]]] = []

    def load(self, folder: str, eval_name: str) -> dict[str, Any] | None:
        return self.records.get((folder, eval_name))

    def save(self, folder: str, result) -> str:
        record = result.model_dump(mode="json")
        self.records[(folder, result.eval)] = record
        self.saved.append((folder, record))
        return f"{folder}/{result.eval}.json"


def _current(store: ResultStore, folder: str, spec, digest: str):
    """The typed stored result when its config hash is ``digest``; else (None, the stored record or None).
    A result whose hash matches but that no longer validates (an older schema) is recomputed."""
    record = store.load(folder, spec.name)
    if record is None or record.get("config_hash") != digest:
        return None, record
    try:
        return spec.result_cls.model_validate(record), record
    except ValueError:
        return None, record


def run_one(ctx: EvalContext, sae, planned: PlannedEval, folder: str, store: ResultStore, force: bool,
            strict: bool, inputs: dict[str, Any], sae_path: str | None) -> tuple[JobOutcome, Any]:
    from saeval.data.budget import size_policy

    spec = planned.spec
    digest = config_hash(inputs)
    current, stored = (None, None) if force else _current(store, folder, spec, digest)
    if current is not None:
        console.print(f"[dim]skip {folder}/{spec.name}: up to date (config hash {digest})[/dim]")
        return JobOutcome(folder, spec.name, "skipped"), current
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
    for warning in result.warnings:
        console.print(f"  [yellow]warning:[/yellow] {warning}")
    written = store.save(folder, result)
    console.print(f"  wrote {written} in {result.seconds:.1f}s")
    return JobOutcome(folder, spec.name, "done", written, result.seconds), result


def one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


def run_sae_jobs(ctx: EvalContext, sae, folder: str, planned: list[PlannedEval], store: ResultStore,
                 force: bool = False, strict: bool = False, fail_fast: bool = True,
                 sae_path: str | None = None, sae_fp: str | None = None) -> list[JobOutcome]:
    """Every planned eval on one SAE, prerequisites first (``planned`` is in dependency order)."""
    sae_fp = sae_fp or sae_fingerprint(sae)
    hashes: dict[str, str] = {}
    failed: set[str] = set()
    outcomes: list[JobOutcome] = []
    for job in planned:
        deps = job.spec.prerequisites(job.config)
        missing = [d for d in deps if d in failed]
        if missing:
            outcomes.append(JobOutcome(folder, job.name, "failed", error=f"needs {missing[0]}, which failed"))
            failed.add(job.name)
            continue
        inputs = hash_inputs(ctx, job, sae_fp, {d: hashes[d] for d in deps})
        try:
            outcome, result = run_one(ctx, sae, job, folder, store, force, strict, inputs, sae_path)
        except Exception as err:  # one job's failure must not take the other SAEs and evals down
            if fail_fast:
                raise
            console.print(f"[red]failed[/red] {folder}/{job.name}: {one_line(err)}")
            outcomes.append(JobOutcome(folder, job.name, "failed", error=one_line(err)))
            failed.add(job.name)
            continue
        hashes[job.name] = result.config_hash
        ctx.provide(sae, result)
        outcomes.append(outcome)
    return outcomes


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
    planned = resolve_evals(eval_names, ctx.preset, overrides, getattr(ctx.host, "device", "cpu"))
    return run_planned(ctx, saes, planned, out_dir, force, strict, fail_fast, sae_paths)


def run_planned(ctx: EvalContext, saes: list[Any], planned: list[PlannedEval], out_dir: Path, force: bool = False,
                strict: bool = False, fail_fast: bool = True,
                sae_paths: list[str | None] | None = None) -> list[JobOutcome]:
    """``run_evals`` for evals the caller has already planned (validated, in dependency order)."""
    for sae in saes:  # library callers (the demo, run_evals) skip execute.py's per-SAE checks
        check_transcoder_evals(sae, planned)
    store = DiskStore(out_dir)
    fps = [sae_fingerprint(sae) for sae in saes]
    folders = result_folders([(sae.name, fp) for sae, fp in zip(saes, fps, strict=True)])
    outcomes: list[JobOutcome] = []
    for i, sae in enumerate(saes):
        path = (sae_paths or [None] * len(saes))[i]
        outcomes += run_sae_jobs(ctx, sae, folders[i], planned, store, force, strict, fail_fast, path, fps[i])
    return outcomes

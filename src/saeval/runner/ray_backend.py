"""``--backend ray``: SAEs spread over Ray actors, each loading the model once and keeping its per-group work
(contexts, activation and probe caches, SAE-independent baselines in ``ctx.memo``) across the SAEs it runs.

- The driver plans: it validates the request, names every SAE's result folder, reads the stored results and
  sends each task (one SAE, all its evals in dependency order) with the stored records of that SAE.
- Workers return typed results as JSON records; the driver is the only writer, atomically under ``--out``, so
  workers need no shared filesystem for results. Caches stay per node under ``SAEVAL_CACHE``.
- A worker that dies mid-task (killed, OOM, node lost) is restarted by Ray and the task retried there
  (``max_restarts`` / ``max_task_retries``); a job that fails deterministically (bad input) is caught inside
  the task and reported once, like on the local backend.
- Tasks go to the worker that already ran the same hook when it is free, so shared work is done once per
  (model, hook, corpus) group per worker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console

from saeval.runner.local import DiskStore, JobOutcome, one_line
from saeval.runner.request import RunRequest

console = Console(stderr=True)
RETRIES = 3


class EvalWorker:
    """One Ray actor: a host on its device, an EvalContext per (hook, corpus), SAE tasks on demand."""

    def __init__(self, request: dict[str, Any]):
        self.request = RunRequest.model_validate(request)
        for module in self.request.plugins:
            __import__(module)
        from saeval.runner.plan import resolve_evals

        r = self.request
        self.planned = resolve_evals(r.evals, r.preset, r.overrides, r.device)  # once per worker
        self.host = None
        self.contexts: dict[str, Any] = {}
        self.run_memo: dict[Any, Any] = {}  # shared by its hooks' contexts (EvalContext.run_memo)

    def pid(self) -> int:
        return os.getpid()

    def _ctx(self, hook: str):
        import torch

        from saeval.evals import EvalContext
        from saeval.hosts import LanguageHost

        if self.host is None:
            r = self.request
            self.host = LanguageHost.load(r.model, device=r.device, dtype=getattr(torch, r.dtype))
        if hook not in self.contexts:
            r = self.request
            self.contexts[hook] = EvalContext(host=self.host, hook=hook, corpus=r.corpus, seed=r.seed, preset=r.preset,
                                              run_memo=self.run_memo)
        return self.contexts[hook]

    def run_sae(self, ref: str, folder: str, hook: str, stored: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """All evals of one SAE; returns the outcomes and the records to write (the driver writes them)."""
        from saeval.runner.execute import check_sae_fits
        from saeval.runner.local import MemoryStore, run_sae_jobs
        from saeval.saes.formats import load_sae

        r, planned = self.request, self.planned
        store = MemoryStore({(folder, name): rec for name, rec in stored.items()})
        try:
            ctx = self._ctx(hook)
            sae = load_sae(ref, device=r.device)
            check_sae_fits(ctx.host, sae, hook)
        except Exception as err:  # bad input: every job of this SAE fails once, with the reason
            line = one_line(err)
            return {"outcomes": [JobOutcome(folder, p.name, "failed", error=line).to_dict() for p in planned],
                    "records": [], "pid": os.getpid()}
        outcomes = run_sae_jobs(ctx, sae, folder, planned, store, r.force, r.strict, fail_fast=False, sae_path=ref)
        return {"outcomes": [o.to_dict() for o in outcomes], "records": store.saved, "pid": os.getpid()}


def _init_ray(request: RunRequest):
    """Join ``--address`` or start a local instance; returns whether this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    # Workers import saeval (and plugins) from the driver's path, whatever their working directory.
    pythonpath = os.pathsep.join(p for p in [*_import_roots(), os.environ.get("PYTHONPATH", "")] if p)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if request.address:
        env = {k: v for k, v in os.environ.items() if k.startswith(("SAEVAL_", "HF_"))}
        ray.init(address=request.address, runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **env}}, **kwargs)
        return True
    # A local instance's workers inherit this process's environment: no runtime_env agent to wait for.
    os.environ["PYTHONPATH"] = pythonpath
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only, started and stopped by this run
    workers = request.workers or 1
    ray.init(num_cpus=workers, num_gpus=_local_gpus(), object_store_memory=256 << 20, **kwargs)
    return True


def _import_roots() -> list[str]:
    import saeval

    return [str(Path(saeval.__file__).resolve().parents[1])]


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _name_saes(request: RunRequest, refs: list[str], planned) -> tuple[list[str], list[str], list[JobOutcome]]:
    """(result folder, hook) per loadable SAE, computed on the driver as the local backend does, and failed
    outcomes for the SAEs that do not load (their refs are dropped from ``refs`` in place)."""
    from saeval.errors import SaevalError
    from saeval.runner.execute import failed_jobs, resolve_hook
    from saeval.runner.fingerprints import sae_fingerprint
    from saeval.runner.names import result_folders, safe_component
    from saeval.runner.plan import check_transcoder_evals
    from saeval.saes.formats import load_sae

    named, hooks, failed, kept = [], [], [], []
    for ref in refs:
        try:
            sae = load_sae(ref)
            hooks.append(resolve_hook(sae, request.hook))
            check_transcoder_evals(sae, planned)
        except SaevalError as err:
            if request.fail_fast:
                raise
            failed += failed_jobs(planned, safe_component(Path(ref).name), str(err))
            continue
        named.append((sae.name, sae_fingerprint(sae)))
        kept.append(ref)
    refs[:] = kept
    return result_folders(named), hooks, failed


def execute_ray(request: RunRequest, refs: list[str], planned) -> list[JobOutcome]:
    import ray
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    refs = list(refs)
    folders, hooks, outcomes = _name_saes(request, refs, planned)
    store = DiskStore(request.out)
    started = _init_ray(request)
    n_workers = max(1, request.workers or 1)
    actor_cls = ray.remote(EvalWorker).options(
        num_cpus=1, num_gpus=request.gpus_per_worker, max_restarts=RETRIES, max_task_retries=RETRIES)
    workers = [actor_cls.remote(request.model_dump(mode="json")) for _ in range(n_workers)]
    pending = list(range(len(refs)))
    running: dict[Any, tuple[int, int]] = {}  # ObjectRef -> (worker, SAE index)
    last_hook: dict[int, str] = {}
    status = {w: "idle" for w in range(n_workers)}

    def dispatch(w: int) -> None:
        if not pending:
            status[w] = "idle"
            return
        same = [i for i in pending if hooks[i] == last_hook.get(w)]
        i = (same or pending)[0]
        pending.remove(i)
        stored = {p.name: rec for p in planned if (rec := store.load(folders[i], p.name)) is not None}
        ref = workers[w].run_sae.remote(refs[i], folders[i], hooks[i], stored)
        running[ref] = (w, i)
        last_hook[w] = hooks[i]
        status[w] = f"{folders[i]} ({hooks[i]})"

    total = len(refs) * len(planned)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, disable=bool(os.environ.get("SAEVAL_QUIET"))) as bar:
            task = bar.add_task("jobs", total=total)
            lines = {w: bar.add_task(f"  worker {w}: idle", total=None) for w in range(n_workers)}
            for w in range(n_workers):
                dispatch(w)
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                w, i = running.pop(done[0])
                try:
                    reply = ray.get(done[0])
                except ray.exceptions.RayError as err:  # the actor died more often than it may restart
                    reply = {"outcomes": [JobOutcome(folders[i], p.name, "failed", error=one_line(err)).to_dict()
                                          for p in planned], "records": []}
                for folder, record in reply["records"]:
                    store.save_record(folder, record)
                for o in reply["outcomes"]:
                    outcome = JobOutcome(**o)
                    if outcome.status == "done":
                        outcome.path = str(store.path(outcome.sae, outcome.eval))
                    outcomes.append(outcome)
                    if outcome.status == "failed":
                        console.print(f"[red]failed[/red] {outcome.sae}/{outcome.eval}: {outcome.error}")
                bar.advance(task, len(reply["outcomes"]))
                dispatch(w)
                for k, line in lines.items():
                    bar.update(line, description=f"  worker {k}: {status[k]}")
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref, force=True)
        console.print("[yellow]interrupted[/yellow]: finished results are written; a rerun resumes by config hash")
        raise
    finally:
        if started:
            ray.shutdown()
    return outcomes

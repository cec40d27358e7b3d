"""What a user asks ``saeval run`` for: one model, some SAEs, some evals, and each eval's fields.

The same fields come from the command line and from ``--config run.toml`` (also .yaml / .json); flags override
the file. Eval fields sit in a table named after the eval (``[core] n_eval_tokens = 4096``) or come from
``--set core.n_eval_tokens=4096``. This module imports no torch, so every check here runs in well under a
second, before any model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from saeval.errors import SaevalError

DTYPES = ("float32", "bfloat16", "float16")


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("smollm2-135m", description="HF hub id, local HF folder, or smollm2-135m (packaged)")
    saes: list[str] = Field([], description="SAE folders or files, globs, or SAELens release:id")
    evals: list[str] = Field(["core"], description="evals to run (saeval list evals); prerequisites are added")
    hook: str | None = Field(None, description="hook name when an SAE's config lacks one")
    corpus: str = Field("sotu", description="sotu, moby-dick, spam-assassin, a .txt/.jsonl path, or hf:NAME")
    preset: str = Field("paper", description="paper (the papers' constants) or a named preset: demo, tiny")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="model weights dtype")
    seed: int = Field(0, description="seed of every random choice")
    out: Path = Field(Path("out"), description="output folder: OUT/<sae>/<eval>.json")
    force: bool = Field(False, description="recompute results whose config hash matches")
    strict: bool = Field(False, description="error when a requested size exceeds the data instead of using it all")
    fail_fast: bool = Field(False, description="stop at the first failed job instead of recording it and going on")
    backend: Literal["local", "ray"] = Field("local", description="local: one process; ray: Ray actors")
    address: str | None = Field(None, description="Ray cluster address (auto or HOST:PORT); none starts one here")
    workers: int | None = Field(None, gt=0, description="Ray workers (actors), each loading the model once")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per Ray worker; 0.5 packs two workers per GPU")
    plugins: list[str] = Field([], description="modules to import first, registering extra evals")
    overrides: dict[str, dict[str, Any]] = Field({}, description="per-eval fields: {eval: {field: value}}")


RUN_KEYS = tuple(RunRequest.model_fields)


def import_plugin(module: str) -> None:
    """Import a module that registers extra evals (``register_eval``) before the request is checked."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as err:
        raise SaevalError(f"--plugin {module}: cannot import it ({err})") from None


def build_request(file_values: dict[str, Any], flags: dict[str, Any], sets: dict[str, Any]) -> RunRequest:
    """File values, then flags (those given), then ``--set`` overrides; eval tables become overrides."""
    from saeval.evals.base import EVALS, deep_merge, get_eval

    get_eval("core")  # registers the built-in evals (config modules only: no torch)
    for module in [*file_values.get("plugins", []), *(flags.get("plugins") or [])]:
        import_plugin(module)
    run_values: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for key, value in file_values.items():
        if key in EVALS:
            if not isinstance(value, dict):
                raise SaevalError(f"config file: [{key}] must be a table of {key}'s fields")
            overrides[key] = value
        elif key in RUN_KEYS and key != "overrides":
            run_values[key] = value
        else:
            raise SaevalError(f"config file: unknown key {key!r}; run keys: {', '.join(RUN_KEYS[:-1])}; "
                              f"eval tables: {', '.join(sorted(EVALS))}")
    run_values.update({k: v for k, v in flags.items() if v is not None})
    if isinstance(run_values.get("evals"), str):
        run_values["evals"] = [e.strip() for e in run_values["evals"].split(",") if e.strip()]
    if isinstance(run_values.get("saes"), str):
        run_values["saes"] = [run_values["saes"]]
    for name in sets:
        if name not in EVALS:
            raise SaevalError(f"--set {name}.…: unknown eval {name!r}; available: {', '.join(sorted(EVALS))}")
    run_values["overrides"] = deep_merge(overrides, sets)
    try:
        return RunRequest(**run_values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SaevalError(f"{where}: {first['msg']} (got {first.get('input')!r})") from None

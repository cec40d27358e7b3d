"""What every eval shares: the context it runs in, its registry entry, and the resumable runner."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.console import Console

from saeval.errors import SaevalError
from saeval.results import EvalResult, read_result, result_path, write_result

console = Console(stderr=True)


class EvalConfig(BaseModel):
    """Base of each eval's Config: the defaults are the paper's constants; presets override some fields."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class EvalContext:
    """Shared by every eval of one run: the host model, the corpus and the random seed."""

    host: Any  # LanguageHost; evals with another host kind (CLIP) build their own from their config
    hook: str
    corpus: str = "sotu"
    ctx_len: int = 128
    seed: int = 0
    preset: str = "paper"
    out_dir: Path | None = None
    # Per-run memo for work shared across SAEs and evals (contexts, cached activations, probes...).
    memo: dict[str, Any] = field(default_factory=dict)

    def envelope(self, eval_name: str, sae) -> dict[str, Any]:
        """The fields every result shares (eval, sae, model, preset), so evals only add config/metrics/details."""
        from saeval.results import SAEInfo

        return {"eval": eval_name, "sae": SAEInfo.of(sae), "model": getattr(self.host, "name", None),
                "preset": self.preset}

    def previous(self, sae_name: str, eval_name: str) -> dict[str, Any] | None:
        """An earlier result of this run's output folder, e.g. the core eval's latent densities."""
        if self.out_dir is None:
            return None
        path = result_path(self.out_dir, sae_name, eval_name)
        return read_result(path) if path.exists() else None


@dataclass(frozen=True)
class EvalSpec:
    name: str
    config_cls: type[EvalConfig]
    run: Callable[[EvalContext, Any, Any], EvalResult]
    description: str
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (records: list of result dicts of this eval, one per SAE) -> HTML fragment for `saeval report`.
    report: Callable[[list[dict[str, Any]]], str] | None = None

    def config(self, preset: str = "paper", **overrides: Any) -> EvalConfig:
        if preset != "paper" and preset not in self.presets:
            raise SaevalError(f"eval {self.name} has no preset {preset!r}; presets: paper, {', '.join(self.presets)}")
        return self.config_cls(**{**self.presets.get(preset, {}), **overrides})


EVALS: dict[str, EvalSpec] = {}


def register_eval(spec: EvalSpec) -> EvalSpec:
    EVALS[spec.name] = spec
    return spec


def get_eval(name: str) -> EvalSpec:
    import saeval.evals  # noqa: F401  (registers the built-in evals)

    if name not in EVALS:
        raise SaevalError(f"unknown eval {name!r}; available: {', '.join(sorted(EVALS))}")
    return EVALS[name]


def run_evals(
    ctx: EvalContext,
    saes: list[Any],
    eval_names: list[str],
    out_dir: Path,
    force: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> list[Path]:
    """Run each eval on each SAE; finished (SAE, eval) files are kept unless ``force`` (a rerun resumes)."""
    specs = [get_eval(name) for name in eval_names]
    ctx.out_dir = Path(out_dir)
    written = []
    for sae in saes:
        for spec in specs:
            path = result_path(ctx.out_dir, sae.name, spec.name)
            if path.exists() and not force:
                console.print(f"[dim]skip {sae.name}/{spec.name}: {path} exists (use --force to recompute)[/dim]")
                written.append(path)
                continue
            config = spec.config(ctx.preset, **(overrides or {}).get(spec.name, {}))
            console.print(f"[bold]{spec.name}[/bold] on {sae.name} (preset {ctx.preset})")
            start = time.time()
            result = spec.run(ctx, sae, config)
            result.seconds = round(time.time() - start, 2)
            written.append(write_result(ctx.out_dir, result))
            console.print(f"  wrote {written[-1]} in {result.seconds:.1f}s")
    return written

"""What every eval shares: its registry entry, the context it runs in, and config resolution.

An eval is a package ``saeval/evals/<name>/``:

- ``config.py``: ``XConfig(EvalConfig)`` whose fields carry a description (the CLI, ``saeval show`` and the JSON
  schema read them), and ``XResult(EvalResult[XConfig, XMetrics, XDetails])`` with typed metrics. It imports no
  torch, so a run validates every config within a second, before any model loads.
- ``run.py``: ``run(ctx, sae, config) -> XResult``, the heavy part, imported only when the eval runs.
- ``__init__.py``: ``register_eval(EvalSpec(name, XConfig, XResult, run="saeval.evals.x.run:run", ...))``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from saeval.errors import SaevalError
from saeval.registry import Registry
from saeval.results import EvalResult


class EvalConfig(BaseModel):
    """Base of each eval's Config: the defaults are the paper's constants; presets override some fields."""

    model_config = ConfigDict(extra="forbid")


def load_object(ref: str | Callable | None) -> Any:
    """``"package.module:attr"`` imported on first use (keeps torch out of the registry), or the object itself."""
    if ref is None or not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class EvalContext:
    """Shared by every eval of one run on one (model, hook, corpus) group."""

    host: Any  # LanguageHost; evals with another host kind (CLIP) build their own from their config
    hook: str
    corpus: str = "sotu"
    ctx_len: int = 128
    seed: int = 0
    preset: str = "paper"
    # Per-run memo for work shared across SAEs and evals (contexts, cached activations, probes...).
    memo: dict[str, Any] = field(default_factory=dict)
    # Shared by every group (hook) of one run, for work that depends on no hook (core's clean distributions):
    # keys here must name everything else they depend on.
    run_memo: dict[Any, Any] = field(default_factory=dict)
    # Results of prerequisite evals of this run, by (id of the SAE object, eval name); filled by the runner.
    results: dict[tuple[int, str], EvalResult] = field(default_factory=dict)

    def envelope(self, eval_name: str, sae) -> dict[str, Any]:
        """The fields every result shares (eval, sae, model, preset), so evals only add config/metrics/details."""
        from saeval.results import SAEInfo

        return {"eval": eval_name, "sae": SAEInfo.of(sae), "model": getattr(self.host, "name", None),
                "preset": self.preset}

    def requirement(self, sae, eval_name: str) -> EvalResult | None:
        """This run's result of a prerequisite eval on ``sae`` (declared in ``EvalSpec.requires``), checked by
        config hash by the runner; None when the eval was run outside the runner without it."""
        return self.results.get((id(sae), eval_name))

    def provide(self, sae, result: EvalResult) -> None:
        """Make ``result`` (of eval ``result.eval`` on ``sae``) available to the evals that require it."""
        self.results[(id(sae), result.eval)] = result


Requires = tuple[str, ...] | Callable[[Any], tuple[str, ...]]


@dataclass(frozen=True)
class Headline:
    """The one number a reader ranks SAEs by for an eval: read by the report's summary table and Pareto plots,
    the demo's closing table and the SAEBench export."""

    metric: str  # a field of the eval's Metrics
    better: str  # "higher" | "lower" | "closer to 1" ...: shown beside the number
    meaning: str  # one sentence: what the number measures
    source: str  # the paper or implementation that defines it

    @property
    def higher_is_better(self) -> bool | None:
        return {"higher": True, "lower": False}.get(self.better)


@dataclass(frozen=True)
class EvalSpec:
    name: str
    config_cls: type[EvalConfig]
    result_cls: type[EvalResult]
    run: str | Callable[[EvalContext, Any, Any], EvalResult]  # "module:function", imported when the eval runs
    description: str
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (records: list of result dicts of this eval, one per SAE) -> HTML fragment for `saeval report`.
    report: str | Callable[[list[dict[str, Any]]], str] | None = None
    # Evals whose results this one reads (e.g. core's latent densities); the runner runs them first, or reuses
    # results with a matching config hash. A function of the config when it depends on it.
    requires: Requires = ()
    # Cheap checks of a resolved config before any model loads (datasets reachable, files present...).
    preflight: Callable[[Any], None] | None = None
    # Sizes for a device kind ("cuda"), applied under the preset and the user's fields: a GPU worker takes
    # larger batches than the CPU defaults. Results from different device kinds never share a config hash.
    device_sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    headline: Headline | None = None
    # Whether the eval is meaningful for a transcoder (encoder at hook_name, decoder at hook_name_out); the
    # runner refuses a transcoder for the others before any work.
    transcoders: bool = False

    def prerequisites(self, config: EvalConfig) -> tuple[str, ...]:
        return tuple(self.requires(config) if callable(self.requires) else self.requires)

    def run_fn(self) -> Callable[[EvalContext, Any, Any], EvalResult]:
        return load_object(self.run)

    def report_fn(self) -> Callable[[list[dict[str, Any]]], str] | None:
        return load_object(self.report)

    def config(self, preset: str = "paper", **overrides: Any) -> EvalConfig:
        """The preset's values, then ``overrides`` (nested dicts merge), validated with one-line errors."""
        return self.resolve(preset, overrides)

    def resolve(self, preset: str = "paper", overrides: dict[str, Any] | None = None,
                device_kind: str = "cpu") -> EvalConfig:
        """Defaults, then the device kind's sizes, then the preset, then ``overrides``, validated."""
        if preset != "paper" and preset not in self.presets:
            raise SaevalError(f"eval {self.name} has no preset {preset!r}; presets: paper, {', '.join(self.presets)}")
        values = deep_merge(self.device_sizes.get(device_kind, {}), self.presets.get(preset, {}))
        return validate_config(self.name, self.config_cls, deep_merge(values, overrides or {}))


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def validate_config(owner: str, cls: type[BaseModel], values: dict[str, Any]) -> Any:
    """``cls(**values)``, with pydantic's errors turned into one line naming the field and the valid choices."""
    try:
        return cls(**values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            parent = cls
            for part in first["loc"][:-1]:
                sub = parent.model_fields.get(str(part))
                ann = getattr(sub, "annotation", None)
                parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else parent
            raise SaevalError(f"{owner} has no field {where!r}; fields: {', '.join(parent.model_fields)} "
                              f"(saeval show {owner} describes them)") from None
        raise SaevalError(f"{owner}.{where}: {first['msg']} (got {first.get('input')!r})") from None


EVALS: Registry[EvalSpec] = Registry("eval", "saeval.evals")


def register_eval(spec: EvalSpec) -> EvalSpec:
    """Add an eval to the registry; a second eval under a taken name is refused, not silently replaced."""
    return EVALS.add(spec)


def get_eval(name: str) -> EvalSpec:
    """A registered eval (the built-ins register on first use); an unknown name lists the valid ones."""
    return EVALS.named(name)

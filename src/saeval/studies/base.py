"""What every study shares: its registry entry, its result envelope, and the runner that skips up-to-date results.

A study compares several SAEs, or trains its own, and writes one result, ``OUT/studies/<study>.json``. Like an
eval it is a package ``saeval/studies/<name>/`` with a torch-free ``config.py`` (``XConfig(StudyConfig)`` with
described fields, ``XResult(StudyResult[...])``), a ``run.py`` with ``run(ctx, saes, config, out_dir) ->
XResult`` and a ``report.py`` with ``report(result) -> str`` (an HTML section), registered in ``__init__.py``.

A result is reused only when its config hash matches: the hash covers the resolved study config, the names and
weight fingerprints of the SAEs the study reads, the model's fingerprint, the hook, the corpus and the seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from saeval.errors import SaevalError
from saeval.evals.base import deep_merge, load_object, validate_config
from saeval.registry import Registry
from saeval.results import STUDY_FOLDER, SAEInfo, Stamp

ConfigT = TypeVar("ConfigT", bound=BaseModel)
MetricsT = TypeVar("MetricsT", bound=BaseModel)
DetailsT = TypeVar("DetailsT", bound=BaseModel)



class StudyConfig(BaseModel):
    """Base of each study's config: the defaults are the paper's constants; presets override some fields."""

    model_config = ConfigDict(extra="forbid")


class StudyResult(Stamp, Generic[ConfigT, MetricsT, DetailsT]):
    study: str
    saes: list[SAEInfo] = Field(description="the SAEs the study read (none when it trains its own)")
    model: str | None = None
    hook: str
    corpus: str
    seed: int
    preset: str
    config: ConfigT
    metrics: MetricsT
    details: DetailsT


@dataclass(frozen=True)
class StudySpec:
    name: str
    config_cls: type[StudyConfig]
    result_cls: type[StudyResult]
    run: str | Callable[..., StudyResult]  # "module:function": run(ctx, saes, config, out_dir) -> result
    description: str
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: str | Callable[[Any], str] | None = None  # "module:function": report(result) -> HTML section
    # How many SAEs the study reads (the first ones of a run); 0 when it trains its own.
    n_saes: int = 0

    def run_fn(self) -> Callable[..., StudyResult]:
        return load_object(self.run)

    def report_fn(self) -> Callable[[Any], str] | None:
        return load_object(self.report)

    def config(self, preset: str = "paper", **overrides: Any) -> StudyConfig:
        """The preset's values, then ``overrides`` (nested dicts merge), validated with one-line errors."""
        if preset != "paper" and preset not in self.presets:
            raise SaevalError(f"study {self.name} has no preset {preset!r}; presets: paper, {', '.join(self.presets)}")
        return validate_config(self.name, self.config_cls, deep_merge(self.presets.get(preset, {}), overrides))

    def check_saes(self, n_given: int) -> None:
        if n_given < self.n_saes:
            raise SaevalError(f"study {self.name} compares {self.n_saes} SAEs but {n_given} were given")


STUDIES: Registry[StudySpec] = Registry("study", "saeval.studies")


def register_study(spec: StudySpec) -> StudySpec:
    """Add a study to the registry; a second study under a taken name is refused, not silently replaced."""
    return STUDIES.add(spec)


def get_study(name: str) -> StudySpec:
    """A registered study (the built-ins register on first use); an unknown name lists the valid ones."""
    return STUDIES.named(name)


def envelope(ctx, study: str, saes: list) -> dict[str, Any]:
    """The fields every study result shares, so a study's run only adds config, metrics and details."""
    return {"study": study, "saes": [SAEInfo.of(s) for s in saes], "model": getattr(ctx.host, "name", None),
            "hook": ctx.hook, "corpus": ctx.corpus, "seed": ctx.seed, "preset": ctx.preset}


def study_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / STUDY_FOLDER / f"{name}.json"


def hash_inputs(ctx, name: str, config: StudyConfig, saes: list) -> dict[str, Any]:
    """Everything that made one study result, as a JSON-able dict (kept in the result to name changes)."""
    from saeval.runner.fingerprints import context_inputs, sae_fingerprint

    return {"study": name, "config": config.model_dump(mode="json"),
            "saes": {s.name: sae_fingerprint(s) for s in saes}, **context_inputs(ctx)}


def _stored(path: Path, spec: StudySpec) -> tuple[StudyResult | None, str]:
    """The result at ``path`` (None when absent or unreadable) and why it cannot be reused as is."""
    from saeval.results import read_result

    if not path.exists():
        return None, "new"
    try:
        return spec.result_cls.model_validate(read_result(path)), ""
    except (SaevalError, ValueError) as err:
        return None, f"the stored result does not read as a {spec.name} result ({' '.join(str(err).split())[:120]})"


def run_studies(
    ctx,
    saes: list,
    names: list[str],
    out_dir: Path,
    force: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> list[Path]:
    """Each study on the run's SAEs (the first ``spec.n_saes``), written to ``OUT/studies/<study>.json``.

    A stored result is kept when its config hash matches; otherwise the study is recomputed and the log names
    what changed. Every config is validated before any study runs."""
    from rich.console import Console

    from saeval.hashing import json_digest
    from saeval.io import write_json_atomic
    from saeval.runner.fingerprints import describe_changes

    console = Console(stderr=True)
    overrides = overrides or {}
    specs = [get_study(name) for name in names]
    configs = [spec.config(ctx.preset, **overrides.get(spec.name, {})) for spec in specs]
    for spec in specs:
        spec.check_saes(len(saes))
    paths = []
    for spec, config in zip(specs, configs, strict=True):
        used = list(saes[: spec.n_saes])
        inputs = hash_inputs(ctx, spec.name, config, used)
        digest = json_digest(inputs)
        path = study_path(out_dir, spec.name)
        stored, why = (None, "--force") if force else _stored(path, spec)
        if stored is not None and stored.config_hash == digest:
            console.print(f"[dim]skip study {spec.name}: up to date (config hash {digest})[/dim]")
            paths.append(path)
            continue
        if stored is not None:
            why = describe_changes(stored.hash_inputs, inputs)
        console.print(f"[bold]study {spec.name}[/bold] (preset {ctx.preset}; {why})")
        start = time.time()
        result = spec.run_fn()(ctx, used, config, Path(out_dir))
        result.seconds = round(time.time() - start, 2)
        result.config_hash = digest
        result.hash_inputs = inputs
        write_json_atomic(path, result.model_dump(mode="json"))
        console.print(f"  wrote {path} in {result.seconds:.1f}s")
        paths.append(path)
    return paths

"""Typed eval results and their JSON files: one file per (SAE, eval), written atomically.

``OUT/<sae-name>/<eval>.json`` holds eval, sae, preset, config, metrics, details, and what made it: the
``config_hash`` (see :mod:`saeval.runner.hashing`), its inputs, provenance, warnings and data sizes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from saeval import __version__
from saeval.errors import SaevalError
from saeval.io import write_json_atomic

ConfigT = TypeVar("ConfigT", bound=BaseModel)
MetricsT = TypeVar("MetricsT", bound=BaseModel)
DetailsT = TypeVar("DetailsT", bound=BaseModel)


class SAEInfo(BaseModel):
    name: str
    path: str | None = None
    architecture: str
    d_in: int
    d_sae: int
    hook_name: str | None = None
    model_name: str | None = None
    matryoshka_widths: list[int] | None = Field(None, description="a Matryoshka SAE's nested prefix widths")
    hook_name_out: str | None = Field(None, description="where a transcoder's decoder writes (None for an SAE)")

    @classmethod
    def of(cls, sae, path: str | None = None) -> SAEInfo:
        cfg = sae.cfg
        return cls(name=sae.name, path=path or getattr(cfg, "path", None), architecture=sae.architecture,
                   d_in=cfg.d_in, d_sae=cfg.d_sae, hook_name=cfg.hook_name, model_name=cfg.model_name,
                   matryoshka_widths=getattr(cfg, "matryoshka_widths", None),
                   hook_name_out=getattr(cfg, "hook_name_out", None))


class Provenance(BaseModel):
    """Where a result came from, for a reader who wants to reproduce it."""

    sae_path: str | None = None
    sae_weights_hash: str | None = None
    model: str | None = None
    model_fingerprint: str | None = None
    model_revision: str | None = None
    hook: str | None = None
    corpus: str | None = None
    corpus_fingerprint: str | None = None
    seed: int | None = None
    device: str | None = None
    dtype: str | None = None
    versions: dict[str, str] = {}
    command: str | None = None


class Stamp(BaseModel):
    """What every stored result (eval or study) records about its making: timing, version, config hash."""

    seconds: float | None = None
    saeval_version: str = __version__
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    config_hash: str | None = Field(None, description="hash of everything that made this result (see hash_inputs)")
    hash_inputs: dict[str, Any] = Field({}, description="what the config hash covers, to name what changed")


class EvalResult(Stamp, Generic[ConfigT, MetricsT, DetailsT]):
    eval: str
    sae: SAEInfo
    model: str | None = None
    preset: str
    config: ConfigT
    metrics: MetricsT
    details: DetailsT
    provenance: Provenance | None = None
    warnings: list[str] = Field([], description="why a number may not mean what it seems (sizes cut, ...)")
    sizes: dict[str, dict[str, int]] = Field({}, description="requested and used data sizes")


def result_path(out_dir: Path, sae_name: str, eval_name: str) -> Path:
    return Path(out_dir) / sae_name / f"{eval_name}.json"


def write_result(out_dir: Path, result: EvalResult, folder: str | None = None) -> Path:
    path = result_path(out_dir, folder or result.sae.name, result.eval)
    write_json_atomic(path, result.model_dump(mode="json"))
    return path


def read_result(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SaevalError(f"result file {path} is unreadable ({err}); delete it or rerun with --force") from err


# Study results live in OUT/studies/<study>.json, beside the per-SAE folders (runner.names keeps SAEs out of it).
STUDY_FOLDER = "studies"


def result_files(out_dir: Path) -> list[Path]:
    """Every eval result file under ``out_dir`` (``<sae>/<eval>.json``, not the studies), sorted."""
    return [p for p in sorted(Path(out_dir).glob("*/*.json")) if p.parent.name != STUDY_FOLDER]


def load_results(out_dir: Path) -> list[dict[str, Any]]:
    """Every eval result under ``out_dir``, sorted by SAE then eval."""
    return [read_result(p) for p in result_files(out_dir)]

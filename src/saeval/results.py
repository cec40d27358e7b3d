"""Typed eval results and their JSON files: one file per (SAE, eval), written atomically.

``OUT/<sae-name>/<eval>.json`` holds eval, sae, preset, config, metrics, details, saeval_version, created_at.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from saeval import __version__
from saeval.errors import SaevalError

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

    @classmethod
    def of(cls, sae, path: str | None = None) -> SAEInfo:
        cfg = sae.cfg
        return cls(name=sae.name, path=path or getattr(cfg, "path", None), architecture=sae.architecture,
                   d_in=cfg.d_in, d_sae=cfg.d_sae, hook_name=cfg.hook_name, model_name=cfg.model_name)


class EvalResult(BaseModel, Generic[ConfigT, MetricsT, DetailsT]):
    eval: str
    sae: SAEInfo
    model: str | None = None
    preset: str
    config: ConfigT
    metrics: MetricsT
    details: DetailsT
    seconds: float | None = None
    saeval_version: str = __version__
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def result_path(out_dir: Path, sae_name: str, eval_name: str) -> Path:
    return Path(out_dir) / sae_name / f"{eval_name}.json"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves a partial result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1, allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_result(out_dir: Path, result: EvalResult) -> Path:
    path = result_path(out_dir, result.sae.name, result.eval)
    write_json_atomic(path, result.model_dump(mode="json"))
    return path


def read_result(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SaevalError(f"result file {path} is unreadable ({err}); delete it or rerun with --force") from err


def load_results(out_dir: Path) -> list[dict[str, Any]]:
    """Every result under ``out_dir`` (``<sae>/<eval>.json``), sorted by SAE then eval."""
    return [read_result(p) for p in sorted(Path(out_dir).glob("*/*.json"))]

"""What every reader shares: checked file reads that fail in one line, and :func:`build_sae`, the one config,
shape and NaN/inf check every converter ends in, so bad files fail alike whatever library wrote them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from saeval.errors import SaevalError
from saeval.saes.base import SAE, SAEConfig, canonical_architecture, config_problems, create_sae, nonfinite_problems


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SaevalError(f"{path}: missing {what}; re-download or re-save the SAE folder")
    return path


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(require_file(path, "config file").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SaevalError(f"{path}: unreadable JSON ({one_line(e)}); re-download or re-save it") from e
    if not isinstance(data, dict):
        raise SaevalError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(require_file(path, "weight file")))
    except SaevalError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt headers
        raise SaevalError(f"{path}: cannot read weights ({one_line(e)}); the file is truncated or corrupt, "
                          "re-download or re-save it") from e


def take(tensors: Mapping[str, Tensor], key: str, where: str) -> Tensor:
    if key not in tensors:
        raise SaevalError(f"{where}: missing tensor {key!r} (found: {', '.join(sorted(tensors)) or 'none'})")
    return tensors[key]


def set_name(sae: SAE, name: str) -> SAE:
    if not sae.cfg.name:
        sae.cfg = sae.cfg.model_copy(update={"name": name})
    return sae


def build_sae(
    cfg: SAEConfig, tensors: Mapping[str, Tensor], where: str, optional: tuple[str, ...] = ()
) -> SAE:
    """Create the saeval SAE for ``cfg`` and copy ``tensors`` (saeval names) in, checking the config, every
    shape and every value (NaN/inf). All problems of one SAE come in one SaevalError, joined by "; "."""
    label = f"SAE {cfg.name} ({where})" if cfg.name else where
    try:
        arch = canonical_architecture(cfg.architecture)
    except SaevalError as e:
        raise SaevalError(f"{label}: {e}") from e
    problems = config_problems(cfg, arch)
    if min(cfg.d_in, cfg.d_sae, cfg.d_out or 1) < 1:  # no weights of that shape can be allocated to compare
        raise SaevalError(f"{label}: " + "; ".join(problems))
    sae = create_sae(cfg, check=False)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name not in tensors:
                if name not in optional:  # an optional one stays at its zero init, e.g. a BatchTopK threshold
                    problems.append(f"missing tensor {name!r} needed by a {sae.architecture} SAE")
                continue
            value = tensors[name]
            if tuple(value.shape) != tuple(param.shape):
                dims = f"d_in={cfg.d_in}, d_sae={cfg.d_sae}" + (f", d_out={cfg.d_out}" if cfg.d_out else "")
                problems.append(f"{name} has shape {list(value.shape)} but the config ({dims}) needs "
                                f"{list(param.shape)}, so config and weights do not belong together")
                continue
            param.copy_(value.to(param.dtype))
        # Checked after the copy so values that overflow in the conversion (float64 -> float32) count too.
        problems += nonfinite_problems(sae.named_parameters())
    if problems:
        raise SaevalError(f"{label}: " + "; ".join(problems))
    return sae

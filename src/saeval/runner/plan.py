"""Checks and expansion of a run before any work: evals in dependency order with resolved configs, SAE paths,
the device and the output folder. Imports no torch unless a non-CPU device must be checked."""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeval.errors import SaevalError
from saeval.evals.base import EvalConfig, EvalSpec, get_eval

MIN_FREE_BYTES = 16 << 20
RELEASE_ID = re.compile(r"^[\w.\-/]+:[\w.\-/]+$")


@dataclass(frozen=True)
class PlannedEval:
    spec: EvalSpec
    config: EvalConfig
    requested: bool  # named by the user, not only a prerequisite

    @property
    def name(self) -> str:
        return self.spec.name


def device_kind(device: Any) -> str:
    """"cuda" for cuda / cuda:N devices, else the device's type name ("cpu", "mps")."""
    return str(getattr(device, "type", device) or "cpu").split(":")[0]


def resolve_evals(names: list[str], preset: str, overrides: dict[str, dict[str, Any]] | None = None,
                  device: Any = "cpu") -> list[PlannedEval]:
    """The evals named plus their prerequisites, each with its validated config (sizes for ``device``'s kind
    under the preset and the user's fields), prerequisites first."""
    overrides = overrides or {}
    if not names:
        raise SaevalError("no evals given: pass --evals core,tpp,... (saeval list evals)")
    configs: dict[str, EvalConfig] = {}
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in chain:
            raise SaevalError(f"evals depend on each other in a cycle: {' -> '.join((*chain, name))}")
        if name in configs:
            return
        spec = get_eval(name)
        configs[name] = spec.resolve(preset, overrides.get(name, {}), device_kind(device))
        for dep in spec.prerequisites(configs[name]):
            visit(dep, (*chain, name))
        order.append(name)

    for name in names:
        visit(name, ())
    for spec_name, config in configs.items():
        preflight = get_eval(spec_name).preflight
        if preflight is not None:
            preflight(config)
    return [PlannedEval(get_eval(n), configs[n], n in names) for n in order]


def expand_sae_refs(items: list[str]) -> list[str]:
    """SAE paths, globs and SAELens ``release:id`` references; each must exist or look like a release id."""
    if not items:
        raise SaevalError("no SAE given: pass --sae PATH (repeatable; globs and SAELens release:id work too)")
    refs: list[str] = []
    for item in items:
        if glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise SaevalError(f"--sae {item}: the pattern matches no file or folder")
            refs.extend(matches)
        elif Path(item).exists():
            refs.append(item)
        elif RELEASE_ID.match(item) and not item.startswith(("/", ".")):
            refs.append(item)
        else:
            raise SaevalError(f"--sae {item}: no such file or folder (nor a SAELens release:id)")
    return list(dict.fromkeys(refs))


def check_model_ref(model: str) -> None:
    """A model that is written as a path must exist; hub ids are checked when the model loads."""
    from saeval.assets import EMBEDDED_MODELS

    if model not in EMBEDDED_MODELS and model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
        raise SaevalError(f"--model {model}: no such folder; give a local HF folder, a hub id, or "
                          f"{', '.join(EMBEDDED_MODELS)}")


def check_device(device: str) -> None:
    """A device string torch can use here; imports torch only for non-CPU devices."""
    if device == "cpu":
        return
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise SaevalError(f"--device {device}: not a torch device; use cpu, cuda, cuda:N or mps") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SaevalError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    if kind == "cuda" and ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise SaevalError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SaevalError(f"--device {device}: MPS is not available here; use --device cpu")


def check_out_dir(out: Path) -> None:
    """``out`` is (or can be made) a writable folder with some space free, before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SaevalError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SaevalError(f"--out {out}: not writable ({err.strerror or type(err).__name__})") from None
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise SaevalError(f"--out {out}: only {free >> 20} MiB free; free some space or choose another folder")


# Why an eval has no meaning for a transcoder (encoder at hook_name, decoder at hook_name_out), where a short
# reason is known; other evals get the generic one.
_TRANSCODER_REASONS = {
    "steerability": "clamps a latent inside the residual stream at one hook",
    "tpp": "ablates latents at the hook they were read from to erase a concept",
    "scr": "ablates latents at the hook they were read from to remove a spurious signal",
    "shift": "ablates latents at the hook they were read from to debias a classifier",
    "synthetic": "plants features at one hook and scores their recovery there",
    "self_explanation": "patches a latent's decoder direction into the residual stream it was read from",
}


def check_transcoder_evals(sae: Any, planned: list[PlannedEval]) -> None:
    """Refuse, in one line, a transcoder for the planned evals not meaningful for one (``EvalSpec.transcoders``
    false), naming the first with its reason; SAEs pass untouched. Torch-free: call it once the SAE is loaded,
    before any eval runs."""
    if not getattr(sae, "is_transcoder", False):
        return
    refused = [p.name for p in planned if not p.spec.transcoders]
    if not refused:
        return
    from saeval.evals.base import EVALS

    get_eval(planned[0].name)  # the built-in evals are registered
    ok = sorted(name for name, spec in EVALS.items() if spec.transcoders) or ["core"]
    first, more = refused[0], f" (so are {', '.join(refused[1:])})" if refused[1:] else ""
    reason = _TRANSCODER_REASONS.get(first, "reads and writes the SAE at the one hook it runs on")
    raise SaevalError(f"eval {first} {reason}; SAE {sae.name} is a transcoder ({sae.cfg.hook_name} -> "
                      f"{sae.cfg.hook_name_out}), which reads one hook and writes another, so {first} is refused"
                      f"{more}: run only {', '.join(ok)} on transcoders (--evals {','.join(ok)})")

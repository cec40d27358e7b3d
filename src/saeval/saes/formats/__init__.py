"""Read SAEs written by SAELens, sparsify, dictionary_learning and Gemma Scope; write SAELens folders.

Each library has its own module with a *converter* (cfg dict + tensors named as that library names them ->
saeval SAE) and a thin folder reader around it, so :mod:`saeval.saes.adapter` reuses the converters for
objects already in memory. All converters end in :func:`~saeval.saes.formats.common.build_sae`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from saeval.errors import SaevalError
from saeval.saes.base import SAE
from saeval.saes.formats.common import build_sae, set_name
from saeval.saes.formats.dictionary_learning import (
    DL_CFG,
    DL_CLASSES,
    DL_WEIGHTS,
    from_dictionary_learning,
    load_dictionary_learning,
)
from saeval.saes.formats.gemma_scope import GEMMA_SCOPE_WEIGHTS, load_gemma_scope
from saeval.saes.formats.pretrained import load_pretrained, parse_release
from saeval.saes.formats.saelens import SAELENS_CFG, SAELENS_WEIGHTS, from_saelens_dict, load_saelens, save_sae
from saeval.saes.formats.sparsify import SPARSIFY_CFG, SPARSIFY_WEIGHTS, from_sparsify, load_sparsify

__all__ = ["DL_CLASSES", "FORMATS", "build_sae", "from_dictionary_learning", "from_saelens_dict", "from_sparsify",
           "load_sae", "save_sae"]

FORMATS = (
    "SAELens folder (cfg.json + sae_weights.safetensors), sparsify folder (cfg.json + sae.safetensors), "
    "dictionary_learning folder (ae.pt + config.json), Gemma Scope folder (params.npz), "
    "or a SAELens release id 'release:sae_id'"
)

# Marker files -> loader, in the order they are tried; the first element is what must exist to pick it.
_DETECTORS = (
    ((SAELENS_CFG, SAELENS_WEIGHTS), load_saelens),
    ((SPARSIFY_CFG, SPARSIFY_WEIGHTS), load_sparsify),
    ((DL_WEIGHTS,), load_dictionary_learning),
    ((GEMMA_SCOPE_WEIGHTS,), load_gemma_scope),
)
_MARKERS = {SAELENS_CFG, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS, DL_WEIGHTS, DL_CFG, GEMMA_SCOPE_WEIGHTS}


def _detect(folder: Path) -> Callable[[Path], SAE] | None:
    for files, loader in _DETECTORS:
        if all((folder / f).is_file() for f in files):
            return loader
    return None


def _load_folder(folder: Path) -> SAE:
    loader = _detect(folder)
    if loader is not None:
        return loader(folder)
    if (folder / SAELENS_CFG).is_file():
        raise SaevalError(f"{folder}: has cfg.json but no weights; expected {SAELENS_WEIGHTS} (SAELens) or "
                          f"{SPARSIFY_WEIGHTS} (sparsify) next to it")
    # sparsify (and dictionary_learning sweeps) keep one SAE per subfolder: accept a folder with exactly one.
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and _detect(p) is not None)
    if len(subs) == 1:
        return _load_folder(subs[0])
    if subs:
        raise SaevalError(f"{folder}: holds {len(subs)} SAEs ({', '.join(p.name for p in subs[:6])}); "
                          "pass one of those subfolders")
    raise SaevalError(f"{folder}: no SAE found; looked for a {FORMATS}")


def load_sae(path_or_id: str | Path, device: str = "cpu") -> SAE:
    """Load an SAE from a local folder or file in any supported format, or a SAELens 'release:sae_id'.

    The SAE's name defaults to the folder's name (the parent's for a file); hook and model names come from
    the files when they record them."""
    path = Path(path_or_id).expanduser()
    if not path.exists():
        release = parse_release(str(path_or_id)) if isinstance(path_or_id, str) else None
        if release is None:
            raise SaevalError(f"{path}: no such file or folder; pass a {FORMATS}")
        return load_pretrained(*release, device=device)
    if path.is_file():
        if path.name not in _MARKERS:
            raise SaevalError(f"{path}: not a known SAE file; pass a {FORMATS}")
        path = path.parent
    return set_name(_load_folder(path), path.resolve().name).to(device)

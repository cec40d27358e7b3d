"""Gemma Scope folders (params.npz): JumpReLU SAEs whose hook and model come from the release path."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from saeval.errors import SaevalError
from saeval.saes.base import SAE, SAEConfig
from saeval.saes.formats.common import build_sae, one_line, require_file, take

GEMMA_SCOPE_WEIGHTS = "params.npz"


def gemma_scope_names(folder: Path) -> tuple[str | None, str | None]:
    """Hook and model from the release path, e.g. gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82."""
    text = "/".join(folder.resolve().parts[-6:]) + "/"
    layer = re.search(r"(?:^|/)layer_(\d+)/", text)
    release = re.search(r"gemma-scope-(\d+b)-(pt|it)(?:-(res|mlp|att))?", text)
    if release is None:
        return None, None
    site = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}.get(release.group(3) or "")
    hook = f"blocks.{layer.group(1)}.{site}" if layer and site else None
    return hook, f"gemma-2-{release.group(1)}" + ("-it" if release.group(2) == "it" else "")


def load_gemma_scope(folder: Path) -> SAE:
    path = require_file(folder / GEMMA_SCOPE_WEIGHTS, "weight file")
    try:
        with np.load(path, allow_pickle=False) as data:
            # Some releases spell the weights w_enc / w_dec.
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(np.array(data[k]))
                      for k in data.files}
    except Exception as e:
        raise SaevalError(f"{path}: cannot read ({one_line(e)}); the file is truncated or corrupt, "
                          "re-download it") from e
    W_enc = take(arrays, "W_enc", str(path))
    hook, model = gemma_scope_names(folder)
    # Gemma Scope JumpReLU SAEs encode x directly: no b_dec subtraction (as SAELens's gemma_2 loader says).
    cfg = SAEConfig(architecture="jumprelu", d_in=W_enc.shape[0], d_sae=W_enc.shape[-1],
                    apply_b_dec_to_input=False, hook_name=hook, model_name=model)
    return build_sae(cfg, arrays, str(path))

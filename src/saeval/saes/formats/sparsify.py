"""EleutherAI sparsify folders (cfg.json + sae.safetensors), one SparseCoder per hookpoint folder."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from saeval.errors import SaevalError
from saeval.saes.base import SAE, SAEConfig
from saeval.saes.formats.common import build_sae, read_json, read_safetensors, take

SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"

_HF_MODULE_HOOK = re.compile(
    r"^(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?$"
)


def hook_from_module_path(module: str) -> str | None:
    """sparsify names a hookpoint by the HF module whose output it read: map it to a TransformerLens name."""
    m = _HF_MODULE_HOOK.match(module)
    if m is None:
        return None
    kind = {None: "hook_resid_post", "mlp": "hook_mlp_out"}.get(m.group(2), "hook_attn_out")
    return f"blocks.{m.group(1)}.{kind}"


def from_sparsify(cfg: Mapping[str, Any], tensors: Mapping[str, Tensor], where: str,
                  hookpoint: str | None = None) -> SAE:
    """sparsify's SparseCoder: relu(encoder(x - b_dec)) then top-k; decode = acts @ W_dec + b_dec."""
    if cfg.get("transcode"):
        raise SaevalError(f"{where}: this is a sparsify transcoder (transcode=true), not an autoencoder")
    if cfg.get("activation", "topk") != "topk":
        raise SaevalError(f"{where}: sparsify activation {cfg.get('activation')!r} is not supported, "
                          "only 'topk'")
    if cfg.get("skip_connection") or "W_skip" in tensors:
        raise SaevalError(f"{where}: sparsify skip connections (W_skip) are not supported")
    enc = take(tensors, "encoder.weight", where)
    d_in = int(cfg.get("d_in") or enc.shape[-1])
    d_sae = int(cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32)))  # sparsify's own rule
    sae_cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=int(cfg.get("k", 32)),
                        hook_name=hook_from_module_path(hookpoint) if hookpoint else None,
                        apply_b_dec_to_input=True)
    named = {"W_enc": enc.T, "b_enc": take(tensors, "encoder.bias", where),
             "W_dec": take(tensors, "W_dec", where), "b_dec": take(tensors, "b_dec", where)}
    return build_sae(sae_cfg, named, where)


def load_sparsify(folder: Path) -> SAE:
    where = f"{folder / SPARSIFY_CFG} + {SPARSIFY_WEIGHTS}"
    cfg = read_json(folder / SPARSIFY_CFG)
    return from_sparsify(cfg, read_safetensors(folder / SPARSIFY_WEIGHTS), where, hookpoint=folder.name)

"""SAELens folders (cfg.json + sae_weights.safetensors): read in the 6.x layout with `metadata` or the pre-6
flat one, written in the 6.x layout. Conventions checked against sae-lens 6.54."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from saeval.errors import SaevalError
from saeval.io import FILE_MODE
from saeval.saes.base import SAE, SAEConfig, canonical_architecture
from saeval.saes.formats.common import build_sae, one_line, read_json, read_safetensors

SAELENS_CFG, SAELENS_WEIGHTS, SAELENS_SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
# The layout version written into metadata: SAELens treats configs without one as pre-6 and drops `metadata`.
SAELENS_LAYOUT_VERSION = "6.0.0"
FOLDER_MODE = 0o755


# These rescale each input by its own statistic at run time, which saeval's fixed act_scale cannot express.
_RUNTIME_NORMS = {
    "constant_norm_rescale": "rescales every input to norm sqrt(d_in) at run time",
    "layer_norm": "layer-normalises every input at run time",
    "covariance_whitening": "whitens inputs with statistics the folder does not store",
}


def _saelens_act_scale(cfg: Mapping[str, Any], meta: Mapping[str, Any], where: str) -> float:
    norm = cfg.get("normalize_activations")
    # SAELens < 6 stored a bool here.
    norm = {True: "expected_average_only_in", False: "none", None: "none"}.get(norm, norm)
    if norm == "none":
        return 1.0
    if norm in _RUNTIME_NORMS:
        raise SaevalError(f"{where}: normalize_activations={norm!r} is not supported "
                          f"({_RUNTIME_NORMS[norm]}); fold it into the weights in SAELens and save with "
                          "normalize_activations='none'")
    if norm == "expected_average_only_in":
        for key in ("act_scale", "norm_scaling_factor"):
            for source in (cfg, meta):
                if source.get(key) is not None:
                    return float(source[key])
        raise SaevalError(f"{where}: normalize_activations='expected_average_only_in' but no stored scale "
                          "(norm_scaling_factor); add it to cfg.json, or load the release with "
                          "SAE.from_pretrained, which folds it into the weights")
    raise SaevalError(f"{where}: unknown normalize_activations={norm!r}; expected 'none'")


def from_saelens_dict(cfg: Mapping[str, Any], tensors: Mapping[str, Tensor], where: str) -> SAE:
    """Convert a SAELens config (6.x layout with `metadata`, or the pre-6 flat one) plus its state dict."""
    meta: Mapping[str, Any] = cfg.get("metadata") or {}
    act_fn = cfg.get("activation_fn") or cfg.get("activation_fn_str")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    arch = str(cfg.get("architecture") or "standard")
    if act_fn == "topk" and k:
        arch = "topk"  # SAELens < 6 stored TopK SAEs as architecture "standard" + activation_fn "topk"
    threshold = tensors.get("threshold")
    if threshold is None and "log_threshold" in tensors:
        threshold = tensors["log_threshold"].exp()  # older JumpReLU checkpoints store log thresholds
    if threshold is None and "topk_threshold" in tensors:  # SAELens BatchTopK training checkpoint: a scalar
        threshold = torch.full((int(cfg.get("d_sae") or 0),), float(tensors["topk_threshold"]))
    # A BatchTopK SAE that SAELens saved for inference as jumprelu/topk: label it batchtopk when that cannot
    # change the outputs (a positive threshold makes saeval's BatchTopK a JumpReLU; none makes it a TopK).
    batchtopk = ("batchtopk", "matryoshka_batchtopk")
    thresholded = threshold is not None and bool((threshold > 0).any())
    if arch in batchtopk or (meta.get("training_architecture") in batchtopk and (
            arch == "topk" or (arch == "jumprelu" and thresholded))):
        k = k or (meta.get("training_architecture_details") or {}).get("k")
        arch = "batchtopk"
    if cfg.get("d_in") is None or cfg.get("d_sae") is None:
        raise SaevalError(f"{where}: the config lacks d_in or d_sae")
    try:
        canonical_architecture(arch)
    except SaevalError as e:
        raise SaevalError(f"{where}: {e}") from e
    extra = {} if cfg.get("reshape_activations") in (None, "none") else {"reshape_activations":
                                                                         cfg["reshape_activations"]}
    sae_cfg = SAEConfig(
        architecture=arch, d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), k=int(k) if k else None,
        hook_name=meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point"),
        model_name=meta.get("model_name") or cfg.get("model_name"),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        act_scale=_saelens_act_scale(cfg, meta, where), **extra,
    )
    named = dict(tensors)
    if threshold is not None:
        named["threshold"] = threshold
    # SAELens gated SAEs have no b_enc; a BatchTopK checkpoint may not have estimated a threshold yet.
    optional = {"gated": ("b_enc",), "batchtopk": ("threshold",)}.get(sae_cfg.architecture, ())
    sae = build_sae(sae_cfg, named, where, optional=optional)
    with torch.no_grad():
        # Old SAELens multiplied latents by a learned per-latent factor before decoding: fold it into W_dec.
        scale = tensors.get("finetuning_scaling_factor", tensors.get("scaling_factor"))
        if scale is not None:
            if tuple(scale.shape) != (sae.d_sae,):
                raise SaevalError(f"{where}: scaling_factor has shape {list(scale.shape)}, "
                                  f"expected [{sae.d_sae}]")
            sae.W_dec.mul_(scale.to(sae.W_dec.dtype)[:, None])
        # TopK trained with rescale_acts_by_decoder_norm ranks pre*||W_dec||: folding the norms into the
        # encoder (and out of the decoder) reproduces both its latents and its reconstructions exactly.
        if cfg.get("rescale_acts_by_decoder_norm"):
            norms = sae.W_dec.norm(dim=-1)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae


def load_saelens(folder: Path) -> SAE:
    where = f"{folder / SAELENS_CFG} + {SAELENS_WEIGHTS}"
    cfg = read_json(folder / SAELENS_CFG)
    return from_saelens_dict(cfg, read_safetensors(folder / SAELENS_WEIGHTS), where)


def saelens_payload(sae: SAE) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The SAELens 6 cfg.json dict and state dict that reproduce ``sae`` exactly."""
    if sae.architecture not in ("relu", "topk", "jumprelu", "gated", "batchtopk") or not isinstance(
            getattr(sae, "W_enc", None), Tensor):
        raise SaevalError(f"cannot save SAE {sae.name} ({type(sae).__name__}): only weight-based SAEs "
                          "(relu, topk, jumprelu, gated, batchtopk) map to a SAELens folder")
    params = {n: p.detach().cpu().clone() for n, p in sae.named_parameters()}
    s = float(sae.cfg.act_scale)
    if s != 1.0:
        # SAELens has no input scale: x*s enters as (s*W_enc), the output /s as W_dec/s, b_dec/s (this is
        # SAELens's own fold_activation_norm_scaling_factor and holds with or without apply_b_dec_to_input).
        params["W_enc"] *= s
        params["W_dec"] /= s
        params["b_dec"] /= s
    arch, k = sae.architecture, sae.cfg.k
    meta: dict[str, Any] = {"sae_lens_version": SAELENS_LAYOUT_VERSION, "model_name": sae.cfg.model_name,
                            "hook_name": sae.cfg.hook_name, "written_by": "saeval"}
    if arch == "batchtopk":
        # SAELens has no inference BatchTopK: save the rule saeval's BatchTopK applies (threshold or top-k).
        meta.update(training_architecture="batchtopk", training_architecture_details={"k": k})
        arch = "jumprelu" if bool((params["threshold"] > 0).any()) or not k else "topk"
    keep = {"standard": ("W_enc", "b_enc", "W_dec", "b_dec"), "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
            "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
            "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag")}  # SAELens gated has no b_enc
    arch = "standard" if arch == "relu" else arch
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae,
        "dtype": str(params["W_dec"].dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input, "normalize_activations": "none",
        "reshape_activations": getattr(sae.cfg, "reshape_activations", None) or "none", "metadata": meta,
    }
    if arch == "topk":
        cfg.update(k=k, rescale_acts_by_decoder_norm=False)
    return cfg, {n: params[n].contiguous() for n in keep[arch]}


def save_sae(sae: SAE, folder: str | Path) -> Path:
    """Write ``sae`` as a SAELens 6 folder (cfg.json + sae_weights.safetensors), atomically.

    Files go to a sibling temp folder that is renamed into place, so a crash never leaves half a folder. An
    existing folder is replaced only if it holds nothing but SAELens files (a previous save)."""
    folder = Path(folder)
    cfg, tensors = saelens_payload(sae)
    if folder.exists():
        foreign = [p.name for p in folder.iterdir()] if folder.is_dir() else [folder.name]
        foreign = [n for n in foreign if n not in (SAELENS_CFG, SAELENS_WEIGHTS, SAELENS_SPARSITY)]
        if foreign or not folder.is_dir():
            raise SaevalError(f"{folder}: exists and holds other files ({', '.join(sorted(foreign)[:5])}); "
                              "save to a new or empty folder")
    tag = uuid.uuid4().hex[:8]
    tmp, old = folder.with_name(f".{folder.name}.tmp-{tag}"), folder.with_name(f".{folder.name}.old-{tag}")
    try:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        (tmp / SAELENS_CFG).write_text(json.dumps(cfg, indent=2))
        for name in (SAELENS_WEIGHTS, SAELENS_CFG):  # explicit: others read saved SAEs whatever the umask
            os.chmod(tmp / name, FILE_MODE)
        os.chmod(tmp, FOLDER_MODE)
        if folder.exists():
            folder.rename(old)
        try:
            tmp.rename(folder)
        except OSError:
            if old.exists():
                old.rename(folder)  # put the previous save back rather than lose it
            raise
    except OSError as e:
        raise SaevalError(f"{folder}: could not save the SAE ({one_line(e)})") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder

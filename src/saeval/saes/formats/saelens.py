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
from saeval.saes.base import SAE, PrefixSAE, SAEConfig, canonical_architecture
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


# SAELens transcoders (encoder at hook_name, decoder at hook_name_out) -> the saeval activation they use.
TRANSCODERS = {"transcoder": "relu", "jumprelu_transcoder": "jumprelu"}
_SKIP_TRANSCODERS = ("skip_transcoder", "jumprelu_skip_transcoder")


def _matryoshka_widths(cfg: Mapping[str, Any], meta: Mapping[str, Any], where: str) -> list[int] | None:
    """The nested widths: top level in a training checkpoint (save_model), in metadata's
    training_architecture_details once saved for inference (as a JumpReLU)."""
    raw = cfg.get("matryoshka_widths") or (meta.get("training_architecture_details") or {}).get(
        "matryoshka_widths")
    if not raw:
        return None
    try:
        widths = [int(w) for w in raw]
    except (TypeError, ValueError):
        raise SaevalError(f"{where}: matryoshka_widths={raw!r} is not a list of integers") from None
    d_sae = int(cfg.get("d_sae") or 0)
    # SAELens appends d_sae when the last level is not the full width (_validate_matryoshka_config).
    return widths if not d_sae or widths[-1] == d_sae else [*widths, d_sae]


def _transcoder_fields(cfg: Mapping[str, Any], meta: Mapping[str, Any], arch: str, where: str) -> dict[str, Any]:
    if arch in _SKIP_TRANSCODERS:
        raise SaevalError(f"{where}: architecture {arch!r} is not supported: a skip transcoder's output adds "
                          "x @ W_skip.T, which decoding its latents cannot give")
    if arch not in TRANSCODERS:
        return {}
    hook_out = meta.get("hook_name_out") or cfg.get("hook_name_out")
    if not hook_out:
        raise SaevalError(f"{where}: a SAELens {arch} without metadata.hook_name_out; add the hook its "
                          "decoder writes (e.g. blocks.L.hook_mlp_out) to cfg.json's metadata")
    return {"hook_name_out": str(hook_out), "d_out": int(cfg.get("d_out") or cfg["d_in"])}


def from_saelens_dict(cfg: Mapping[str, Any], tensors: Mapping[str, Tensor], where: str) -> SAE:
    """Convert a SAELens config (6.x layout with `metadata`, or the pre-6 flat one) plus its state dict."""
    meta: Mapping[str, Any] = cfg.get("metadata") or {}
    act_fn = cfg.get("activation_fn") or cfg.get("activation_fn_str")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    arch = str(cfg.get("architecture") or "standard")
    if cfg.get("d_in") is None or cfg.get("d_sae") is None:
        raise SaevalError(f"{where}: the config lacks d_in or d_sae")
    transcoder = _transcoder_fields(cfg, meta, arch, where)
    arch = TRANSCODERS.get(arch, arch)
    widths = _matryoshka_widths(cfg, meta, where)
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
        arch = "matryoshka_batchtopk" if widths else "batchtopk"
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
        act_scale=_saelens_act_scale(cfg, meta, where), matryoshka_widths=widths, **transcoder, **extra,
    )
    named = dict(tensors)
    if threshold is not None:
        named["threshold"] = threshold
    # SAELens gated SAEs have no b_enc; a BatchTopK checkpoint may not have estimated a threshold yet.
    optional = {"gated": ("b_enc",), "batchtopk": ("threshold",),
                "matryoshka_batchtopk": ("threshold",)}.get(sae_cfg.architecture, ())
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
    arch = sae.architecture
    if arch not in ("relu", "topk", "jumprelu", "gated", "batchtopk", "matryoshka_batchtopk") or not isinstance(
            getattr(sae, "W_enc", None), Tensor):
        raise SaevalError(f"cannot save SAE {sae.name} ({type(sae).__name__}): only weight-based SAEs "
                          "(relu, topk, jumprelu, gated, batchtopk, matryoshka_batchtopk) map to a SAELens folder")
    names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "r_mag", "b_mag")
    # getattr, not named_parameters: a prefix SAE (sae.prefix(w)) holds views of its parent's weights.
    params = {n: getattr(sae, n).detach().cpu().clone() for n in names if isinstance(getattr(sae, n, None), Tensor)}
    k, meta_extra = sae.cfg.k, {}
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        # SAELens has no inference BatchTopK: save the rule saeval's BatchTopK applies (threshold or top-k).
        meta_extra = {"training_architecture": arch, "training_architecture_details": {"k": k}}
        arch = "jumprelu" if bool((params["threshold"] > 0).any()) or not k else "topk"
    if isinstance(sae, PrefixSAE) and arch == "topk":
        raise SaevalError(f"cannot save SAE {sae.name}: a prefix of a TopK SAE picks its latents among all "
                          f"{sae.parent.d_sae} latents, which a SAELens TopK of width {sae.d_sae} cannot do; "
                          "save the whole SAE")
    if sae.cfg.matryoshka_widths:
        meta_extra.setdefault("training_architecture_details", {})["matryoshka_widths"] = sae.cfg.matryoshka_widths
    if sae.is_transcoder:
        if arch not in ("relu", "jumprelu"):
            raise SaevalError(f"cannot save transcoder {sae.name}: SAELens has ReLU and JumpReLU transcoders, "
                              f"not {sae.architecture}")
        arch = {"relu": "transcoder", "jumprelu": "jumprelu_transcoder"}[arch]
        meta_extra["hook_name_out"] = sae.cfg.hook_name_out
    s = float(sae.cfg.act_scale)
    if s != 1.0:
        # SAELens has no input scale: x*s enters as (s*W_enc), the output /s as W_dec/s, b_dec/s (this is
        # SAELens's own fold_activation_norm_scaling_factor and holds with or without apply_b_dec_to_input).
        params["W_enc"] *= s
        params["W_dec"] /= s
        params["b_dec"] /= s
    meta: dict[str, Any] = {"sae_lens_version": SAELENS_LAYOUT_VERSION, "model_name": sae.cfg.model_name,
                            "hook_name": sae.cfg.hook_name, "written_by": "saeval", **meta_extra}
    base = ("W_enc", "b_enc", "W_dec", "b_dec")
    keep = {"standard": base, "topk": base, "transcoder": base, "jumprelu": (*base, "threshold"),
            "jumprelu_transcoder": (*base, "threshold"),
            "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag")}  # SAELens gated has no b_enc
    arch = "standard" if arch == "relu" else arch
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae,
        "dtype": str(params["W_dec"].dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input, "normalize_activations": "none",
        "reshape_activations": getattr(sae.cfg, "reshape_activations", None) or "none", "metadata": meta,
    }
    if sae.is_transcoder:
        cfg["d_out"] = sae.d_out
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

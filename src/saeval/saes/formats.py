"""Read SAEs written by SAELens, sparsify, dictionary_learning and Gemma Scope; write SAELens folders.

Each format has a *converter* (cfg dict + tensors named as that library names them -> saeval SAE) and a thin
file reader around it, so :mod:`saeval.saes.adapter` can reuse the converters for objects already in memory.
All converters end in :func:`build_sae`, which does the one shape check, so bad files fail alike whatever
wrote them. Conventions checked against sae-lens 6.54, EleutherAI/sparsify and saprmarks/dictionary_learning.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saeval.errors import SaevalError
from saeval.saes.base import SAE, SAEConfig, canonical_architecture, create_sae

SAELENS_CFG, SAELENS_WEIGHTS, SAELENS_SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
DL_CFG, DL_WEIGHTS = "config.json", "ae.pt"
GEMMA_SCOPE_WEIGHTS = "params.npz"
FORMATS = (
    "SAELens folder (cfg.json + sae_weights.safetensors), sparsify folder (cfg.json + sae.safetensors), "
    "dictionary_learning folder (ae.pt + config.json), Gemma Scope folder (params.npz), "
    "or a SAELens release id 'release:sae_id'"
)
# The layout version written into metadata: SAELens treats configs without one as pre-6 and drops `metadata`.
SAELENS_LAYOUT_VERSION = "6.0.0"


# ---------------------------------------------------------------- shared helpers


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SaevalError(f"{path}: missing {what}; re-download or re-save the SAE folder")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_require(path, "config file").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SaevalError(f"{path}: unreadable JSON ({_one_line(e)}); re-download or re-save it") from e
    if not isinstance(data, dict):
        raise SaevalError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(_require(path, "weight file")))
    except SaevalError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt headers
        raise SaevalError(f"{path}: cannot read weights ({_one_line(e)}); the file is truncated or corrupt, "
                          "re-download or re-save it") from e


def _take(tensors: Mapping[str, Tensor], key: str, where: str) -> Tensor:
    if key not in tensors:
        raise SaevalError(f"{where}: missing tensor {key!r} (found: {', '.join(sorted(tensors)) or 'none'})")
    return tensors[key]


def build_sae(
    cfg: SAEConfig, tensors: Mapping[str, Tensor], where: str, optional: tuple[str, ...] = ()
) -> SAE:
    """Create the saeval SAE for ``cfg`` and copy ``tensors`` (saeval names) in, checking every shape."""
    try:
        sae = create_sae(cfg)
    except SaevalError as e:
        raise SaevalError(f"{where}: {e}") from e
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name not in tensors:
                if name in optional:
                    continue  # stays at its zero init, e.g. a BatchTopK SAE saved without a threshold
                raise SaevalError(f"{where}: missing tensor {name!r} needed by a {sae.architecture} SAE")
            value = tensors[name]
            if tuple(value.shape) != tuple(param.shape):
                raise SaevalError(
                    f"{where}: {name} has shape {list(value.shape)} but the config (d_in={cfg.d_in}, "
                    f"d_sae={cfg.d_sae}) needs {list(param.shape)}; config and weights do not belong together"
                )
            param.copy_(value.to(param.dtype))
    return sae


_HF_MODULE_HOOK = re.compile(
    r"^(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?$"
)


def _hook_from_module_path(module: str) -> str | None:
    """sparsify names a hookpoint by the HF module whose output it read: map it to a TransformerLens name."""
    m = _HF_MODULE_HOOK.match(module)
    if m is None:
        return None
    kind = {None: "hook_resid_post", "mlp": "hook_mlp_out"}.get(m.group(2), "hook_attn_out")
    return f"blocks.{m.group(1)}.{kind}"


def _set_name(sae: SAE, name: str) -> SAE:
    if not sae.cfg.name:
        sae.cfg = sae.cfg.model_copy(update={"name": name})
    return sae


# ---------------------------------------------------------------- SAELens

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


def _load_saelens(folder: Path) -> SAE:
    where = f"{folder / SAELENS_CFG} + {SAELENS_WEIGHTS}"
    cfg = _read_json(folder / SAELENS_CFG)
    return from_saelens_dict(cfg, _read_safetensors(folder / SAELENS_WEIGHTS), where)


def _saelens_payload(sae: SAE) -> tuple[dict[str, Any], dict[str, Tensor]]:
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
    cfg, tensors = _saelens_payload(sae)
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
        if folder.exists():
            folder.rename(old)
        try:
            tmp.rename(folder)
        except OSError:
            if old.exists():
                old.rename(folder)  # put the previous save back rather than lose it
            raise
    except OSError as e:
        raise SaevalError(f"{folder}: could not save the SAE ({_one_line(e)})") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


# ---------------------------------------------------------------- sparsify (EleutherAI)


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
    enc = _take(tensors, "encoder.weight", where)
    d_in = int(cfg.get("d_in") or enc.shape[-1])
    d_sae = int(cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32)))  # sparsify's own rule
    sae_cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=int(cfg.get("k", 32)),
                        hook_name=_hook_from_module_path(hookpoint) if hookpoint else None,
                        apply_b_dec_to_input=True)
    named = {"W_enc": enc.T, "b_enc": _take(tensors, "encoder.bias", where),
             "W_dec": _take(tensors, "W_dec", where), "b_dec": _take(tensors, "b_dec", where)}
    return build_sae(sae_cfg, named, where)


def _load_sparsify(folder: Path) -> SAE:
    where = f"{folder / SPARSIFY_CFG} + {SPARSIFY_WEIGHTS}"
    cfg = _read_json(folder / SPARSIFY_CFG)
    return from_sparsify(cfg, _read_safetensors(folder / SPARSIFY_WEIGHTS), where, hookpoint=folder.name)


# ---------------------------------------------------------------- dictionary_learning (saprmarks)

# dict_class -> (saeval architecture, subtracts b_dec before encoding, {saeval name: (state key, transpose)}).
# nn.Linear stores [out, in], so encoder.weight is [d_sae, d_in] and decoder.weight [d_in, d_sae].
_LINEAR_TOPK = {"W_enc": ("encoder.weight", True), "b_enc": ("encoder.bias", False),
                "W_dec": ("decoder.weight", True), "b_dec": ("b_dec", False)}
_PLAIN = {n: (n, False) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
DL_CLASSES: dict[str, tuple[str, bool, dict[str, tuple[str, bool]]]] = {
    "AutoEncoder": ("relu", True, {"W_enc": ("encoder.weight", True), "b_enc": ("encoder.bias", False),
                                   "W_dec": ("decoder.weight", True), "b_dec": ("bias", False)}),
    "AutoEncoderNew": ("relu", False, {"W_enc": ("encoder.weight", True), "b_enc": ("encoder.bias", False),
                                       "W_dec": ("decoder.weight", True), "b_dec": ("decoder.bias", False)}),
    "GatedAutoEncoder": ("gated", True, {
        "W_enc": ("encoder.weight", True), "b_gate": ("gate_bias", False), "r_mag": ("r_mag", False),
        "b_mag": ("mag_bias", False), "W_dec": ("decoder.weight", True), "b_dec": ("decoder_bias", False)}),
    "AutoEncoderTopK": ("topk", True, _LINEAR_TOPK),
    "BatchTopKSAE": ("batchtopk", True, _LINEAR_TOPK),
    "MatryoshkaBatchTopKSAE": ("batchtopk", True, _PLAIN),
    # JumpReluAutoEncoder sets apply_b_dec_to_input = False and does not save it.
    "JumpReluAutoEncoder": ("jumprelu", False, {**_PLAIN, "threshold": ("threshold", False)}),
}


def from_dictionary_learning(dict_class: str, state: Mapping[str, Tensor], where: str,
                             trainer: Mapping[str, Any] | None = None,
                             apply_b_dec_to_input: bool | None = None) -> SAE:
    if dict_class not in DL_CLASSES:
        raise SaevalError(f"{where}: unknown dictionary_learning dict_class {dict_class!r}; "
                          f"supported: {', '.join(DL_CLASSES)}")
    trainer = trainer or {}
    arch, subtract_b_dec, keys = DL_CLASSES[dict_class]
    named = {}
    for name, (key, transpose) in keys.items():
        value = _take(state, key, where)
        named[name] = value.T if transpose else value
    k = int(state["k"]) if "k" in state else trainer.get("k")
    if arch == "batchtopk":
        # One global threshold on post-ReLU acts (default encode uses it). -1 means "never estimated": leave
        # it at 0 so saeval falls back to per-token top-k rather than a plain ReLU.
        thr = float(state["threshold"]) if "threshold" in state else 0.0
        named["threshold"] = torch.full((named["W_enc"].shape[-1],), max(thr, 0.0))
    layer, sub = trainer.get("layer"), trainer.get("submodule_name")
    hook = None
    if isinstance(layer, int):  # submodule_name looks like "resid_post_layer_12"; the demos hook resid_post
        kind = next((s for s in ("resid_post", "resid_pre", "mlp_out", "attn_out") if sub and s in sub),
                    "resid_post")
        hook = f"blocks.{layer}.hook_{kind}"
    cfg = SAEConfig(
        architecture=arch, d_in=int(trainer.get("activation_dim") or named["W_dec"].shape[-1]),
        d_sae=int(trainer.get("dict_size") or named["W_dec"].shape[0]), k=int(k) if k else None,
        apply_b_dec_to_input=subtract_b_dec if apply_b_dec_to_input is None else apply_b_dec_to_input,
        hook_name=hook, model_name=trainer.get("lm_name"),
    )
    return build_sae(cfg, named, where, optional=("b_enc",) if arch == "gated" else ())


def _load_dictionary_learning(folder: Path) -> SAE:
    where = f"{folder / DL_WEIGHTS} + {DL_CFG}"
    cfg = _read_json(folder / DL_CFG)
    raw = cfg.get("trainer")
    trainer: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if not trainer.get("dict_class"):
        raise SaevalError(f"{folder / DL_CFG}: no trainer.dict_class; dictionary_learning writes it, re-save "
                          "the config.json that came with ae.pt")
    try:
        state = torch.load(folder / DL_WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors for truncated files, unpickling refusals for non-tensors
        raise SaevalError(f"{folder / DL_WEIGHTS}: cannot read the state dict ({_one_line(e)}); the file is "
                          "truncated or corrupt, re-download it") from e
    if not isinstance(state, Mapping):
        raise SaevalError(f"{folder / DL_WEIGHTS}: expected a state dict, got {type(state).__name__}")
    return from_dictionary_learning(trainer["dict_class"], state, where, trainer)


# ---------------------------------------------------------------- Gemma Scope


def _gemma_scope_names(folder: Path) -> tuple[str | None, str | None]:
    """Hook and model from the release path, e.g. gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82."""
    text = "/".join(folder.resolve().parts[-6:]) + "/"
    layer = re.search(r"(?:^|/)layer_(\d+)/", text)
    release = re.search(r"gemma-scope-(\d+b)-(pt|it)(?:-(res|mlp|att))?", text)
    if release is None:
        return None, None
    site = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}.get(release.group(3) or "")
    hook = f"blocks.{layer.group(1)}.{site}" if layer and site else None
    return hook, f"gemma-2-{release.group(1)}" + ("-it" if release.group(2) == "it" else "")


def _load_gemma_scope(folder: Path) -> SAE:
    path = _require(folder / GEMMA_SCOPE_WEIGHTS, "weight file")
    try:
        with np.load(path, allow_pickle=False) as data:
            # Some releases spell the weights w_enc / w_dec.
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(np.array(data[k]))
                      for k in data.files}
    except Exception as e:
        raise SaevalError(f"{path}: cannot read ({_one_line(e)}); the file is truncated or corrupt, "
                          "re-download it") from e
    W_enc = _take(arrays, "W_enc", str(path))
    hook, model = _gemma_scope_names(folder)
    # Gemma Scope JumpReLU SAEs encode x directly: no b_dec subtraction (as SAELens's gemma_2 loader says).
    cfg = SAEConfig(architecture="jumprelu", d_in=W_enc.shape[0], d_sae=W_enc.shape[-1],
                    apply_b_dec_to_input=False, hook_name=hook, model_name=model)
    return build_sae(cfg, arrays, str(path))


# ---------------------------------------------------------------- detection and entry point

# Marker files -> loader, in the order they are tried; the first element is what must exist to pick it.
_DETECTORS = (
    ((SAELENS_CFG, SAELENS_WEIGHTS), _load_saelens),
    ((SPARSIFY_CFG, SPARSIFY_WEIGHTS), _load_sparsify),
    ((DL_WEIGHTS,), _load_dictionary_learning),
    ((GEMMA_SCOPE_WEIGHTS,), _load_gemma_scope),
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


def _parse_release(text: str) -> tuple[str, str] | None:
    """'release:sae_id' or '{"release": ..., "sae_id": ...}' -> (release, sae_id); None if neither."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise SaevalError(f"SAE id {text!r} is not valid JSON ({_one_line(e)})") from e
        if not isinstance(spec, dict) or not spec.get("release") or not spec.get("sae_id"):
            raise SaevalError(f"SAE id {text!r} needs both \"release\" and \"sae_id\"")
        return str(spec["release"]), str(spec["sae_id"])
    release, sep, sae_id = text.partition(":")
    # A release may be a HF repo id ("org/repo"), but something that starts like a path is a missing path.
    looks_like_path = release.startswith(("/", ".", "~"))
    return (release, sae_id) if sep and release and sae_id and not looks_like_path else None


def _load_pretrained(release: str, sae_id: str, device: str) -> SAE:
    try:
        from sae_lens import SAE as SAELensSAE
    except ImportError as e:
        raise SaevalError(f"loading SAELens release {release!r} needs the optional sae-lens package and "
                          "network access: pip install 'saeval[sae-lens]'") from e
    from saeval.saes.adapter import wrap_sae  # adapter imports this module

    try:
        obj = SAELensSAE.from_pretrained(release, sae_id, device=device)
    except Exception as e:  # network, unknown release/id, HF errors: all surface as one line
        raise SaevalError(f"SAELens could not load release {release!r} id {sae_id!r}: {_one_line(e)}") from e
    return _set_name(wrap_sae(obj), f"{release}/{sae_id}")


def load_sae(path_or_id: str | Path, device: str = "cpu") -> SAE:
    """Load an SAE from a local folder or file in any supported format, or a SAELens 'release:sae_id'.

    The SAE's name defaults to the folder's name (the parent's for a file); hook and model names come from
    the files when they record them."""
    path = Path(path_or_id).expanduser()
    if not path.exists():
        release = _parse_release(str(path_or_id)) if isinstance(path_or_id, str) else None
        if release is None:
            raise SaevalError(f"{path}: no such file or folder; pass a {FORMATS}")
        return _load_pretrained(*release, device=device)
    if path.is_file():
        if path.name not in _MARKERS:
            raise SaevalError(f"{path}: not a known SAE file; pass a {FORMATS}")
        path = path.parent
    return _set_name(_load_folder(path), path.resolve().name).to(device)

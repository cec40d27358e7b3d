"""saprmarks/dictionary_learning folders (ae.pt + config.json): the state dict of one of its dictionary
classes, read without unpickling anything but tensors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeval.errors import SaevalError
from saeval.saes.base import SAE, SAEConfig
from saeval.saes.formats.common import build_sae, one_line, read_json, take

DL_CFG, DL_WEIGHTS = "config.json", "ae.pt"

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
    "MatryoshkaBatchTopKSAE": ("matryoshka_batchtopk", True, _PLAIN),
    # JumpReluAutoEncoder sets apply_b_dec_to_input = False and does not save it.
    "JumpReluAutoEncoder": ("jumprelu", False, {**_PLAIN, "threshold": ("threshold", False)}),
}


def _matryoshka_widths(state: Mapping[str, Tensor], trainer: Mapping[str, Any], where: str) -> list[int] | None:
    """MatryoshkaBatchTopKSAE stores its group sizes (a buffer, and in the trainer config); the nested widths
    are their running sums."""
    sizes = state.get("group_sizes")
    raw = sizes.tolist() if isinstance(sizes, Tensor) else trainer.get("group_sizes")
    if not raw:
        raise SaevalError(f"{where}: a MatryoshkaBatchTopKSAE without group_sizes (neither the group_sizes "
                          "buffer in ae.pt nor trainer.group_sizes in config.json)")
    widths, total = [], 0
    for size in raw:
        total += int(size)
        widths.append(total)
    return widths


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
        value = take(state, key, where)
        named[name] = value.T if transpose else value
    k = int(state["k"]) if "k" in state else trainer.get("k")
    widths = _matryoshka_widths(state, trainer, where) if arch == "matryoshka_batchtopk" else None
    if arch in ("batchtopk", "matryoshka_batchtopk"):
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
        hook_name=hook, model_name=trainer.get("lm_name"), matryoshka_widths=widths,
    )
    return build_sae(cfg, named, where, optional=("b_enc",) if arch == "gated" else ())


def load_dictionary_learning(folder: Path) -> SAE:
    where = f"{folder / DL_WEIGHTS} + {DL_CFG}"
    cfg = read_json(folder / DL_CFG)
    raw = cfg.get("trainer")
    trainer: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if not trainer.get("dict_class"):
        raise SaevalError(f"{folder / DL_CFG}: no trainer.dict_class; dictionary_learning writes it, re-save "
                          "the config.json that came with ae.pt")
    try:
        state = torch.load(folder / DL_WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors for truncated files, unpickling refusals for non-tensors
        raise SaevalError(f"{folder / DL_WEIGHTS}: cannot read the state dict ({one_line(e)}); the file is "
                          "truncated or corrupt, re-download it") from e
    if not isinstance(state, Mapping):
        raise SaevalError(f"{folder / DL_WEIGHTS}: expected a state dict, got {type(state).__name__}")
    return from_dictionary_learning(trainer["dict_class"], state, where, trainer)

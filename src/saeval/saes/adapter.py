"""Turn SAE objects a user already holds into saeval SAEs.

Weight-based objects (a sae_lens SAE, a dictionary_learning dictionary, a sparsify SparseCoder, anything with
W_enc/W_dec/b_dec tensors and a cfg) are converted by copying their weights through the same converters the
file loaders use, so saeval's fast, checked encode/decode runs. Anything else with encode/decode/W_dec is
wrapped in :class:`DelegatingSAE`, which calls the object's own methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from saeval.errors import SaevalError
from saeval.saes.base import SAE, SAEConfig
from saeval.saes.formats.dictionary_learning import DL_CLASSES, from_dictionary_learning
from saeval.saes.formats.saelens import from_saelens_dict
from saeval.saes.formats.sparsify import from_sparsify

_WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "log_threshold", "b_gate", "r_mag", "b_mag")


def _cfg_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict from a sae_lens dataclass config, a pydantic model, a mapping or a simple namespace."""
    if hasattr(cfg, "to_dict"):
        out = dict(cfg.to_dict())
    elif isinstance(cfg, Mapping):
        out = dict(cfg)
    elif hasattr(cfg, "model_dump"):
        out = dict(cfg.model_dump())
    elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = dataclasses.asdict(cfg)
    else:
        out = dict(getattr(cfg, "__dict__", {}))
    arch = getattr(cfg, "architecture", None)
    if callable(arch):  # sae-lens 6 makes architecture a classmethod, not a field
        out["architecture"] = arch()
    return out


def _tensors(obj: Any) -> dict[str, Tensor]:
    found = {k: v.detach() for k, v in obj.state_dict().items()} if hasattr(obj, "state_dict") else {}
    for name in _WEIGHTS:
        value = getattr(obj, name, None)
        if isinstance(value, Tensor):
            found[name] = value.detach()
    return found


def _dims(obj: Any, cfg: Mapping[str, Any]) -> tuple[int | None, int | None]:
    def first(*names: str) -> int | None:
        for name in names:
            value = cfg.get(name, getattr(obj, name, None))
            if isinstance(value, int) and value > 0:
                return value
        return None

    return first("d_in", "activation_dim"), first("d_sae", "dict_size", "num_latents")


class DelegatingSAE(SAE):
    """An SAE whose encode/decode are the wrapped object's own; W_dec (and W_enc if any) are read from it.

    Use it for SAEs whose activation saeval does not implement. pre_acts, and W_enc when the object has none,
    raise SaevalError, so metrics that need them fail loudly instead of reading zeros."""

    architecture = "delegate"

    def __init__(self, inner: Any, cfg: SAEConfig, dec_transposed: bool):
        nn.Module.__init__(self)  # not SAE.__init__: the weights live in `inner`; don't allocate zero copies
        self.cfg = cfg
        self.inner = inner  # registered as a submodule when it is one, so .to(device) moves it
        self._dec_transposed = dec_transposed

    @property
    def W_dec(self) -> Tensor:  # type: ignore[override]
        w = self.inner.W_dec
        return w.T if self._dec_transposed else w

    @property
    def W_enc(self) -> Tensor:  # type: ignore[override]
        w = getattr(self.inner, "W_enc", None)
        if not isinstance(w, Tensor):
            raise SaevalError(f"SAE {self.name} wraps a {type(self.inner).__name__} without W_enc; "
                              "this metric needs encoder weights")
        return w

    @property
    def b_dec(self) -> Tensor:  # type: ignore[override]
        b = getattr(self.inner, "b_dec", None)
        return b if isinstance(b, Tensor) else torch.zeros(self.d_in, device=self.W_dec.device)

    def pre_acts(self, x: Tensor) -> Tensor:
        raise SaevalError(f"SAE {self.name} wraps a {type(self.inner).__name__}: "
                          "pre-activations are not available")

    def encode(self, x: Tensor) -> Tensor:
        out = self.inner.encode(x.to(self.W_dec.dtype))
        if isinstance(out, tuple):  # many libraries return (latents, extras...)
            out = out[0]
        if not isinstance(out, Tensor) or out.shape[-1] != self.d_sae:
            shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise SaevalError(f"SAE {self.name}: {type(self.inner).__name__}.encode returned {shape}, "
                              f"expected dense latents of width d_sae={self.d_sae}")
        return out

    def decode(self, f: Tensor) -> Tensor:
        return self.inner.decode(f.to(self.W_dec.dtype))


def _delegate(obj: Any, cfg: Mapping[str, Any], name: str | None) -> DelegatingSAE:
    W_dec = obj.W_dec
    d_in, d_sae = _dims(obj, cfg)
    if d_in is None or d_sae is None:
        d_sae, d_in = W_dec.shape  # SAELens convention [d_sae, d_in] when the object does not say
    if tuple(W_dec.shape) not in ((d_sae, d_in), (d_in, d_sae)):
        raise SaevalError(f"{type(obj).__name__}: W_dec has shape {list(W_dec.shape)}, which fits neither "
                          f"[d_sae={d_sae}, d_in={d_in}] nor its transpose")
    raw = cfg.get("metadata")
    meta: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    sae_cfg = SAEConfig(architecture="delegate", d_in=d_in, d_sae=d_sae, name=name or type(obj).__name__,
                        hook_name=meta.get("hook_name") or cfg.get("hook_name"),
                        model_name=meta.get("model_name") or cfg.get("model_name"))
    # Square W_dec is ambiguous; [d_sae, d_in] (the SAELens/saeval layout) wins.
    return DelegatingSAE(obj, sae_cfg, dec_transposed=tuple(W_dec.shape) != (d_sae, d_in))


def _convert(obj: Any, cfg: dict[str, Any], tensors: dict[str, Tensor], can_delegate: bool) -> SAE | None:
    """Copy ``obj``'s weights into a saeval SAE when its layout is known; None when it is not."""
    kind = type(obj).__name__
    where = f"{kind} object"
    if kind in DL_CLASSES and hasattr(obj, "state_dict"):
        dims = {key: getattr(obj, key, None) for key in ("activation_dim", "dict_size")}
        # JumpReluAutoEncoder keeps apply_b_dec_to_input as a plain attribute (True when loaded via sae_lens).
        return from_dictionary_learning(kind, tensors, where, dims,
                                        apply_b_dec_to_input=getattr(obj, "apply_b_dec_to_input", None))
    if "encoder.weight" in tensors and "W_dec" in tensors and "k" in cfg:  # sparsify SparseCoder
        return from_sparsify({**cfg, "d_in": getattr(obj, "d_in", None)}, tensors, where)
    if not cfg or not all(n in tensors for n in ("W_enc", "W_dec", "b_dec")):
        return None
    if not cfg.get("architecture"):
        if can_delegate:  # its own encode may use any activation: guessing one from tensors could be wrong
            return None
        cfg["architecture"] = ("gated" if "b_gate" in tensors else "jumprelu" if "threshold" in tensors
                               else "topk" if cfg.get("k") else "standard")
    d_in, d_sae = _dims(obj, cfg)
    return from_saelens_dict({"d_in": d_in, "d_sae": d_sae, **cfg}, tensors, where)


def wrap_sae(obj: Any, name: str | None = None) -> SAE:
    """A saeval SAE for ``obj``: converted weights when its layout is known, else a delegating wrapper."""
    if isinstance(obj, SAE):
        return obj
    raw_cfg = getattr(obj, "cfg", None)
    cfg = _cfg_dict(raw_cfg) if raw_cfg is not None else {}
    tensors = _tensors(obj)
    can_delegate = callable(getattr(obj, "encode", None)) and callable(getattr(obj, "decode", None)) and (
        isinstance(getattr(obj, "W_dec", None), Tensor))
    try:
        sae = _convert(obj, cfg, tensors, can_delegate)
    except SaevalError:
        # A transcoder's own decode misses its skip path or output hook: delegating would hide that.
        if not can_delegate or "transcoder" in str(cfg.get("architecture")):
            raise
        sae = None  # e.g. a sae_lens SAE with run-time layer norm: its own encode/decode stay authoritative
    if sae is None:
        if can_delegate:
            return _delegate(obj, cfg, name)
        raise SaevalError(f"cannot use a {type(obj).__name__} as an SAE: it needs W_enc/W_dec/b_dec tensors "
                          "and a cfg, or encode/decode methods and a W_dec tensor")
    if name:
        sae.cfg = sae.cfg.model_copy(update={"name": name})
    return sae.to(next(iter(tensors.values())).device)

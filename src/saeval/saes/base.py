"""SAE architectures for inference: one small class each, found through a registry by name.

Every SAE maps x_BD -> f_BF (encode) -> xhat_BD (decode) with W_enc_DF, b_enc_F, W_dec_FD, b_dec_D. A
transcoder (``cfg.hook_name_out`` set) reads x at ``hook_name`` (width d_in) and writes its output at
``hook_name_out`` (width d_out): there W_dec_FD and b_dec_D have D = d_out, and b_dec never centres the input.
A Matryoshka SAE (``cfg.matryoshka_widths``) nests prefix SAEs: ``sae.prefix(w)`` is the SAE of its first w
latents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from saeval.errors import SaevalError


class SAEConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    architecture: str
    d_in: int
    d_sae: int
    hook_name: str | None = None
    model_name: str | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = True
    # Inputs are multiplied by act_scale before encoding and outputs divided by it (SAELens's dataset
    # normalisation folded into a constant).
    act_scale: float = 1.0
    name: str | None = None
    # Transcoders read hook_name (their input) and write hook_name_out, whose width d_out may differ from d_in.
    hook_name_out: str | None = None
    d_out: int | None = None
    # Matryoshka SAEs: the nested dictionary sizes, increasing, the last equal to d_sae (latents 0..w-1 form
    # the prefix SAE of width w).
    matryoshka_widths: list[int] | None = None


SAE_REGISTRY: dict[str, type[SAE]] = {}
ALIASES = {"standard": "relu", "l1": "relu", "vanilla": "relu", "jump_relu": "jumprelu", "batch_topk": "batchtopk",
           "matryoshka": "matryoshka_batchtopk"}


def register(cls: type[SAE]) -> type[SAE]:
    SAE_REGISTRY[cls.architecture] = cls
    return cls


def canonical_architecture(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SAE_REGISTRY:
        raise SaevalError(f"unknown SAE architecture {name!r}; known: {', '.join(sorted(SAE_REGISTRY))}")
    return key


def config_problems(cfg: SAEConfig, arch: str) -> list[str]:
    """Why ``cfg`` cannot make a working ``arch`` SAE, one phrase each; empty when it can."""
    problems = []
    if cfg.d_in < 1 or cfg.d_sae < 1:
        problems.append(f"d_in={cfg.d_in} and d_sae={cfg.d_sae} must both be positive")
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk") and cfg.k is not None and not 1 <= cfg.k <= cfg.d_sae:
        # torch's topk fails deep inside encode otherwise, long after loading seemed to work.
        problems.append(f"k={cfg.k} but a {arch} SAE keeps between 1 and d_sae={cfg.d_sae} latents per token")
    elif arch == "topk" and not cfg.k:
        problems.append("a TopK SAE needs k in its config")
    if not math.isfinite(cfg.act_scale) or cfg.act_scale == 0:
        problems.append(f"act_scale={cfg.act_scale} must be finite and non-zero (decoding divides by it)")
    return problems + transcoder_problems(cfg) + matryoshka_problems(cfg, arch)


def transcoder_problems(cfg: SAEConfig) -> list[str]:
    problems = []
    if cfg.d_out is not None and cfg.d_out < 1:
        problems.append(f"d_out={cfg.d_out} must be positive")
    if cfg.hook_name_out is None:
        if cfg.d_out is not None and cfg.d_out != cfg.d_in:
            problems.append(f"d_out={cfg.d_out} differs from d_in={cfg.d_in} but no hook_name_out says where the "
                            "output goes; a transcoder needs hook_name_out")
        return problems
    if cfg.apply_b_dec_to_input:
        problems.append("a transcoder's b_dec is its output bias (width d_out, at hook_name_out), so it cannot "
                        "centre the input: set apply_b_dec_to_input=false")
    return problems


def matryoshka_problems(cfg: SAEConfig, arch: str) -> list[str]:
    widths = cfg.matryoshka_widths
    if widths is None:
        return ["a Matryoshka SAE needs matryoshka_widths (its nested prefix widths)"] if (
            arch == "matryoshka_batchtopk") else []
    increasing = all(a < b for a, b in zip(widths, widths[1:], strict=False))
    if not widths or widths[0] < 1 or not increasing or widths[-1] != cfg.d_sae:
        return [f"matryoshka_widths={widths} must be positive, strictly increasing and end at d_sae={cfg.d_sae}"]
    return []


def nonfinite_problems(tensors: Iterable[tuple[str, Tensor]]) -> list[str]:
    """One phrase per tensor holding NaN or inf, with counts: such weights make every metric meaningless."""
    problems = []
    for name, value in tensors:
        if not value.is_floating_point():
            continue
        n_nan, n_inf = int(value.isnan().sum()), int(value.isinf().sum())
        if n_nan or n_inf:
            found = " and ".join(f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "inf")) if n)
            problems.append(f"{name} has {found} of {value.numel()} values")
    return problems


def create_sae(cfg: SAEConfig, check: bool = True) -> SAE:
    """The registered SAE for ``cfg`` (zero weights). ``check=False`` is for build_sae, which reports config
    problems together with the weights' own."""
    arch = canonical_architecture(cfg.architecture)
    problems = config_problems(cfg, arch) if check else []
    if problems:
        raise SaevalError(f"SAE {cfg.name or arch}: " + "; ".join(problems))
    return SAE_REGISTRY[arch](cfg.model_copy(update={"architecture": arch}))


class SAE(nn.Module):
    architecture: ClassVar[str] = ""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        D, F = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(D, F))
        self.b_enc = nn.Parameter(torch.zeros(F))
        self.W_dec = nn.Parameter(torch.zeros(F, self.d_out))  # a transcoder decodes into its output space
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_out(self) -> int:
        """Width of decode's output: d_in, or a transcoder's output width."""
        return self.cfg.d_out or self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def is_transcoder(self) -> bool:
        return self.cfg.hook_name_out is not None

    @property
    def name(self) -> str:
        return self.cfg.name or f"{self.architecture}-{self.d_sae}"

    def check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise SaevalError(
                f"SAE {self.name} expects d_in={self.d_in} but the activations have width {x.shape[-1]}: "
                "pick the SAE trained for this model and hook"
            )

    def _centered(self, x: Tensor) -> Tensor:
        x = x.to(self.W_enc.dtype) * self.cfg.act_scale
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def pre_acts(self, x: Tensor) -> Tensor:
        return self._centered(x) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_acts(x))

    def decode(self, f: Tensor) -> Tensor:
        return (f @ self.W_dec + self.b_dec) / self.cfg.act_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def prefix(self, width: int) -> SAE:
        """The SAE of the first ``width`` latents (a Matryoshka level): its latents are this SAE's latents
        0..width-1 and its reconstruction decodes only those, i.e. this SAE's decode with latents >= width
        zeroed. It shares this SAE's weights (a view, no copy)."""
        if not 1 <= int(width) <= self.d_sae:
            raise SaevalError(f"SAE {self.name}: prefix width {width} must be between 1 and d_sae={self.d_sae}"
                              + (f" (its Matryoshka widths: {self.cfg.matryoshka_widths})"
                                 if self.cfg.matryoshka_widths else ""))
        if int(width) == self.d_sae:
            return self
        return PrefixSAE(self, int(width))


class PrefixSAE(SAE):
    """The first ``width`` latents of ``parent``. Encoding runs the whole parent and keeps the first ``width``
    latents, as Matryoshka training scores each level: for TopK/BatchTopK the winners are chosen among all
    latents, so slicing the encoder weights instead would pick different latents."""

    def __init__(self, parent: SAE, width: int):
        nn.Module.__init__(self)  # not SAE.__init__: the weights are the parent's (views below)
        widths = [w for w in parent.cfg.matryoshka_widths or () if w < width]
        self.cfg = parent.cfg.model_copy(update={
            "d_sae": width, "name": f"{parent.name}[:{width}]",
            "matryoshka_widths": [*widths, width] if parent.cfg.matryoshka_widths else None})
        self.parent = parent
        self.width = width
        self.architecture = parent.architecture  # type: ignore[misc]  # same activation rule as the parent

    @property
    def W_enc(self) -> Tensor:  # type: ignore[override]
        return self.parent.W_enc[:, : self.width]

    @property
    def b_enc(self) -> Tensor:  # type: ignore[override]
        return self.parent.b_enc[: self.width]

    @property
    def W_dec(self) -> Tensor:  # type: ignore[override]
        return self.parent.W_dec[: self.width]

    @property
    def b_dec(self) -> Tensor:  # type: ignore[override]
        return self.parent.b_dec

    def pre_acts(self, x: Tensor) -> Tensor:
        return self.parent.pre_acts(x)[..., : self.width]

    def encode(self, x: Tensor) -> Tensor:
        return self.parent.encode(x)[..., : self.width]

    def decode(self, f: Tensor) -> Tensor:
        return (f @ self.W_dec + self.b_dec) / self.cfg.act_scale

    def prefix(self, width: int) -> SAE:
        if not 1 <= int(width) <= self.d_sae:
            raise SaevalError(f"SAE {self.name}: prefix width {width} must be between 1 and d_sae={self.d_sae}")
        return self.parent.prefix(width)


def _latent_view(name: str) -> property:
    return property(lambda self: getattr(self.parent, name)[: self.width], doc=f"the parent's {name}, sliced")


for _name in ("threshold", "b_gate", "r_mag", "b_mag"):  # per-latent weights some architectures have
    setattr(PrefixSAE, _name, _latent_view(_name))


@register
class ReLUSAE(SAE):
    architecture = "relu"


@register
class TopKSAE(SAE):
    architecture = "topk"  # k is checked by create_sae (config_problems)

    def encode(self, x: Tensor) -> Tensor:
        pre = torch.relu(self.pre_acts(x))
        values, indices = pre.topk(int(self.cfg.k), dim=-1)  # type: ignore[arg-type]
        return torch.zeros_like(pre).scatter_(-1, indices, values)


@register
class JumpReLUSAE(SAE):
    architecture = "jumprelu"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        return torch.relu(pre) * (pre > self.threshold)


@register
class BatchTopKSAE(JumpReLUSAE):
    """Trained with batch top-k; at inference a global threshold (a JumpReLU) when one is stored, else top-k."""

    architecture = "batchtopk"

    def encode(self, x: Tensor) -> Tensor:
        if bool((self.threshold > 0).any()) or not self.cfg.k:
            return super().encode(x)
        return TopKSAE.encode(self, x)  # type: ignore[arg-type]


@register
class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """A BatchTopK SAE trained with nested reconstruction losses: latents 0..w-1 for each w in
    cfg.matryoshka_widths form a working SAE of their own (``prefix(w)``). Inference is BatchTopK's."""

    architecture = "matryoshka_batchtopk"


@register
class GatedSAE(SAE):
    """Gate path decides which latents fire; magnitude path (W_enc scaled by exp(r_mag)) decides how much."""

    architecture = "gated"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        xc = self._centered(x)
        gate = (xc @ self.W_enc + self.b_gate) > 0
        magnitude = torch.relu(xc @ (self.W_enc * torch.exp(self.r_mag)) + self.b_mag)
        return magnitude * gate

    def pre_acts(self, x: Tensor) -> Tensor:
        return self._centered(x) @ self.W_enc + self.b_gate

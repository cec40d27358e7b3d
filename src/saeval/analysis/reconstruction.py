"""Reconstruction statistics and downstream loss of an SAE spliced in at a hook (shared spec core-metrics.md).

The pieces core and FaithfulSAE's cross-data metrics share: :class:`ReconstructionStats`, :func:`next_token_stats`
(next-token CE and KL(clean || run) as SAELens takes them), :func:`guard_metrics` and :class:`SpliceLosses`.
``reconstruction_batches`` is the loop cross_data_metrics runs for one or several SAEs at a hook: per batch of
contexts it runs the model to the hook once, encodes the ordinary tokens' activations with each SAE, accumulates
the statistics and, given SpliceLosses, the CE/KL of one clean run from the hook and of each SAE's spliced run.
Core computes the clean and zero-ablated runs once per run instead (evals/core/shared.py) and meets the clean
distribution through :class:`CleanDistribution`, or reruns it beside the splice (:func:`clean_beside_spliced`).
Special tokens are excluded from every statistic and keep their original activation in the reconstruction run;
core's zero-ablated run zeroes them too unless told otherwise (SAELens's get_recons_loss does, so its ablation
also removes the BOS attention sink).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saeval.data.activations import check_finite
from saeval.progress import track

MAX_NORM_RATIO = 100.0  # mean ||xhat|| / mean ||x|| beyond which a reconstruction is broken, not merely poor


def _mean(total: float, count: int) -> float:
    return total / count if count else math.nan


class ReconstructionStats:
    """Float64 running sums over ordinary tokens, so means and variances are exact at any scale."""

    def __init__(self, d_in: int, d_sae: int):
        self.n = 0
        self.sum_sq_err = 0.0
        self.sum_sq_x = 0.0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_ev_legacy = 0.0
        self.sum_cos = 0.0
        self.sum_norm_in = 0.0
        self.sum_norm_out = 0.0
        self.sum_ratio = 0.0
        self.sum_sq_xhat = 0.0
        self.sum_dot = 0.0
        self.sum_l0 = 0.0
        self.sum_l1 = 0.0
        # SAELens's relative_reconstruction_bias: E||xhat||^2 / E<x, xhat> within each batch, averaged over batches.
        self.sum_batch_bias = 0.0
        self.n_bias_batches = 0
        # Cosine and norm ratio are undefined at zero vectors (NaN in SAELens): their means skip those tokens.
        self.n_cos = 0
        self.n_ratio = 0
        self.n_zero_x = 0
        self.n_zero_xhat = 0
        self.n_nonfinite_xhat = 0

    def update(self, x: Tensor, xhat: Tensor, f: Tensor) -> None:
        """One batch's ordinary tokens (the batch matters for the per-batch statistics: legacy EV and bias)."""
        x, xhat = x.double(), xhat.double()
        err = (x - xhat).pow(2).sum(-1)
        norm_x, norm_xhat = x.norm(dim=-1), xhat.norm(dim=-1)
        if len(x):  # a batch without ordinary tokens has no ratio (SAELens would average in a NaN)
            dot = float((x * xhat).sum())
            self.sum_batch_bias += float(norm_xhat.pow(2).sum()) / dot if dot else math.nan
            self.n_bias_batches += 1
        # Legacy EV (SAEBench paper, Neuronpedia): per token against the batch mean, then averaged.
        centered = (x - x.mean(0)).pow(2).sum(-1)
        self.sum_ev_legacy += float((1 - err / centered.clamp_min(1e-12)).sum())
        # A zero vector has no direction: its cosine is NaN (as in SAELens), not 1, and is left out of the mean.
        has_cos = (norm_x > 0) & (norm_xhat > 0)
        cos = (x * xhat).sum(-1)[has_cos] / (norm_x * norm_xhat)[has_cos]
        ratio = norm_xhat[norm_x > 0] / norm_x[norm_x > 0]
        self.n_cos += len(cos)
        self.n_ratio += len(ratio)
        self.n_zero_x += int((norm_x == 0).sum())
        self.n_zero_xhat += int((norm_xhat == 0).sum())
        self.n_nonfinite_xhat += int((~xhat.isfinite()).any(-1).sum())
        self.n += len(x)
        self.sum_sq_err += float(err.sum())
        self.sum_sq_x += float(x.pow(2).sum())
        self.sum_x += x.sum(0).cpu()
        self.sum_cos += float(cos.sum())
        self.sum_norm_in += float(norm_x.sum())
        self.sum_norm_out += float(norm_xhat.sum())
        self.sum_ratio += float(ratio.sum())
        self.sum_sq_xhat += float(norm_xhat.pow(2).sum())
        self.sum_dot += float((x * xhat).sum())
        self.sum_l0 += float((f != 0).sum())
        self.sum_l1 += float(f.double().sum())

    def explained_variance(self) -> float:
        """1 - E||x - xhat||^2 / (E||x||^2 - ||E x||^2); 1 when the data has no variance and no error."""
        mse = self.sum_sq_err / self.n
        total_var = self.sum_sq_x / self.n - float((self.sum_x / self.n).pow(2).sum())
        if total_var < 1e-10:
            return 1.0 if mse < 1e-10 else 0.0
        return 1 - mse / total_var

    def summary(self) -> dict[str, float]:
        n = self.n
        return {
            "l0": self.sum_l0 / n, "l1": self.sum_l1 / n, "mse": self.sum_sq_err / n,
            "explained_variance": self.explained_variance(), "explained_variance_legacy": self.sum_ev_legacy / n,
            "cossim": _mean(self.sum_cos, self.n_cos), "l2_norm_in": self.sum_norm_in / n,
            "l2_norm_out": self.sum_norm_out / n, "l2_ratio": _mean(self.sum_ratio, self.n_ratio),
            "relative_reconstruction_bias": _mean(self.sum_batch_bias, self.n_bias_batches),
            "relative_reconstruction_bias_global": self.sum_sq_xhat / self.sum_dot if self.sum_dot else math.nan,
        }

    def checks(self) -> tuple[bool, list[str]]:
        """(valid, warnings). Not valid: some reconstruction is NaN/inf or the reconstructions' mean norm is over
        MAX_NORM_RATIO times the inputs'. Spliced into the model, such a vector breaks it (uniform logits can
        even score better than a sane SAE), so no score computed from it means anything."""
        valid, warnings = True, []
        if self.n_nonfinite_xhat:
            valid = False
            warnings.append(f"invalid: {self.n_nonfinite_xhat} of {self.n} reconstructions hold NaN or inf "
                            "(the SAE overflows)")
        ratio = self.sum_norm_out / self.sum_norm_in if self.sum_norm_in > 0 else math.nan
        if math.isfinite(ratio) and ratio > MAX_NORM_RATIO:
            valid = False
            warnings.append(f"invalid: reconstructions are {ratio:.3g}x the input's norm on average (limit "
                            f"{MAX_NORM_RATIO:g}x); the SAE's weights are mis-scaled")
        if self.n_zero_xhat:
            warnings.append(f"{self.n_zero_xhat} of {self.n} tokens have an all-zero reconstruction: their cosine "
                            "is undefined and cossim leaves them out")
        if self.n_zero_x:
            warnings.append(f"{self.n_zero_x} of {self.n} tokens have an all-zero input: cossim and l2_ratio "
                            "leave them out")
        return valid, warnings


_SCORES = ("ce_loss_score", "kl_div_score")
# Why a metric can be NaN for a valid reconstruction, once the metrics it is computed from are finite.
_UNDEFINED = {
    "ce_loss_score": ("zero-ablation CE equals clean CE", ("ce_loss_with_ablation", "ce_loss_without_sae")),
    "kl_div_score": ("KL of the zero-ablated run is 0", ("kl_div_with_ablation",)),
    "cossim": ("every reconstruction or input is all zero", ()),
    "l2_ratio": ("every input is all zero", ()),
    "relative_reconstruction_bias": ("E<x, xhat> is 0 in some batch", ()),
    "relative_reconstruction_bias_global": ("E<x, xhat> is 0", ()),
    "average_encoder_decoder_cosine_sim": ("a transcoder's encoder and decoder live at different hooks", ()),
}


def guard_metrics(metrics: dict[str, float | None], stats: ReconstructionStats) -> tuple[bool, list[str]]:
    """Validity and warnings for ``metrics`` (stats' summary plus SpliceLosses'), which it edits in place:
    NaN/inf values become None with the reason in a warning, and an invalid reconstruction's CE/KL scores are
    withheld (None), so no reader ranks a broken SAE by them."""
    valid, warnings = stats.checks()
    broken = [k for k in ("ce_loss_with_sae", "kl_div_with_sae") if not math.isfinite(metrics.get(k) or 0.0)]
    if broken:
        valid = False
        warnings.append(f"invalid: {' and '.join(broken)} not finite; the model breaks with the reconstruction "
                        "spliced in")
    if not valid:
        withheld = [k for k in _SCORES if metrics.get(k) is not None]
        metrics.update(dict.fromkeys(withheld))
        if withheld:
            warnings.append(f"{' and '.join(withheld)} withheld (null): scores of an invalid reconstruction are "
                            "not comparable with other SAEs'")
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    rest = []
    for key in bad:
        reason, deps = _UNDEFINED.get(key, ("", ()))
        if valid and reason and all(math.isfinite(metrics.get(d) or 0.0) for d in deps):
            warnings.append(f"{key} is undefined (null): {reason}")
        else:
            rest.append(key)
    if rest:
        warnings.append(f"{', '.join(rest)} came out NaN or inf (null)"
                        + ("" if valid else " because the reconstruction is invalid"))
    metrics.update(dict.fromkeys(bad))
    return valid, warnings


def splice(acts_BLD: Tensor, replacement_BLD: Tensor, mask_BL: Tensor) -> Tensor:
    """``replacement`` at ordinary tokens, the original activation at special ones."""
    mask = mask_BL.to(acts_BLD.device)[..., None]  # masks come from CPU token ids; activations may be on a GPU
    return torch.where(mask, replacement_BLD.to(acts_BLD.device, acts_BLD.dtype), acts_BLD)


KLPositions = Literal["ordinary", "with_next_token"]


def _lse(logits_BLV: Tensor) -> Tensor:
    """Log-sum-exp over the vocabulary as float64, without a float64 copy of the logits: max + log(sum exp(z -
    max)) with the sum in float32 (relative error ~1e-7, so ~1e-7 nats after the log) and the final addition in
    float64; rounding LSE itself to float32 would cost ~1 ulp of its value (4e-6 at 40 nats)."""
    if logits_BLV.dtype == torch.float64:
        return torch.logsumexp(logits_BLV, -1)
    z = logits_BLV.float()
    top = z.amax(-1, keepdim=True)
    return top.squeeze(-1).double() + (z - top).exp().sum(-1).double().log()


class CleanDistribution(NamedTuple):
    """What KL(clean || run) needs of the clean next-token distribution p at each position: 2 d_model + 2
    numbers instead of the vocabulary's V log-probs, when the logits are affine in the final normed residual n,
    z = W n + b (an unembedding without soft-capping).

    With log p = z_c - LSE(z_c), log q = z - LSE(z) and m = sum_i p_i, z_c - z = W (n_c - n) (the bias cancels):

        KL(p || q) = sum_i p_i (log p_i - log q_i) = (W^T p) . (n_c - n) + m (LSE(z) - LSE(z_c)).

    This is the elementwise sum regrouped, exact in real arithmetic: nothing of p is truncated (unlike keeping
    its top k), so no bound beyond rounding is needed. Written as a difference from the clean run, no term is
    larger than the KL's own scale but the two LSEs, which :func:`_lse` keeps to ~1e-7 nats. ``proj_BLD`` =
    W^T p is formed in the unembedding's dtype, the rest in float64. tests/test_core_shared.py compares it and
    the elementwise float32 sum with a float64 computation."""

    proj_BLD: Tensor  # W^T p, in W's dtype
    normed_BLD: Tensor  # n_c, the clean run's final normed residual
    lse_BL: Tensor  # LSE(z_c), float64
    mass_BL: Tensor  # sum_i p_i (1 up to rounding; kept so the identity holds for the rounded p), float64

    @classmethod
    def of(cls, clean_logits_BLV: Tensor, clean_normed_BLD: Tensor, W_VD: Tensor,
           clean_logp_BLV: Tensor | None = None) -> CleanDistribution:
        if clean_logp_BLV is None:
            wide = clean_logits_BLV if clean_logits_BLV.dtype == torch.float64 else clean_logits_BLV.float()
            clean_logp_BLV = F.log_softmax(wide, -1)
        p = clean_logp_BLV.exp()
        return cls(proj_BLD=p.to(W_VD.dtype) @ W_VD, normed_BLD=clean_normed_BLD, lse_BL=_lse(clean_logits_BLV),
                   mass_BL=p.sum(-1).double())

    def kl_BL(self, logits_BLV: Tensor, normed_BLD: Tensor) -> Tensor:
        """KL(clean || run) per position, from the run's logits (for LSE) and final normed residual."""
        delta = self.normed_BLD.double() - normed_BLD.to(self.normed_BLD.device).double()
        return (self.proj_BLD.double() * delta).sum(-1) + self.mass_BL * (_lse(logits_BLV) - self.lse_BL)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self)


def next_token_stats(logits_BLV: Tensor, clean: Tensor | CleanDistribution, tokens_BL: Tensor, keep_BL: Tensor,
                     kl_last: bool = True, normed_BLD: Tensor | None = None) -> tuple[float, float, int, int]:
    """Summed next-token CE and summed KL(clean || run), with their position counts, as SAELens's evals take them.

    A position counts when its input token is kept (``keep``: not special), whatever token follows it. CE needs
    a next token in the context: positions 0..L-2. KL compares next-token distributions, which the last position
    has too: positions 0..L-1, or 0..L-2 without ``kl_last``. ``clean``: the clean run's log-probs (all L), or
    its :class:`CleanDistribution`, which also needs the run's final normed residual ``normed_BLD``."""
    logp = F.log_softmax(logits_BLV.float(), dim=-1)
    ce, n_ce, kl_keep = _next_token_ce(logp, tokens_BL, keep_BL, kl_last)
    if isinstance(clean, CleanDistribution):
        if normed_BLD is None:
            raise ValueError("a CleanDistribution needs the run's final normed residual")
        kl = clean.kl_BL(logits_BLV, normed_BLD)
    else:
        kl = (clean.exp() * (clean - logp)).sum(-1)
    return ce, float(kl[kl_keep].double().sum()), n_ce, int(kl_keep.sum())


def uniform_run_stats(logits_V: Tensor, normed_D: Tensor, clean: Tensor | CleanDistribution, tokens_BL: Tensor,
                      keep_BL: Tensor, kl_last: bool = True) -> tuple[float, float, int, int]:
    """next_token_stats of a run whose logits are ``logits_V`` (final normed residual ``normed_D``) at every
    position, such as a residual stream zeroed everywhere: one log_softmax over V instead of one per position."""
    logp_V = F.log_softmax(logits_V.float(), dim=-1)
    B, L = tokens_BL.shape
    ce, n_ce, kl_keep = _next_token_ce(logp_V.expand(B, L, -1), tokens_BL, keep_BL, kl_last)
    if isinstance(clean, CleanDistribution):
        kl = clean.kl_BL(logits_V.view(1, 1, -1), normed_D.view(1, 1, -1))
    else:
        kl = (clean.exp() * (clean - logp_V)).sum(-1)
    return ce, float(kl[kl_keep].double().sum()), n_ce, int(kl_keep.sum())


def next_token_ce(logp_BLV: Tensor, tokens_BL: Tensor, keep_BL: Tensor, kl_last: bool = True,
                  ) -> tuple[float, int, int]:
    """next_token_stats of a run against itself (KL 0) from its log-probs: summed CE and the two position counts."""
    ce, n_ce, kl_keep = _next_token_ce(logp_BLV, tokens_BL, keep_BL, kl_last)
    return ce, n_ce, int(kl_keep.sum())


def _next_token_ce(logp_BLV: Tensor, tokens_BL: Tensor, keep_BL: Tensor, kl_last: bool) -> tuple[float, int, Tensor]:
    ce_keep = keep_BL[:, :-1].to(logp_BLV.device)
    kl_keep = keep_BL.clone().to(logp_BLV.device)
    if not kl_last:
        kl_keep[:, -1] = False
    ce = -logp_BLV[:, :-1].gather(-1, tokens_BL[:, 1:, None].to(logp_BLV.device)).squeeze(-1)
    return float(ce[ce_keep].double().sum()), int(ce_keep.sum()), kl_keep


def with_reconstruction(acts_BLD: Tensor, mask_BL: Tensor, xhat_ND: Tensor) -> Tensor:
    """``acts`` with ``xhat`` at the ordinary tokens (``mask``); special tokens keep their activation."""
    recon = acts_BLD.clone()
    recon[mask_BL] = xhat_ND.to(recon.dtype)
    return recon


def clean_beside_spliced(host, state, acts_BLD: Tensor, recon_BLD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The clean run and the run with ``recon`` spliced in, stacked in one pass from the hook (``host.run_from``):
    clean logits, clean log-probs and spliced logits, float32."""
    logits = host.run_from(state, torch.cat([acts_BLD, recon_BLD])).float()
    B = len(acts_BLD)
    return logits[:B], F.log_softmax(logits[:B], dim=-1), logits[B:]


class SpliceLosses:
    """Float64 sums of next-token CE and KL(clean || run) over ordinary positions, for the clean run, the run
    with the SAE reconstruction spliced in and, when built :meth:`from_sums` (core's shared zero-ablated pass),
    the run with zeros spliced in. Cross-data metrics add each batch's clean run (:meth:`add_clean`) and
    spliced run (:meth:`add_spliced`).

    ``kl_positions`` "ordinary" averages KL over every ordinary position, the last included (SAELens/SAEBench);
    "with_next_token" over the CE positions only (0..L-2). ``kl=False`` sums CE only (the cross-data table
    reports no KL): the elementwise KL over the vocabulary costs several times a log_softmax."""

    def __init__(self, kl_positions: KLPositions = "ordinary", kl: bool = True):
        self.zero_ablation = False
        self.kl = kl
        self.kl_last = kl_positions == "ordinary"
        self.ce_sums = np.zeros(3)  # clean, sae, zero
        self.kl_sums = np.zeros(2)  # sae, zero
        self.n_positions = 0  # CE positions (cross-data metrics read ce_sums / n_positions)
        self.n_kl_positions = 0

    @classmethod
    def from_sums(cls, ce_clean: float, ce_sae: float, ce_zero: float, kl_sae: float, kl_zero: float,
                  n_positions: int, n_kl_positions: int) -> SpliceLosses:
        """Sums computed elsewhere (core's shared clean and zero-ablated passes plus one SAE's spliced run)."""
        out = cls()
        out.zero_ablation = True
        out.ce_sums[:] = (ce_clean, ce_sae, ce_zero)
        out.kl_sums[:] = (kl_sae, kl_zero)
        out.n_positions, out.n_kl_positions = n_positions, n_kl_positions
        return out

    def add_clean(self, clean_logp: Tensor, tokens_BL: Tensor, mask_BL: Tensor) -> None:
        ce_clean, n_ce, n_kl = next_token_ce(clean_logp, tokens_BL, mask_BL, self.kl_last)
        self.ce_sums[0] += ce_clean
        self.n_positions += n_ce
        self.n_kl_positions += n_kl

    def add_spliced(self, logits: Tensor, clean_logp: Tensor, tokens_BL: Tensor, mask_BL: Tensor) -> None:
        if not self.kl:
            self.ce_sums[1] += next_token_ce(F.log_softmax(logits.float(), dim=-1), tokens_BL, mask_BL)[0]
            return
        ce_sae, kl_sae, _, _ = next_token_stats(logits, clean_logp, tokens_BL, mask_BL, self.kl_last)
        self.ce_sums[1] += ce_sae
        self.kl_sums[0] += kl_sae

    def summary(self) -> dict[str, float]:
        """SAEBench's CE and KL numbers; the scores need the zero-ablated run (NaN without it)."""
        ce_clean, ce_sae, ce_zero = self.ce_sums / self.n_positions
        kl_sae, kl_zero = self.kl_sums / self.n_kl_positions if self.kl else (math.nan, math.nan)
        out = {"ce_loss_without_sae": ce_clean, "ce_loss_with_sae": ce_sae, "kl_div_with_sae": kl_sae}
        if self.zero_ablation:
            denom = ce_zero - ce_clean
            out.update(
                ce_loss_with_ablation=ce_zero,
                ce_loss_score=(ce_zero - ce_sae) / denom if abs(denom) > 1e-12 else math.nan,
                kl_div_with_ablation=kl_zero,
                kl_div_score=(kl_zero - kl_sae) / kl_zero if kl_zero > 1e-12 else math.nan,
            )
        return {k: float(v) for k, v in out.items()}


class Reconstruction(NamedTuple):
    """One batch's ordinary tokens: activations x_ND, codes f_NF and reconstructions xhat_ND (float32)."""

    x_ND: Tensor
    f_NF: Tensor
    xhat_ND: Tensor


@torch.inference_mode()
def reconstruction_batches(
    host,
    saes: Sequence,
    hook: str,
    contexts_NL: Tensor,
    batch_size: int,
    stats: Sequence[ReconstructionStats],
    losses: Sequence[SpliceLosses] | None,
    description: str,
) -> Iterator[list[Reconstruction]]:
    """Run ``contexts`` in batches up to ``hook`` once for all ``saes``, update each SAE's ``stats`` (and
    ``losses`` when given: one clean run from the hook per batch, then one spliced run per SAE) and yield each
    batch's reconstructions, one per SAE, so callers add their own sums (latent densities, FaithfulSAE's
    variances)."""
    starts = range(0, len(contexts_NL), batch_size)
    for start in track(starts, description):
        tokens = contexts_NL[start : start + batch_size]
        mask = host.ordinary_mask(tokens)
        acts, state = host.prefix(tokens, hook)
        check_finite(acts, f"{host.name} {hook}")
        x = acts[mask].float()
        clean = None
        if losses is not None:
            clean = F.log_softmax(host.run_from(state, acts).float(), dim=-1)
            for loss in losses:
                loss.add_clean(clean, tokens, mask)
        out = []
        for i, sae in enumerate(saes):
            sae.check_input(acts)
            f = sae.encode(x)
            xhat = sae.decode(f)
            stats[i].update(x, xhat, f)
            if losses is not None:
                logits = host.run_from(state, with_reconstruction(acts, mask, xhat)).float()
                losses[i].add_spliced(logits, clean, tokens, mask)
            out.append(Reconstruction(x, f, xhat))
        yield out

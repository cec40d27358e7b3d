"""Reconstruction statistics and downstream loss of an SAE spliced in at a hook (shared spec core-metrics.md).

One loop serves the core eval and FaithfulSAE's cross-data metrics: per batch of contexts it encodes the
ordinary tokens' activations, accumulates :class:`ReconstructionStats`, and, given a :class:`SpliceLosses`,
the next-token CE and KL(clean || run) of the clean run, the run with the reconstruction spliced in, and
(optionally) the run with zeros spliced in. Special tokens are excluded from every statistic and keep their
original activation in spliced runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saeval.data.activations import check_finite
from saeval.progress import track


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

    def update(self, x: Tensor, xhat: Tensor, f: Tensor) -> None:
        x, xhat = x.double(), xhat.double()
        err = (x - xhat).pow(2).sum(-1)
        norm_x, norm_xhat = x.norm(dim=-1), xhat.norm(dim=-1)
        # Legacy EV (SAEBench paper, Neuronpedia): per token against the batch mean, then averaged.
        centered = (x - x.mean(0)).pow(2).sum(-1)
        self.sum_ev_legacy += float((1 - err / centered.clamp_min(1e-12)).sum())
        small = (norm_x < 1e-4) | (norm_xhat < 1e-4)
        cos = torch.where(small, 1.0, (x * xhat).sum(-1) / (norm_x * norm_xhat).clamp_min(1e-12))
        ratio = torch.where(norm_x < 1e-4, 1.0, norm_xhat / norm_x.clamp_min(1e-12))
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
            "cossim": self.sum_cos / n, "l2_norm_in": self.sum_norm_in / n, "l2_norm_out": self.sum_norm_out / n,
            "l2_ratio": self.sum_ratio / n,
            "relative_reconstruction_bias": self.sum_sq_xhat / self.sum_dot if self.sum_dot else math.nan,
        }


def splice(acts_BLD: Tensor, replacement_BLD: Tensor, mask_BL: Tensor) -> Tensor:
    """``replacement`` at ordinary tokens, the original activation at special ones."""
    return torch.where(mask_BL[..., None], replacement_BLD.to(acts_BLD.dtype), acts_BLD)


def next_token_stats(logits_BLV: Tensor, clean_logp_BLV: Tensor, tokens_BL: Tensor, keep_BL: Tensor):
    """Summed CE of the next token and KL(clean || run) over positions ``keep`` (input token not special).

    ``clean_logp_BLV`` holds the clean log-probs of positions 0..L-2 (those that predict a next token)."""
    logp = F.log_softmax(logits_BLV[:, :-1].float(), dim=-1)
    keep = keep_BL[:, :-1]
    ce = -logp.gather(-1, tokens_BL[:, 1:, None].to(logp.device)).squeeze(-1)
    kl = (clean_logp_BLV.exp() * (clean_logp_BLV - logp)).sum(-1)
    return float(ce[keep].double().sum()), float(kl[keep].double().sum()), int(keep.sum())


class SpliceLosses:
    """Float64 sums of next-token CE and KL(clean || run) over ordinary positions, for the clean run, the run
    with the SAE reconstruction spliced in and, with ``zero_ablation``, the run with zeros spliced in."""

    def __init__(self, zero_ablation: bool = True):
        self.zero_ablation = zero_ablation
        self.ce_sums = np.zeros(3)  # clean, sae, zero
        self.kl_sums = np.zeros(2)  # sae, zero
        self.n_positions = 0

    def update(self, host, state, acts_BLD: Tensor, xhat_ND: Tensor, tokens_BL: Tensor, mask_BL: Tensor) -> None:
        """One batch: every variant continues from the hook in one stacked pass (``host.run_from``)."""
        recon = acts_BLD.clone()
        recon[mask_BL] = xhat_ND.to(acts_BLD.dtype)
        variants = [acts_BLD, recon]
        if self.zero_ablation:
            variants.append(splice(acts_BLD, torch.zeros_like(acts_BLD), mask_BL))
        logits = host.run_from(state, torch.cat(variants)).float()
        B = len(tokens_BL)
        clean_logp = F.log_softmax(logits[:B, :-1], dim=-1)
        for i in range(len(variants)):
            ce, kl, n_pos = next_token_stats(logits[i * B : (i + 1) * B], clean_logp, tokens_BL, mask_BL)
            self.ce_sums[i] += ce
            if i > 0:
                self.kl_sums[i - 1] += kl
        self.n_positions += n_pos

    def summary(self) -> dict[str, float]:
        """SAEBench's CE and KL numbers; the scores need the zero-ablated run (NaN without it)."""
        n = self.n_positions
        ce_clean, ce_sae, ce_zero = self.ce_sums / n
        kl_sae, kl_zero = self.kl_sums / n
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
    sae,
    hook: str,
    contexts_NL: Tensor,
    batch_size: int,
    stats: ReconstructionStats,
    losses: SpliceLosses | None,
    description: str,
) -> Iterator[Reconstruction]:
    """Run ``contexts`` in batches up to ``hook``, update ``stats`` (and ``losses`` when given) and yield each
    batch's reconstruction, so callers add their own sums (latent densities, FaithfulSAE's variances)."""
    starts = range(0, len(contexts_NL), batch_size)
    for start in track(starts, description):
        tokens = contexts_NL[start : start + batch_size]
        mask = host.ordinary_mask(tokens)
        acts, state = host.prefix(tokens, hook)
        check_finite(acts, f"{host.name} {hook}")
        sae.check_input(acts)
        x = acts[mask].float()
        f = sae.encode(x)
        xhat = sae.decode(f)
        stats.update(x, xhat, f)
        if losses is not None:
            losses.update(host, state, acts, xhat, tokens, mask)
        yield Reconstruction(x, f, xhat)

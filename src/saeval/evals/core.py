"""Core reconstruction metrics (shared spec core-metrics.md; SAEBench core eval names).

Reconstruction and downstream loss on ``n_eval_tokens``; latent densities on ``n_sparsity_tokens`` (the
reconstruction tokens plus more, encoded at capture-only cost). Special tokens are excluded everywhere;
spliced runs keep their original activation there.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor

from saeval.data.activations import check_finite, stream_activations
from saeval.data.corpora import load_contexts
from saeval.evals.base import EvalConfig, EvalContext, EvalSpec, register_eval
from saeval.progress import track
from saeval.results import EvalResult


class CoreConfig(EvalConfig):
    # SAEBench paper settings: ctx 128, 409,600 reconstruction tokens, ~4.1M sparsity tokens.
    n_eval_tokens: int = 409_600
    n_sparsity_tokens: int = 4_096_000
    ctx_len: int = 128
    batch_size: int = 8
    compute_ce: bool = True
    weight_chunk: int = 4096


class CoreMetrics(BaseModel):
    l0: float
    l1: float
    mse: float
    explained_variance: float
    explained_variance_legacy: float
    cossim: float
    l2_norm_in: float
    l2_norm_out: float
    l2_ratio: float
    relative_reconstruction_bias: float
    ce_loss_score: float | None = None
    ce_loss_without_sae: float | None = None
    ce_loss_with_sae: float | None = None
    ce_loss_with_ablation: float | None = None
    kl_div_score: float | None = None
    kl_div_with_sae: float | None = None
    kl_div_with_ablation: float | None = None
    frac_alive: float
    freq_over_1_percent: float
    freq_over_10_percent: float
    average_max_decoder_cosine_sim: float
    average_max_encoder_cosine_sim: float
    average_encoder_decoder_cosine_sim: float


class CoreDetails(BaseModel):
    n_eval_tokens: int
    n_sparsity_tokens: int
    latent_density: list[float]
    log10_density_histogram: dict[str, list[float]]
    max_decoder_cosine: list[float]


class CoreResult(EvalResult[CoreConfig, CoreMetrics, CoreDetails]):
    pass


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
        self.sum_x += x.sum(0)
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


def weight_cosines(sae, chunk: int) -> tuple[Tensor, float, float]:
    """Per latent max |cos| to any other decoder row (chunked: never the full F x F matrix), plus averages."""
    W_dec = F.normalize(sae.W_dec.detach().float(), dim=-1)
    W_enc = F.normalize(sae.W_enc.detach().float().T, dim=-1)
    n = W_dec.shape[0]
    max_dec, max_enc = torch.empty(n), torch.empty(n)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n))
        for W, out in ((W_dec, max_dec), (W_enc, max_enc)):
            cos = W[idx] @ W.T
            cos[torch.arange(len(idx)), idx] = -torch.inf
            out[idx] = cos.max(-1).values.cpu()
    enc_dec = float((W_dec * W_enc).sum(-1).mean())
    return max_dec, float(max_enc.mean()), enc_dec


@torch.inference_mode()
def run(ctx: EvalContext, sae, config: CoreConfig) -> CoreResult:
    host = ctx.host
    sae = sae.to(host.device)
    n_sparse = max(config.n_sparsity_tokens, config.n_eval_tokens)
    contexts = load_contexts(host, ctx.corpus, n_sparse, config.ctx_len, ctx.seed)
    n_eval_ctx = max(1, -(-config.n_eval_tokens // config.ctx_len))
    stats = ReconstructionStats(sae.d_in, sae.d_sae)
    counts = torch.zeros(sae.d_sae, dtype=torch.float64)
    n_density_tokens = 0
    ce_sums = np.zeros(3)  # clean, sae, zero
    kl_sums = np.zeros(2)  # sae, zero
    n_positions = 0
    eval_batches = range(0, n_eval_ctx, config.batch_size)
    for start in track(eval_batches, f"core {sae.name}: reconstruction + CE/KL"):
        tokens = contexts[start : min(start + config.batch_size, n_eval_ctx)]
        mask = host.ordinary_mask(tokens)
        acts, state = host.prefix(tokens, ctx.hook)
        check_finite(acts, f"{host.name} {ctx.hook}")
        sae.check_input(acts)
        f = sae.encode(acts[mask].float())
        xhat = sae.decode(f)
        stats.update(acts[mask], xhat, f)
        counts += (f > 0).sum(0).double().cpu()
        n_density_tokens += len(f)
        if config.compute_ce:
            recon = acts.clone()
            recon[mask] = xhat.to(acts.dtype)
            variants = torch.cat([acts, recon, splice(acts, torch.zeros_like(acts), mask)])
            logits = host.run_from(state, variants).float()
            B = len(tokens)
            clean_logp = F.log_softmax(logits[:B, :-1], dim=-1)
            for i, kl_slot in ((0, None), (1, 0), (2, 1)):
                ce, kl, n_pos = next_token_stats(logits[i * B : (i + 1) * B], clean_logp, tokens, mask)
                ce_sums[i] += ce
                if kl_slot is not None:
                    kl_sums[kl_slot] += kl
            n_positions += n_pos
    extra = contexts[n_eval_ctx:]
    if len(extra):
        batches = stream_activations(host, ctx.hook, extra, config.batch_size)
        for batch in track(batches, f"core {sae.name}: latent density", total=-(-len(extra) // config.batch_size)):
            f = sae.encode(batch.flat())
            counts += (f > 0).sum(0).double().cpu()
            n_density_tokens += len(f)

    density = counts / max(n_density_tokens, 1)
    max_dec, avg_max_enc, enc_dec = weight_cosines(sae, config.weight_chunk)
    metrics = stats.summary()
    if config.compute_ce:
        ce_clean, ce_sae, ce_zero = ce_sums / n_positions
        kl_sae, kl_zero = kl_sums / n_positions
        denom = ce_zero - ce_clean
        metrics.update(
            ce_loss_without_sae=ce_clean, ce_loss_with_sae=ce_sae, ce_loss_with_ablation=ce_zero,
            ce_loss_score=(ce_zero - ce_sae) / denom if abs(denom) > 1e-12 else math.nan,
            kl_div_with_sae=kl_sae, kl_div_with_ablation=kl_zero,
            kl_div_score=(kl_zero - kl_sae) / kl_zero if kl_zero > 1e-12 else math.nan,
        )
    alive = density > 0
    log_density = torch.log10(density[alive]).numpy()
    hist, edges = np.histogram(log_density, bins=40) if len(log_density) else (np.zeros(0), np.zeros(0))
    metrics.update(
        frac_alive=float(alive.double().mean()),
        freq_over_1_percent=float((density > 0.01).double().mean()),
        freq_over_10_percent=float((density > 0.1).double().mean()),
        average_max_decoder_cosine_sim=float(max_dec.mean()),
        average_max_encoder_cosine_sim=avg_max_enc,
        average_encoder_decoder_cosine_sim=enc_dec,
    )
    details = CoreDetails(
        n_eval_tokens=stats.n, n_sparsity_tokens=n_density_tokens,
        latent_density=[float(d) for d in density], max_decoder_cosine=[float(c) for c in max_dec],
        log10_density_histogram={"counts": hist.tolist(), "edges": edges.tolist()},
    )
    return CoreResult(**ctx.envelope("core", sae), config=config, metrics=CoreMetrics(**metrics), details=details)


SPEC = register_eval(EvalSpec(
    name="core",
    config_cls=CoreConfig,
    run=run,
    description="reconstruction (MSE, explained variance, cossim), CE/KL scores, sparsity, weight cosines",
    presets={"demo": {"n_eval_tokens": 8192, "n_sparsity_tokens": 32768}, "tiny": {"n_eval_tokens": 512,
             "n_sparsity_tokens": 1024, "ctx_len": 32}},
))

"""Core reconstruction metrics (shared spec core-metrics.md; SAEBench core eval names).

Reconstruction and downstream loss on ``n_eval_tokens``; latent densities on ``n_density_tokens`` (the
reconstruction tokens plus more, encoded at capture-only cost). Special tokens are excluded from every
statistic; the reconstruction run keeps their original activation, the zero-ablated run zeroes them too unless
``zero_ablation_positions="ordinary"`` (CE/KL positions and bias as SAELens's evals: see CoreConfig).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saeval.analysis.reconstruction import ReconstructionStats, SpliceLosses, guard_metrics, reconstruction_batches
from saeval.data.activations import stream_activations
from saeval.data.corpora import load_contexts
from saeval.evals.base import EvalContext
from saeval.evals.core.config import CoreConfig, CoreDetails, CoreMetrics, CoreResult
from saeval.progress import track


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
    contexts = load_contexts(host, ctx.corpus, max(config.n_density_tokens, config.n_eval_tokens), config.ctx_len,
                             ctx.seed)
    n_eval_ctx = max(1, -(-config.n_eval_tokens // config.ctx_len))
    stats = ReconstructionStats(sae.d_in, sae.d_sae)
    losses = SpliceLosses(zero_ablation_positions=config.zero_ablation_positions,
                          kl_positions=config.kl_positions) if config.compute_ce else None
    counts = torch.zeros(sae.d_sae, dtype=torch.float64)
    n_density_tokens = 0
    for batch in reconstruction_batches(host, sae, ctx.hook, contexts[:n_eval_ctx], config.batch_size, stats,
                                        losses, f"core {sae.name}: reconstruction + CE/KL"):
        counts += (batch.f_NF > 0).sum(0).double().cpu()
        n_density_tokens += len(batch.f_NF)
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
    if losses is not None:
        metrics.update(losses.summary())
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
    valid, warnings = guard_metrics(metrics, stats)  # NaN/inf -> None with a reason; broken SAEs flagged
    details = CoreDetails(
        n_eval_tokens=stats.n, n_density_tokens=n_density_tokens,
        n_ce_positions=None if losses is None else losses.n_positions,
        n_kl_positions=None if losses is None else losses.n_kl_positions,
        latent_density=[float(d) for d in density], max_decoder_cosine=[float(c) for c in max_dec],
        log10_density_histogram={"counts": hist.tolist(), "edges": edges.tolist()},
    )
    return CoreResult(**ctx.envelope("core", sae), config=config, metrics=CoreMetrics(valid=valid, **metrics),
                      details=details, warnings=warnings)

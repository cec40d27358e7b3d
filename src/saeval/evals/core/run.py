"""Core reconstruction metrics (shared spec core-metrics.md; SAEBench core eval names).

Reconstruction and downstream loss on ``n_eval_tokens``; latent densities on ``n_density_tokens`` (the
reconstruction tokens plus more, encoded at capture-only cost). Special tokens are excluded from every
statistic; the reconstruction run keeps their original activation, the zero-ablated run zeroes them too unless
``zero_ablation_positions="ordinary"`` (CE/KL positions and bias as SAELens's evals: see CoreConfig).

The SAE-independent passes (the model up to the hook, the clean and zero-ablated continuations, the density
tokens' activations) run once per run and are shared by every SAE (``core/shared.py``): an SAE costs its
encode/decode and one run of the blocks after the hook per batch. Transcoders encode the activation at the
eval's hook and are compared with, and spliced into, ``hook_name_out``. ``prefixes`` adds the metrics of a
Matryoshka SAE's nested prefixes from the same passes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saeval.analysis.reconstruction import ReconstructionStats, SpliceLosses, guard_metrics
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.core.config import CoreConfig, CoreDetails, CoreMetrics, CorePrefixMetrics, CoreResult
from saeval.evals.core.shared import core_baseline, density_activations, density_bytes, spliced_sums


def weight_cosines(sae, chunk: int) -> tuple[Tensor, float, float]:
    """Per latent max |cos| to any other decoder row (chunked: never the full F x F matrix), plus averages.
    The encoder-decoder cosine is NaN for a transcoder: its encoder and decoder live at different hooks."""
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
    same_space = not getattr(sae, "is_transcoder", False) and W_dec.shape == W_enc.shape
    enc_dec = float((W_dec * W_enc).sum(-1).mean()) if same_space else float("nan")
    return max_dec, float(max_enc.mean()), enc_dec


def splice_hook(ctx: EvalContext, sae) -> str:
    """Where the reconstruction is compared and spliced: the eval's hook, or a transcoder's output hook."""
    return sae.cfg.hook_name_out if getattr(sae, "is_transcoder", False) else ctx.hook


def check_inputs(ctx: EvalContext, sae, config: CoreConfig) -> list:
    """One-line errors before any forward; returns the prefix SAEs of ``config.prefixes``."""
    host = ctx.host
    hook_out = splice_hook(ctx, sae)
    if hook_out != ctx.hook:
        host.hook(hook_out)  # an unknown hook name fails here, in one line
        if host.hook_position(ctx.hook) > host.hook_position(hook_out):
            raise SaevalError(f"transcoder {sae.name} reads {ctx.hook}, which comes after its output hook "
                              f"{hook_out}: check hook_name and hook_name_out")
        d_out = sae.d_out
        if d_out != host.d_model:
            raise SaevalError(f"transcoder {sae.name} writes width d_out={d_out} but {hook_out} has width "
                              f"{host.d_model}")
    if not config.prefixes:
        return []
    bad = [w for w in config.prefixes if not 0 < w <= sae.d_sae]
    if bad:
        raise SaevalError(f"core.prefixes {bad}: each width must be between 1 and the d_sae={sae.d_sae} of "
                          f"{sae.name}")
    return [sae.prefix(w) for w in config.prefixes]  # SAE.prefix: the first w latents (saes/base.py)


def _prefix_record(width: int, stats: ReconstructionStats, losses: SpliceLosses | None) -> CorePrefixMetrics:
    metrics: dict = stats.summary()
    if losses is not None:
        metrics.update(losses.summary())
    valid, warnings = guard_metrics(metrics, stats)
    keep = {k: metrics.get(k) for k in CorePrefixMetrics.model_fields if k in metrics}
    return CorePrefixMetrics(width=width, valid=valid, warnings=warnings, **keep)


@torch.inference_mode()
def run(ctx: EvalContext, sae, config: CoreConfig) -> CoreResult:
    host = ctx.host
    prefix_saes = check_inputs(ctx, sae, config)
    hook_in, hook_out = ctx.hook, splice_hook(ctx, sae)
    sae = sae.to(host.device)
    variants = [sae, *(p.to(host.device) for p in prefix_saes)]
    contexts = load_contexts(host, ctx.corpus, max(config.n_density_tokens, config.n_eval_tokens), config.ctx_len,
                             ctx.seed)
    n_eval_ctx = max(1, -(-config.n_eval_tokens // config.ctx_len))
    baseline = core_baseline(ctx, hook_in, hook_out, contexts[:n_eval_ctx], config)
    stats = [ReconstructionStats(sae.d_out, v.d_sae) for v in variants]
    ce_sae, kl_sae = np.zeros(len(variants)), np.zeros(len(variants))
    counts = torch.zeros(sae.d_sae, dtype=torch.float64)
    n_density_tokens = 0
    for batch in baseline.batches(host, f"core {sae.name}: reconstruction + CE/KL"):
        x_in, target = batch.encoder_input(), batch.target()
        sae.check_input(x_in)
        for i, variant in enumerate(variants):
            f = variant.encode(x_in)
            xhat = variant.decode(f)
            stats[i].update(target, xhat, f)
            if i == 0:
                counts += (f > 0).sum(0).double().cpu()
                n_density_tokens += len(f)
            if config.compute_ce:
                ce, kl = spliced_sums(host, baseline, batch, xhat)
                ce_sae[i] += ce
                kl_sae[i] += kl
    extra = contexts[n_eval_ctx:]
    if len(extra):
        budget_left = max(0, int(config.shared_memory_mb * 2**20) - baseline.nbytes)
        for x in density_activations(ctx, hook_in, extra, config.batch_size, budget_left,
                                     f"core {sae.name}: latent density"):
            f = sae.encode(x)
            counts += (f > 0).sum(0).double().cpu()
            n_density_tokens += len(f)

    losses = [SpliceLosses.from_sums(baseline.ce_clean, ce_sae[i], baseline.ce_zero, kl_sae[i], baseline.kl_zero,
                                     baseline.n_ce, baseline.n_kl) if config.compute_ce else None
              for i in range(len(variants))]
    density = counts / max(n_density_tokens, 1)
    max_dec, avg_max_enc, enc_dec = weight_cosines(sae, config.weight_chunk)
    metrics = stats[0].summary()
    if losses[0] is not None:
        metrics.update(losses[0].summary())
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
    valid, warnings = guard_metrics(metrics, stats[0])  # NaN/inf -> None with a reason; broken SAEs flagged
    shared = baseline.nbytes + (density_bytes(ctx, hook_in, extra) if len(extra) else 0)
    details = CoreDetails(
        n_eval_tokens=stats[0].n, n_density_tokens=n_density_tokens,
        n_ce_positions=baseline.n_ce if config.compute_ce else None,
        n_kl_positions=baseline.n_kl if config.compute_ce else None,
        latent_density=[float(d) for d in density], max_decoder_cosine=[float(c) for c in max_dec],
        log10_density_histogram={"counts": hist.tolist(), "edges": edges.tolist()},
        hook_out=hook_out if hook_out != hook_in else None,
        prefixes=[_prefix_record(w, s, ls) for w, s, ls in zip(config.prefixes or [], stats[1:], losses[1:],
                                                                strict=True)] or None,
        kl_method=baseline.kl_method, shared_state_mb=round(shared / 2**20, 3),
    )
    return CoreResult(**ctx.envelope("core", sae), config=config, metrics=CoreMetrics(valid=valid, **metrics),
                      details=details, warnings=warnings)

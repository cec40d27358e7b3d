"""Steerability (Steering CLIP's ViT with SAEs, arXiv 2504.08729; LessWrong "Quantifying SAE Quality with
Feature Steerability Metrics"; methods.md section A).

At the SAE's hook, latent f is set to strength s at every token with the SAE error kept:
x' = x + (s - z_f(x)) W_dec[f]. The steered output is read against a concept vocabulary V: for CLIP the
cosine of the image embedding with V's text embeddings, softmax at scale 100; for language models the
next-token logits of V's first tokens at the readout positions (softmax scale 1). Delta_v is the mean over
inputs of p_v(s) - p_v(unsteered), the unsteered baseline being the plain model; saeval.analysis.steering turns
Delta into power, steerability S and the rest.

Speed: the part before the hook runs once per input batch (host.prefix); every (latent, strength) variant of a
batch continues from the hook in one stacked forward (host.run_from); vocabulary embeddings are computed once;
for LMs only V's rows of the unembedding are applied (host.vocab_logits_BLV), at the readout positions only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeval.analysis.steering import CLIPReadout, LMReadout, latent_metrics, summarise, top_concepts
from saeval.data.vocab import load_vocab
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.steerability.config import (
    LatentSteering,
    SteerabilityConfig,
    SteerabilityDetails,
    SteerabilityMetrics,
    SteerabilityResult,
    check_strengths,
)
from saeval.progress import track


# ------------------------------------------------------------------------------------------------ engine
@dataclass
class _Clean:
    """One input batch run unsteered: the same for every SAE at the hook, so kept in the run's memo."""

    acts_BLD: Tensor
    state: Any
    steer_BL: Tensor
    weight_BP: Tensor
    base_scores_BPV: Tensor
    base_probs_BPV: Tensor


@dataclass
class _CleanPass:
    batches: list[_Clean]
    total_weight: float
    base_mean_V: Tensor  # the unsteered mean probabilities over readout positions
    seconds: float
    shared: bool = False  # already counted in an earlier SAE's seconds_prefix


@torch.inference_mode()
def clean_pass(readout, batch_size: int, scale: float) -> _CleanPass:
    """The part of the sweep no SAE enters: each input batch up to the hook (the prefix), and its unsteered
    readout scores and probabilities."""
    start = time.time()
    batches = []
    for inputs in readout.batches(batch_size):
        acts, state, steer, weight = readout.prefix(inputs)
        base = readout.scores(state, acts)
        batches.append(_Clean(acts, state, steer, weight, base, torch.softmax(scale * base, -1)))
    total_weight = float(sum(b.weight_BP.sum() for b in batches))
    if total_weight == 0:
        raise SaevalError("no readout position holds an ordinary token: use longer prompts")
    base_mean = torch.stack(
        [(b.base_probs_BPV * b.weight_BP[..., None]).sum((0, 1)).double() for b in batches]
    ).sum(0) / total_weight
    return _CleanPass(batches, total_weight, base_mean, time.time() - start)


def pick_latents(d_sae: int, config: SteerabilityConfig, seed: int) -> list[int]:
    if config.latents is not None:
        bad = [f for f in config.latents if not 0 <= f < d_sae]
        if bad or not config.latents:
            raise SaevalError(f"latents must be a non-empty list of ids in [0, {d_sae}); bad: {bad[:5]}")
        return sorted(set(config.latents))
    n = config.n_latents if config.n_latents is not None else max(1, d_sae // 20)
    if not 1 <= n <= d_sae:
        raise SaevalError(f"n_latents must be between 1 and d_sae={d_sae}, got {n}")
    return sorted(int(f) for f in np.random.default_rng(seed).choice(d_sae, size=n, replace=False))


@torch.inference_mode()
def steer_sweep(
    readout,
    sae,
    latents: list[int],
    strengths: list[float],
    scale: float,
    config: SteerabilityConfig,
    desc: str = "steerability",
    clean: _CleanPass | None = None,
):
    """Delta (probabilities) and logit Delta, [n_latents, n_strengths, V], plus the unsteered mean
    probabilities [V] and run statistics. The prefix runs once per input batch (``clean``: that pass, shared
    by the SAEs of a run); the variants of a batch go through the suffix stacked."""
    k = len(strengths)
    lat = torch.tensor(latents, device=sae.W_dec.device)
    if clean is None:
        clean = clean_pass(readout, sweep_batch_size(config, k), scale)
    start = time.time()
    prefixed, total_weight, base_mean = clean.batches, clean.total_weight, clean.base_mean_V
    z_all = []  # the sampled latents' activations on the clean batches
    for p in prefixed:
        sae.check_input(p.acts_BLD)
        z_all.append(sae.encode(p.acts_BLD.float())[..., lat])
    # This SAE's time up to the hook: its encoding, and the clean pass when it was the first to use it.
    seconds_prefix = time.time() - start + (0.0 if clean.shared else clean.seconds)
    clean.shared = True
    sweep_start = time.time()
    dirs_FD = (sae.W_dec.detach()[lat] / sae.cfg.act_scale).float()
    s_K = torch.tensor(strengths, device=dirs_FD.device)
    chunk = max(1, config.max_rows // (k * max(len(p.acts_BLD) for p in prefixed)))  # latents per pass
    V = base_mean.shape[0]
    delta = torch.zeros(len(latents), k, V, dtype=torch.float64)
    delta_logit = torch.zeros_like(delta)
    n_rows = sum(len(p.acts_BLD) for p in prefixed)
    for c0 in track(range(0, len(latents), chunk), desc, total=-(-len(latents) // chunk)):
        c1 = min(c0 + chunk, len(latents))
        for p, z_BLF in zip(prefixed, z_all, strict=True):
            B, L, D = p.acts_BLD.shape
            # (s - z_f(x)) at every steered token; the SAE error x - SAE(x) is untouched by construction.
            coef_CKBL = (
                s_K[None, :, None, None] - z_BLF[..., c0:c1].permute(2, 0, 1)[:, None]
            ) * p.steer_BL
            steered = (
                p.acts_BLD + coef_CKBL[..., None].to(p.acts_BLD.dtype) * dirs_FD[c0:c1, None, None, None, :]
            )
            scores = readout.scores(p.state, steered.reshape(-1, L, D)).view(
                c1 - c0, k, *p.base_scores_BPV.shape
            )
            w = p.weight_BP[..., None]
            dp = (torch.softmax(scale * scores, -1) - p.base_probs_BPV) * w
            dl = (scores - p.base_scores_BPV) * w
            delta[c0:c1] += dp.sum((2, 3)).double().cpu()
            delta_logit[c0:c1] += dl.sum((2, 3)).double().cpu()
            n_rows += (c1 - c0) * k * B
    stats = {
        "seconds_prefix": seconds_prefix,
        "seconds_sweep": time.time() - sweep_start,
        "n_prefix_sequences": sum(len(p.acts_BLD) for p in prefixed),
        "n_suffix_sequences": n_rows,
        "n_readout_positions": int(total_weight),
    }
    return (
        (delta / total_weight).numpy(),
        (delta_logit / total_weight).numpy(),
        base_mean.cpu().numpy(),
        stats,
    )


def _softmax_scale(config: SteerabilityConfig, host) -> float:
    if config.softmax_scale == "model":
        if not hasattr(host, "logit_scale"):
            raise SaevalError(
                "softmax_scale 'model' needs a CLIP host (it reads exp(logit_scale)); give a number"
            )
        return float(host.logit_scale)
    if config.softmax_scale is None:
        return 100.0 if getattr(host, "kind", "lm") == "clip" else 1.0
    return float(config.softmax_scale)


def sweep_batch_size(config: SteerabilityConfig, n_strengths: int) -> int:
    return max(1, min(config.batch_size, config.max_rows // n_strengths))


# The config fields that act only on the sweep after the hook (latents, strength values, thresholds) or only
# through its batch size: every other field may change the readout or its unsteered pass, so it is in the memo
# key (a field added later splits the memo instead of sharing a stale pass).
SWEEP_ONLY_FIELDS = {"strengths", "summary_strength", "n_latents", "latents", "steerable_threshold", "top_k_concepts",
                     "batch_size", "max_rows"}


def shared_clean(ctx: EvalContext, config: SteerabilityConfig, n_strengths: int, scale: float):
    """(readout, its unsteered pass): built once per run for the context's host, hook, corpus and seed."""
    host = ctx.host
    batch_size = sweep_batch_size(config, n_strengths)
    key = ("steerability-clean", ctx.hook, ctx.corpus, ctx.seed, batch_size,
           config.model_dump_json(exclude=SWEEP_ONLY_FIELDS))
    if key not in ctx.memo:
        words = load_vocab(config.vocab, config.vocab_size)
        if getattr(host, "kind", "lm") == "clip":
            readout: LMReadout | CLIPReadout = CLIPReadout(host, ctx.hook, words, config, ctx.seed)
        else:
            readout = LMReadout(host, ctx.hook, words, config, ctx.corpus, ctx.seed)
        ctx.memo[key] = (readout, clean_pass(readout, batch_size, scale))
    return ctx.memo[key]


def run(ctx: EvalContext, sae, config: SteerabilityConfig) -> SteerabilityResult:
    host = ctx.host
    strengths, summary_strength = check_strengths(config)
    sae = sae.to(host.device)
    latents = pick_latents(sae.d_sae, config, ctx.seed)
    scale = _softmax_scale(config, host)
    readout, clean = shared_clean(ctx, config, len(strengths), scale)
    delta, delta_logit, base_mean, stats = steer_sweep(
        readout, sae, latents, strengths, scale, config, f"steerability {sae.name}", clean
    )
    concepts = readout.concepts_VE.cpu().numpy()
    s_idx = strengths.index(summary_strength)
    rows, per = [], []
    for i, f in enumerate(latents):
        m = latent_metrics(delta[i], delta_logit[i], concepts)
        top = int(np.argmax(delta[i, s_idx]))
        promoted, demoted = top_concepts(delta[i, s_idx], readout.words, config.top_k_concepts)
        rows.append(
            LatentSteering(
                latent=f,
                top_concept=readout.words[top],
                promoted=promoted,
                demoted=demoted,
                top_concept_prob=_r(base_mean[top] + delta[i, :, top]),
                **{key: _r(v) for key, v in m.items()},
            )
        )
        per.append(m)
    stack = {key: np.stack([m[key] for m in per]) for key in per[0]}  # [n_latents, n_strengths]
    summary = summarise(
        stack["steerability"][:, s_idx],
        stack["power"][:, s_idx],
        [r.top_concept for r in rows],
        config.steerable_threshold,
    )
    metrics = SteerabilityMetrics(
        summary_strength=summary_strength,
        **summary,
        mean_steerability_signed=float(stack["steerability_signed"][:, s_idx].mean()),
        mean_aggregate_prob_diff=float(stack["aggregate_prob_diff"][:, s_idx].mean()),
        mean_logit_power=float(stack["logit_power"][:, s_idx].mean()),
        mean_logit_steerability=float(stack["logit_steerability"][:, s_idx].mean()),
        mean_polysemanticity=float(stack["polysemanticity"][:, s_idx].mean()),
    )
    unsteered = np.argsort(-base_mean, kind="stable")[: config.top_k_concepts]
    details = SteerabilityDetails(
        host=readout.kind,
        inputs=readout.inputs_name,
        n_inputs=stats["n_prefix_sequences"],
        readout="image embedding" if readout.kind == "clip" else config.readout,
        n_readout_positions=stats["n_readout_positions"],
        vocab=config.vocab,
        vocab_size=len(readout.words),
        n_vocab_dropped=readout.n_dropped,
        softmax_scale=scale,
        strengths=strengths,
        summary_strength=summary_strength,
        unsteered_top=[(readout.words[i], _r(base_mean[i])[0]) for i in unsteered],
        mean_steerability_by_strength=_r(stack["steerability"].mean(0)),
        frac_steerable_by_strength=_r((stack["steerability"] > config.steerable_threshold).mean(0)),
        mean_power_by_strength=_r(stack["power"].mean(0)),
        n_prefix_sequences=stats["n_prefix_sequences"],
        n_suffix_sequences=stats["n_suffix_sequences"],
        seconds_prefix=round(stats["seconds_prefix"], 3),
        seconds_sweep=round(stats["seconds_sweep"], 3),
        latents=rows,
    )
    return SteerabilityResult(**ctx.envelope("steerability", sae), config=config, metrics=metrics, details=details)


def _r(values) -> list[float]:
    """Six significant digits: enough for any threshold, and the JSON stays small."""
    return [float(f"{float(v):.6g}") for v in np.atleast_1d(values)]

"""The self_explanation eval: explain latents chosen among the live ones, summarise the sweeps.

The default departs from the reference code on purpose (per-row cosines, the argmax scale, each text scored
at its nearest scale, a threshold of 0.08 in cosine units); ``selfsim="reference"`` reproduces its formulas.
The result's details name each departure and its reason (explain.DEPARTURES)."""

from __future__ import annotations

import random

from saeval.evals.base import EvalContext
from saeval.evals.self_explanation.config import (
    SelfExplanationConfig,
    SelfExplanationDetails,
    SelfExplanationMetrics,
    SelfExplanationResult,
)
from saeval.evals.self_explanation.explain import build_prompt, departures, memo_self_explain, probe_hook_for


def pick_latents(ctx: EvalContext, sae, n: int, seed: int) -> list[int]:
    """n latents at random, among live ones when the core eval's densities are at hand."""
    core = ctx.requirement(sae, "core")
    pool = list(range(sae.d_sae))
    if core is not None:
        live = [i for i, d in enumerate(core.details.latent_density) if d > 0]
        pool = live or pool
    return sorted(random.Random(seed).sample(pool, min(n, len(pool))))


def run(ctx: EvalContext, sae, config: SelfExplanationConfig) -> SelfExplanationResult:
    host = ctx.host
    latents = config.latents if config.latents is not None else pick_latents(ctx, sae, config.n_latents, ctx.seed)
    found = memo_self_explain(ctx, sae, latents, config)
    ids, _ = build_prompt(host, config.template)
    sweeps = [e.sweep for e in found]
    n = max(len(found), 1)
    metrics = SelfExplanationMetrics(
        n_latents=len(found),
        frac_failed=sum(s.failed for s in sweeps) / n,
        mean_max_selfsim=sum(s.max_selfsim for s in sweeps) / n,
        mean_chosen_scale=sum(s.chosen_scale for s in sweeps) / n,
        mean_entropy_at_chosen=sum(s.entropy_at_chosen for s in sweeps) / n,
        frac_with_explanation=sum(bool(e.best) for e in found) / n,
    )
    threshold, derivation = config.threshold()
    details = SelfExplanationDetails(
        latents=list(latents),
        probe_hook=probe_hook_for(host, config),
        prompt=host.tokenizer.decode(ids),
        explanations=found,
        selfsim=config.selfsim,
        selfsim_threshold=threshold,
        selfsim_threshold_derivation=derivation,
        departures=departures(config),
    )
    return SelfExplanationResult(**ctx.envelope("self_explanation", sae), config=config, metrics=metrics,
                                 details=details)

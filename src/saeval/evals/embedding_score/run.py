"""The embedding_score eval: windows of the chosen latents, their explanations, AUROC per latent."""

from __future__ import annotations

import numpy as np

from saeval.analysis.windows import WindowsResult, collect_windows
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.embedding_score.config import EmbeddingConfig, EmbeddingDetails, EmbeddingMetrics, EmbeddingResult
from saeval.evals.embedding_score.score import (
    embedding_scores,
    explain_with_llm,
    explaining_windows,
    load_embedding_model,
)
from saeval.evals.self_explanation.explain import memo_self_explain
from saeval.evals.self_explanation.run import pick_latents
from saeval.llm import LLMError


def get_explanations(
    ctx: EvalContext, sae, windows: WindowsResult, latents: list[int], config: EmbeddingConfig
) -> dict[int, str]:
    if config.explainer != "self":
        try:
            return explain_with_llm(windows, latents, config.explainer, ctx.host, config.n_explain_windows)
        except LLMError as err:
            raise SaevalError(f"explainer {config.explainer} failed: {err}") from err
    found = memo_self_explain(ctx, sae, latents, config.explain)
    return {e.latent: e.explanation for e in found}


def run(ctx: EvalContext, sae, config: EmbeddingConfig) -> EmbeddingResult:
    host = ctx.host
    previous = ctx.requirement(sae, "self_explanation") if config.explainer == "self" else None
    reuse: dict[int, str] = {}
    if config.latents is not None:
        latents = list(config.latents)
    elif previous is not None:  # score the explanations the self_explanation eval already generated
        reuse = {e.latent: e.explanation for e in previous.details.explanations}
        latents = sorted(reuse)
    else:
        latents = pick_latents(ctx, sae, config.n_latents, ctx.seed)
    contexts = load_contexts(host, ctx.corpus, config.n_tokens, config.ctx_len, ctx.seed)
    hook = sae.cfg.hook_name or ctx.hook
    windows = collect_windows(
        host,
        [(sae, latents)],
        contexts,
        hook,
        config.window,
        10,
        config.batch_size,
        config.reservoir,
        config.n_pool,
        ctx.seed,
        f"embedding score {sae.name}: windows",
    )[0]
    live = [f for f in latents if windows.latents[f].fired]
    explanations = {f: reuse[f] for f in live if f in reuse}
    missing = [f for f in live if f not in explanations]
    if missing:
        explanations.update(get_explanations(ctx, sae, windows, missing, config))
    explanations.update({f: "" for f in windows.never_fired})
    model = load_embedding_model(config.embedding_model)
    shown = explaining_windows(windows, live, config.n_explain_windows) if config.explainer != "self" else {}
    scores = embedding_scores(windows, explanations, host.tokenizer, model, config, ctx.seed, shown)
    ordered = [scores[f] for f in latents]
    aurocs = [s.auroc for s in ordered if s.auroc is not None]
    metrics = EmbeddingMetrics(
        n_latents=len(latents),
        n_scored=len(aurocs),
        n_never_fired=len(windows.never_fired),
        mean_auroc=float(np.mean(aurocs)) if aurocs else None,
        median_auroc=float(np.median(aurocs)) if aurocs else None,
        frac_auroc_above_0_5=float(np.mean([a > 0.5 for a in aurocs])) if aurocs else None,
    )
    details = EmbeddingDetails(
        explainer=config.explainer + (" (reused self_explanation results)" if reuse else ""),
        embedding_model=config.embedding_model,
        n_tokens_scanned=windows.n_tokens,
        scores=ordered,
    )
    return EmbeddingResult(**ctx.envelope("embedding_score", sae), config=config, metrics=metrics, details=details)

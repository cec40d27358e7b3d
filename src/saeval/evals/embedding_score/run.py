"""The embedding_score eval: windows of the chosen latents, their explanations, AUROC per latent.

``selection="delphi"`` applies delphi's sampler (min_examples, quantile-sampled explainer windows) with its
train/test leak fixed: see score.py; the result's details list every departure from delphi."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from saeval.analysis.windows import WindowsResult, collect_windows
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.embedding_score.config import (
    EmbeddingConfig,
    EmbeddingDetails,
    EmbeddingMetrics,
    EmbeddingResult,
    departures,
)
from saeval.evals.embedding_score.score import (
    delphi_explaining_windows,
    embedding_scores,
    explain_with_llm,
    explaining_windows,
    load_embedding_model,
    too_few_examples,
    window_examples,
)
from saeval.evals.self_explanation.explain import memo_self_explain
from saeval.evals.self_explanation.run import pick_latents
from saeval.llm import LLMError


def get_explanations(
    ctx: EvalContext,
    sae,
    windows: WindowsResult,
    latents: list[int],
    config: EmbeddingConfig,
    hook: str = "",
    shown: dict[int, Sequence[int]] | None = None,
) -> dict[int, str]:
    """Explanations of ``latents``: an explainer chat model is shown their top windows, or in delphi mode the
    quantile-sampled windows ``shown`` (their per-token activations recomputed to mark the active tokens)."""
    if config.explainer != "self":
        examples = None
        if config.selection == "delphi":
            wanted = {f: (shown or {})[f] for f in latents}
            examples = window_examples(ctx.host, sae, hook, windows, wanted, config.batch_size)
        try:
            return explain_with_llm(windows, latents, config.explainer, ctx.host, config.n_explain_windows,
                                    examples=examples)
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
    # delphi mode skips latents below min_examples before explaining them: no explainer call is spent on them.
    kept = [f for f in live if not too_few_examples(windows.latents[f], config)]
    shown: dict[int, Sequence[int]] = {}
    if config.explainer != "self" and config.selection == "delphi":
        shown = delphi_explaining_windows(windows, kept, config.delphi_n_explain, config.n_quantiles, ctx.seed)
    elif config.explainer != "self":
        shown = explaining_windows(windows, kept, config.n_explain_windows)
    explanations = {f: reuse[f] for f in live if f in reuse}
    missing = [f for f in kept if f not in explanations]
    if missing:
        explanations.update(get_explanations(ctx, sae, windows, missing, config, hook, shown))
    explanations.update({f: "" for f in latents if f not in explanations})  # never fired, or skipped
    model = load_embedding_model(config.embedding_model)
    scores = embedding_scores(windows, explanations, host.tokenizer, model, config, ctx.seed, shown)
    ordered = [scores[f] for f in latents]
    aurocs = [s.auroc for s in ordered if s.auroc is not None]
    metrics = EmbeddingMetrics(
        n_latents=len(latents),
        n_scored=len(aurocs),
        n_never_fired=len(windows.never_fired),
        n_below_min_examples=len(live) - len(kept),
        mean_auroc=float(np.mean(aurocs)) if aurocs else None,
        median_auroc=float(np.median(aurocs)) if aurocs else None,
        frac_auroc_above_0_5=float(np.mean([a > 0.5 for a in aurocs])) if aurocs else None,
    )
    details = EmbeddingDetails(
        explainer=config.explainer + (" (reused self_explanation results)" if reuse else ""),
        embedding_model=config.embedding_model,
        n_tokens_scanned=windows.n_tokens,
        scores=ordered,
        selection=config.selection,
        departures=departures(config),
    )
    return EmbeddingResult(**ctx.envelope("embedding_score", sae), config=config, metrics=metrics, details=details)

"""The embedding_score eval: one windows pass over every latent, n_latents drawn (seeded) among those with at
least min_activating_windows activating windows (self_explanation's first), their explanations, AUROC per latent,
the mean AUROC with a bootstrap interval. The pass's forward and the window embeddings are shared across the
run's SAEs through its memo (they depend on the model, hook and contexts only).

``selection="delphi"`` applies delphi's sampler (min_examples, quantile-sampled explainer windows) with its
train/test leak fixed: see score.py; the result's details list every departure from delphi."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from saeval.analysis.windows import WindowsResult, collect_windows, pick_active_latents, shared_host
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
    mean_ci,
    too_few_examples,
    window_examples,
)
from saeval.evals.self_explanation.explain import memo_self_explain
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
    if previous is not None:  # score the explanations the self_explanation eval already generated
        reuse = {e.latent: e.explanation for e in previous.details.explanations}
    contexts = load_contexts(host, ctx.corpus, config.n_tokens, config.ctx_len, ctx.seed)
    hook = sae.cfg.hook_name or ctx.hook
    # Without given latents the pass scans them all, so that latents are drawn among those with enough activating
    # windows; the forward to the hook is shared with the run's other SAEs and evals through its memo.
    scanned = list(config.latents) if config.latents is not None else list(range(sae.d_sae))
    windows = collect_windows(
        shared_host(host, hook, contexts, ctx.memo),
        [(sae, scanned)],
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
    warnings: list[str] = []
    n_eligible = None
    if config.latents is not None:
        latents = list(config.latents)
    else:
        need = config.min_windows()
        n_eligible = sum(n >= need for n in windows.active_windows.values())
        latents = pick_active_latents(windows, config.n_latents, need, ctx.seed, prefer=sorted(reuse))
        if len(latents) < config.n_latents:
            warnings.append(
                f"only {n_eligible} latents have at least {need} activating windows of {config.window} tokens in "
                f"{windows.n_tokens} scanned tokens: {len(latents)} scored of n_latents={config.n_latents} (raise "
                "n_tokens or lower min_activating_windows)")
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
    memo = ctx.memo.setdefault(("window-embeddings", config.embedding_model), {})
    scores = embedding_scores(windows, explanations, host.tokenizer, model, config, ctx.seed, shown, memo)
    ordered = [scores[f] for f in latents]
    aurocs = [s.auroc for s in ordered if s.auroc is not None]
    low, high = mean_ci(aurocs, config.n_bootstrap, ctx.seed)
    metrics = EmbeddingMetrics(
        n_latents=len(latents),
        n_scored=len(aurocs),
        n_never_fired=sum(not windows.latents[f].fired for f in latents),
        n_below_min_examples=len(live) - len(kept),
        mean_auroc=float(np.mean(aurocs)) if aurocs else None,
        mean_auroc_ci_low=low,
        mean_auroc_ci_high=high,
        n_eligible=n_eligible,
        median_auroc=float(np.median(aurocs)) if aurocs else None,
        frac_auroc_above_0_5=float(np.mean([a > 0.5 for a in aurocs])) if aurocs else None,
    )
    details = EmbeddingDetails(
        explainer=config.explainer + (" (reused self_explanation results)" if reuse else ""),
        embedding_model=config.embedding_model,
        n_tokens_scanned=windows.n_tokens,
        scores=ordered,
        selection=config.selection,
        min_activating_windows=None if config.latents is not None else config.min_windows(),
        departures=departures(config),
    )
    return EmbeddingResult(**ctx.envelope("embedding_score", sae), config=config, metrics=metrics, details=details,
                           warnings=warnings)

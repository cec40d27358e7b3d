"""The FaithfulSAE matched-feature case study (seed 002): match two SAEs, take the best and worst matched pairs,
and for each pair show top activated windows, self-explanations and Eleuther embedding scores.

One activation pass over the corpus serves both SAEs (when they read the same hook) and all their latents, so the
pairs are chosen among those whose two latents have at least min_activating_windows activating windows (a full
embedding-score test set): a pair that never fires cannot be explained or scored. The forward is shared with the
run's evals through its memo; the self-explanations (memoised with the evals') and embedding scores are batched
over all latents of an SAE. The result, one entry
{group, rank, similarity, indices, self_explanations, eleuthers, windows, ...} per matched pair plus the
matching summary, is ``OUT/studies/case_study.json``; report.py renders it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from saeval.analysis.matching import match_saes
from saeval.analysis.windows import CRITERIA, WindowsResult, collect_windows, shared_host
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.embedding_score.config import LatentScore
from saeval.evals.embedding_score.score import (
    embedding_scores,
    explain_with_llm,
    explaining_windows,
    load_embedding_model,
)
from saeval.evals.self_explanation.config import SelfExplanation
from saeval.evals.self_explanation.explain import memo_self_explain
from saeval.studies.base import envelope
from saeval.studies.case_study.config import (
    CaseStudyConfig,
    CaseStudyDetails,
    CaseStudyEntry,
    CaseStudyMetrics,
    CaseStudyResult,
)
from saeval.studies.records import MatchSummary


def select_pairs(
    match, top: int, bottom: int, keep: Callable[[int, int], bool] | None = None
) -> list[tuple[str, int, tuple[int, int, float]]]:
    """(group, rank, pair): the ``top`` best and ``bottom`` worst matched pairs, without repeats, among the pairs
    (a, b) that ``keep`` accepts (all without it)."""
    pairs = [p for p in match.pairs if keep is None or keep(p[0], p[1])]
    chosen = [("top", i, p) for i, p in enumerate(pairs[:top])]
    taken = min(top, len(pairs))
    worst = pairs[max(taken, len(pairs) - bottom) :][::-1]
    return chosen + [("bottom", i, p) for i, p in enumerate(worst)]


def _explanations(
    host, windows: WindowsResult, latents: list[int], config: CaseStudyConfig, self_x: dict[int, SelfExplanation]
) -> dict[int, str]:
    if config.explainer == "self":
        return {f: self_x[f].explanation for f in latents}
    return explain_with_llm(
        windows,
        [f for f in latents if windows.latents[f].fired],
        config.explainer,
        host,
        config.embedding.n_explain_windows,
    )


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def run(ctx: EvalContext, saes: list, config: CaseStudyConfig, out_dir: Path | None = None) -> CaseStudyResult:
    """The whole study on ``saes[0]`` and ``saes[1]`` at their hooks (``ctx.hook`` for an SAE naming none)."""
    host, seed = ctx.host, ctx.seed
    sae_a, sae_b = saes
    timings: dict[str, float] = {}
    t = time.time()
    match = match_saes(sae_a, sae_b, config.threshold, method=config.match_method)
    timings["matching"] = time.time() - t

    t = time.time()
    hooks = [sae.cfg.hook_name or ctx.hook for sae in (sae_a, sae_b)]
    if not all(hooks):
        raise SaevalError("an SAE names no hook: pass --hook blocks.L.hook_resid_post (or similar)")
    contexts = load_contexts(host, ctx.corpus, config.n_tokens, config.ctx_len, seed)
    emb = config.embedding
    args = dict(
        window=config.window,
        k=config.k_windows,
        batch_size=config.batch_size,
        reservoir=emb.reservoir,
        n_pool=emb.n_pool,
        seed=seed,
    )
    # Every latent of both SAEs is scanned, so that pairs are chosen among latents with enough activating windows;
    # the forward to the hook is shared with the run's evals through its memo when the contexts are the same.
    jobs = [(sae, list(range(sae.d_sae))) for sae in (sae_a, sae_b)]
    if hooks[0] == hooks[1]:  # one activation pass serves both SAEs
        win_a, win_b = collect_windows(shared_host(host, hooks[0], contexts, ctx.memo), jobs, contexts, hooks[0],
                                       description="case study: top windows (both SAEs)", **args)
    else:
        win_a, win_b = (collect_windows(shared_host(host, hook, contexts, ctx.memo), [job], contexts, hook,
                                        description=f"top windows {name}", **args)[0]
                        for job, hook, name in zip(jobs, hooks, "AB", strict=True))
    timings["windows"] = time.time() - t
    need = config.min_windows()

    def enough(a: int, b: int) -> bool:
        return win_a.active_windows[a] >= need and win_b.active_windows[b] >= need

    chosen = select_pairs(match, config.top, config.top if config.bottom is None else config.bottom, enough)
    n_eligible_pairs = sum(enough(a, b) for a, b, _ in match.pairs)
    lat_a = sorted({p[0] for _, _, p in chosen})
    lat_b = sorted({p[1] for _, _, p in chosen})

    t = time.time()
    sx_a = {e.latent: e for e in memo_self_explain(ctx, sae_a, lat_a, config.explain)}
    sx_b = {e.latent: e for e in memo_self_explain(ctx, sae_b, lat_b, config.explain)}
    timings["self_explanation"] = time.time() - t

    t = time.time()
    model = load_embedding_model(emb.embedding_model)
    memo = ctx.memo.setdefault(("window-embeddings", emb.embedding_model), {})
    scores: list[dict[int, LatentScore]] = []
    for win, lat, sx in ((win_a, lat_a, sx_a), (win_b, lat_b, sx_b)):
        expl = _explanations(host, win, lat, config, sx)
        expl.update({f: "" for f in lat if f not in expl})
        live = [f for f in lat if win.latents[f].fired]
        shown = explaining_windows(win, live, emb.n_explain_windows) if config.explainer != "self" else {}
        scores.append(embedding_scores(win, expl, host.tokenizer, model, emb, seed, shown, memo))
    timings["embedding_score"] = time.time() - t

    entries = []
    for group, rank, (a, b, sim) in chosen:
        ex = (sx_a[a], sx_b[b])
        sc = (scores[0][a], scores[1][b])
        wins = (win_a.latents[a], win_b.latents[b])
        entries.append(
            CaseStudyEntry(
                group=group,  # type: ignore[arg-type]
                rank=rank,
                similarity=round(sim, 6),
                indices=[a, b],
                self_explanations=[e.explanation for e in ex],
                eleuthers=[s.auroc for s in sc],
                self_explanation_candidates=[e.best for e in ex],
                scored_explanations=[s.explanation for s in sc],
                eleuther_notes=[s.note for s in sc],
                self_explanation_failed=[e.sweep.failed for e in ex],
                chosen_scales=[e.sweep.chosen_scale for e in ex],
                max_selfsim=[round(e.sweep.max_selfsim, 6) for e in ex],
                fired=[w.fired for w in wins],
                max_act=[w.max_act for w in wins],
                windows=[{c: w.criterion(c) for c in CRITERIA} for w in wins],
            )
        )
    summary = MatchSummary.model_validate(match.summary())
    metrics = CaseStudyMetrics(
        shared_feature_ratio=summary.shared_feature_ratio,
        top1_ratio=summary.top1_ratio,
        mean_matched_cosine=summary.mean_matched_cosine,
        n_pairs=len(entries),
        mean_auroc_top=_mean([a for e in entries if e.group == "top" for a in e.eleuthers]),
        mean_auroc_bottom=_mean([a for e in entries if e.group == "bottom" for a in e.eleuthers]),
    )
    details = CaseStudyDetails(
        match=summary,
        hooks=hooks,
        n_tokens_scanned=win_a.n_tokens,
        never_fired=[[f for f in lat if not win.latents[f].fired] for win, lat in ((win_a, lat_a), (win_b, lat_b))],
        min_activating_windows=need,
        n_eligible_pairs=n_eligible_pairs,
        explainer=config.explainer,
        timings={k: round(v, 2) for k, v in timings.items()},
        entries=entries,
    )
    return CaseStudyResult(**envelope(ctx, "case_study", [sae_a, sae_b]), config=config, metrics=metrics,
                           details=details)

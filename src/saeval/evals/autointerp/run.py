"""The autointerp eval: choose latents, one windows pass, explanations, then every scorer on them.

``autointerp_score`` is SAEBench's: per latent, the judge is shown the detection examples (n_top_score top
windows and n_iw_score importance-weighted ones, held out from the explainer, and n_random non-activating
windows), and the latent's score is the fraction of them it classifies right (a window is activating when a
token exceeds act_threshold_frac x the latent's top activation); the metric is the mean over the latents with
a usable judgement. The same judgements give ``detection_balanced_accuracy`` (delphi's summary, which does not
reward answering "no" to the many random windows).
"""

from __future__ import annotations

import numpy as np

from saeval.analysis.windows import shared_host
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.autointerp.config import (
    AutointerpConfig,
    AutointerpDetails,
    AutointerpMetrics,
    AutointerpResult,
    LatentAutointerp,
    ScorerResult,
)
from saeval.evals.autointerp.explainers import Explainer, LLMExplainer, SelfExplainer
from saeval.evals.autointerp.records import build_records, candidate_order
from saeval.evals.autointerp.scorers import CountedChat, LatentRecord, make_scorers
from saeval.evals.base import EvalContext
from saeval.llm import LLMError, chat_model


def candidates_for(ctx: EvalContext, sae, config: AutointerpConfig) -> tuple[list[int], bool, dict[int, str]]:
    """(latents to scan, whether to keep only those firing more than min_count, reusable explanations)."""
    if config.latents is not None:
        return list(config.latents), False, {}
    if config.explainer == "self":
        previous = ctx.requirement(sae, "self_explanation")
        if previous is not None:  # score the latents self_explanation explained, with its explanations
            reuse = {e.latent: e.explanation for e in previous.details.explanations}
            return sorted(reuse), True, reuse
    pool: list[int] = list(range(sae.d_sae))
    core = ctx.requirement(sae, "core")
    if core is not None:
        # SAEBench's rule on a density measured elsewhere: expected count = density x tokens scanned.
        alive = [i for i, d in enumerate(core.details.latent_density) if d * config.n_tokens > config.min_count]
        pool = alive or pool
    return candidate_order(pool, config.n_latents, ctx.seed), True, {}


def fill_explanations(explainer: Explainer, records: list[LatentRecord]) -> None:
    todo = [r for r in records if not r.note]
    answers = explainer.explain(todo)
    errors = [a for a in answers if isinstance(a, LLMError)]
    if todo and len(errors) == len(todo):
        raise SaevalError(f"explainer {explainer.name} failed on every latent: {errors[0]}")
    for record, answer in zip(todo, answers, strict=True):
        if isinstance(answer, LLMError):
            record.note = f"explainer failed: {answer}"
        elif not answer:
            record.note = "empty explanation"
        else:
            record.explanation = answer


def judge_note(judge: CountedChat | None) -> str:
    """What a reader must know about a local judge: its size (SmolLM2-135M offline), which limits the scores."""
    host = getattr(judge.model, "host", None) if judge is not None else None
    if host is None:
        return ""
    n_params = sum(p.numel() for p in host.model.parameters())
    return (f"the judge is a tiny local model ({judge.name}, {n_params / 1e6:.0f}M parameters): it cannot tell "
            "from an explanation whether a text activates the latent, so scores near chance (balanced accuracy "
            "0.5) say nothing about the SAE; for meaningful scores pass judge=openai:MODEL@BASE_URL")


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def run(ctx: EvalContext, sae, config: AutointerpConfig) -> AutointerpResult:
    host = ctx.host
    hook = sae.cfg.hook_name or ctx.hook
    candidates, filter_count, reuse = candidates_for(ctx, sae, config)
    contexts = load_contexts(host, ctx.corpus, config.n_tokens, config.ctx_len, ctx.seed)
    n_wanted = config.n_latents if filter_count else None
    # The forward to the hook over these contexts is the same for every SAE of the run: shared through its memo.
    windows_host = shared_host(ctx.host, hook, contexts, ctx.memo)
    records, windows, warnings = build_records(windows_host, sae, contexts, hook, candidates, config, ctx.seed,
                                               n_wanted, filter_count, f"autointerp {sae.name}: windows")
    models: dict[str, object] = {}  # one chat model per spec: the explainer and the judge may share one

    def counted(spec: str) -> CountedChat:
        if spec not in models:
            models[spec] = chat_model(spec, host)
        return CountedChat(models[spec], host.tokenizer, ctx.seed)

    if config.explainer == "self":
        from saeval.evals.self_explanation.explain import memo_self_explain

        def generate(latents: list[int]) -> dict[int, str]:
            return {e.latent: e.explanation for e in memo_self_explain(ctx, sae, latents, config.explain)}

        explainer: Explainer = SelfExplainer(reuse, generate)
        explainer_usage = None
    else:
        chat = counted(config.explainer)
        explainer, explainer_usage = LLMExplainer(chat, config.max_explanation_tokens), chat.usage
    fill_explanations(explainer, records)

    judged = [s for s in config.scorers if s != "embedding"]
    judge = counted(config.judge_spec()) if judged else None
    embedder = None
    if "embedding" in config.scorers:
        from saeval.evals.embedding_score.score import load_embedding_model

        embedder = load_embedding_model(config.embedding_model)
    scorers = make_scorers(config.scorers, judge, config.resolved_judge_format(), ctx.seed, config.max_judge_tokens,
                           config.fuzz_type, embedder)
    scores: dict[str, list[ScorerResult]] = {s.name: s.score_many(records) for s in scorers}
    if judge is not None and judge.usage.n_calls and judge.usage.n_failed == judge.usage.n_calls:
        raise SaevalError(f"judge {judge.name} gave no usable answer to any of its {judge.usage.n_calls} messages")

    def metric(name: str, field: str) -> float | None:
        return _mean(getattr(r, field) for r in scores[name]) if name in scores else None

    accuracies = [r.accuracy for r in scores.get("detection", []) if r.accuracy is not None]
    usage = {"judge": judge.usage} if judge is not None else {}
    if explainer_usage is not None:
        usage["explainer"] = explainer_usage
    first = scores[config.scorers[0]]
    metrics = AutointerpMetrics(
        autointerp_score=float(np.mean(accuracies)) if accuracies else None,
        autointerp_std_dev=float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else None,
        detection_balanced_accuracy=metric("detection", "score"),
        fuzzing_balanced_accuracy=metric("fuzzing", "score"),
        embedding_auroc=metric("embedding", "score"),
        detection_auroc=metric("detection", "auroc"),
        fuzzing_auroc=metric("fuzzing", "auroc"),
        n_latents=len(records),
        n_explained=sum(bool(r.explanation) for r in records),
        n_scored=sum(r.score is not None for r in first),
        n_judge_calls=judge.usage.n_calls if judge is not None else 0,
        n_explainer_calls=explainer_usage.n_calls if explainer_usage is not None else 0,
    )
    latents = [
        LatentAutointerp(latent=r.latent, n_active_tokens=r.n_active_tokens, explanation=r.explanation, note=r.note,
                         explaining_windows=[ex.window for ex in r.explaining],
                         scores={name: results[i] for name, results in scores.items()})
        for i, r in enumerate(records)
    ]
    details = AutointerpDetails(
        explainer=explainer.name + (" (reused self_explanation results)" if reuse else ""),
        judge=judge.name if judge is not None else "", judge_format=config.resolved_judge_format(),
        n_tokens_scanned=windows.n_tokens, n_candidates=len(candidates), usage=usage, latents=latents,
        judge_note=judge_note(judge),
    )
    return AutointerpResult(**ctx.envelope("autointerp", sae), config=config, metrics=metrics, details=details,
                            warnings=warnings)

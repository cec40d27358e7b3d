"""SHIFT with an automated judge (Marks et al. 2024 as automated by Karvonen et al. 2024; not in SAEBench).

On SCR's perfectly biased probe: take its top ``n_candidates`` latents by |attribution|, explain each from
its top activating windows in the training examples, ask a judge whether it concerns the spurious attribute,
zero-ablate those judged spurious (SAE error kept) and measure the biased probe on the target attribute:
S_SHIFT = (A_abl - A_base) / (A_oracle - A_base) (0 below SAEBench's 0.001 guard). The spurious attribute is
the one SCR's reported direction removes (``auto``) or fixed in the config. Every judgement is recorded with
its evidence; failed judgements are never ablated, and when more than ``max_failed_fraction`` of them failed
``shift_score`` is null (``shift_score_partial`` still says what the rest gave).

For context each result also gives ``shift_threshold_K`` (only the top K candidates considered), the score
of ablating all candidates (no judge), and the judge's agreement with a probe-based reference label
(spurious when the latent's normalised |attribution| to the spurious oracle exceeds that to the target one).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from saeval.analysis.erasure import ExampleActivations, quirks, split_metrics, summarize
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.scr.pairs import (
    PairSAE,
    PairSetup,
    check_pair_config,
    normalized_gain,
    pair_sae,
    pair_setups,
    probe_accuracy,
    sanity,
)
from saeval.evals.shift.config import (
    SHIFTConfig,
    SHIFTDetails,
    SHIFTMetrics,
    SHIFTResult,
    check_shift_config,
    self_explanation_config,
)
from saeval.judges import LatentEvidence, Question, explain, make_judge


def window_text(tokenizer, tokens: torch.Tensor, acts_L: torch.Tensor, before: int, after: int) -> str:
    """The tokens around the most active one, which is wrapped in « »."""
    p = int(acts_L.argmax())
    lo, hi = max(0, p - before), min(len(tokens), p + after + 1)
    left = tokenizer.decode(tokens[lo:p].tolist())
    mid = tokenizer.decode(tokens[p : p + 1].tolist())
    right = tokenizer.decode(tokens[p + 1 : hi].tolist())
    gap = " " if mid.startswith(" ") else ""
    text = f"{'...' if lo else ''}{left}{gap}«{mid.strip()}»{right}{'...' if hi < len(tokens) else ''}"
    return " ".join(text.split())


@torch.inference_mode()
def evidence_for(sae, acts: ExampleActivations, run: PairSAE, latents: list[int], effects: torch.Tensor,
                 tokenizer, config: SHIFTConfig) -> list[LatentEvidence]:
    out = []
    for f in latents:
        windows, maxima = [], []
        for m in range(min(config.n_evidence, len(run.top_ids_MF))):
            value = float(run.top_vals_MF[m, f])
            if value <= 0:
                break
            e = int(run.top_ids_MF[m, f])
            per_token = sae.encode(acts.acts_of(e).to(sae.W_dec.device))[:, f].float().cpu()
            windows.append(window_text(tokenizer, acts.tokens_of(e), per_token, config.window_before,
                                       config.window_after))
            maxima.append(value)
        out.append(LatentEvidence(latent=f, attribution=float(effects[f]), windows=windows, max_activations=maxima))
    return out


def add_self_explanations(ctx: EvalContext, sae, items: list[LatentEvidence], config: SHIFTConfig) -> None:
    from saeval.evals.self_explanation.explain import memo_self_explain

    found = memo_self_explain(ctx, sae, [item.latent for item in items], self_explanation_config(config))
    for item, selfx in zip(items, found, strict=True):
        item.self_explanation = selfx.explanation or None


def question_for(setup: PairSetup, spurious: str) -> Question:
    info, labels = setup.task.info, setup.task.labels
    target = "c1" if spurious == "c2" else "c2"
    return Question(spurious=f"{info['descriptions'][spurious]} ({labels[spurious]})",
                    target=f"{info['descriptions'][target]} ({labels[target]})")


def reference_label(run: PairSAE, s: int, spurious: str, latents: list[int]) -> dict[int, bool]:
    """Probe-based reference: is the latent's |attribution| to the spurious oracle, normalised by that
    oracle's largest, above its normalised |attribution| to the target oracle?"""
    target = "c1" if spurious == "c2" else "c2"
    a_s, a_t = run.effects[(s, spurious)], run.effects[(s, target)]
    a_s, a_t = a_s / a_s.max().clamp_min(1e-12), a_t / a_t.max().clamp_min(1e-12)
    return {f: bool(a_s[f] > a_t[f]) for f in latents}


def run_pair(ctx: EvalContext, sae, setup: PairSetup, config: SHIFTConfig, judge, judged: dict,
             timing: dict[str, float]) -> tuple:
    n_max = max(config.n_candidates, *config.n_values)
    run = pair_sae(ctx, sae, setup, n_max, config.mode == "saebench")
    per_seed: dict[int, dict[str, float]] = {}
    seed_info = {}
    records: dict[int, dict[str, Any]] = {}
    for s in config.seeds:
        direction = setup.chosen_direction(s)
        spurious = config.spurious if config.spurious != "auto" else ("c1" if direction == 2 else "c2")
        target = "c1" if spurious == "c2" else "c2"
        candidates = [int(f) for f in run.ranked[(s, "biased")][: config.n_candidates]]
        key = (setup.task.name, spurious)  # judgements are per pair: the same latent id means another latent
        todo = [f for f in candidates if (*key, f) not in judged]
        if todo:
            started = time.time()
            items = evidence_for(sae, setup.acts, run, todo, run.effects[(s, "biased")], ctx.host.tokenizer, config)
            explain(config.explainer, items, ctx.host, config.explain_max_tokens)
            if config.self_explanation:
                add_self_explanations(ctx, sae, items, config)
            for item, verdict in zip(items, judge.judge(items, question_for(setup, spurious)), strict=True):
                judged[(*key, item.latent)] = (item, verdict)
            timing["judge"] = timing.get("judge", 0.0) + time.time() - started
        refs = reference_label(run, s, spurious, candidates)
        original = setup.clean[s][("biased", target)]
        oracle = setup.clean[s][(target, target)]
        row: dict[str, float] = {}
        for k in sorted({*config.n_values, config.n_candidates}):
            chosen = [f for f in candidates[:k] if judged[(*key, f)][1].verdict == "spurious"]
            changed = probe_accuracy(setup, run.view, s, "biased", target, torch.tensor(chosen, dtype=torch.long))
            row[f"shift_threshold_{k}"] = normalized_gain(changed, original, oracle)
        verdicts = [judged[(*key, f)][1] for f in candidates]
        failed = sum(v.verdict == "failed" for v in verdicts)
        everything = probe_accuracy(setup, run.view, s, "biased", target, torch.tensor(candidates, dtype=torch.long))
        agree = [(v.verdict == "spurious") == refs[v.latent] for v in verdicts if v.verdict != "failed"]
        row.update(shift_score_partial=row[f"shift_threshold_{config.n_candidates}"],
                   shift_ablate_all_candidates=normalized_gain(everything, original, oracle),
                   n_judged_spurious=float(sum(v.verdict == "spurious" for v in verdicts)),
                   n_failed_judgements=float(failed), n_candidates=float(len(candidates)))
        if agree:
            row["judge_agreement_with_probes"] = float(np.mean(agree))
        if candidates and failed / len(candidates) <= config.max_failed_fraction:
            row["shift_score"] = row["shift_score_partial"]
        per_seed[s] = row
        seed_info[str(s)] = {"spurious": spurious, "target": target, "direction": direction,
                             "biased_on_target": original, "oracle_on_target": oracle}
        records[s] = {"candidates": candidates, "refs": refs, "spurious": spurious, "key": key}
    s0 = config.seeds[0]
    first = records[s0]
    judgements = []
    for rank, f in enumerate(first["candidates"]):
        item, verdict = judged[(*first["key"], f)]
        judgements.append({"rank": rank + 1, **verdict.model_dump(), "reference_spurious": first["refs"][f],
                           "evidence": item.model_dump(exclude={"latent"})})
    detail = {"task": setup.task.info, "labels": setup.task.labels, "seeds": seed_info, "sanity": sanity(setup),
              "question": question_for(setup, first["spurious"]).model_dump(), "judgements": judgements,
              "results": per_seed[s0]}
    return per_seed, detail


@torch.inference_mode()
def run(ctx: EvalContext, sae, config: SHIFTConfig) -> SHIFTResult:
    check_pair_config(config, sae)
    check_shift_config(config)
    if config.n_candidates > sae.d_sae:
        raise SaevalError(f"shift.n_candidates {config.n_candidates} is more than the SAE's {sae.d_sae} latents")
    sae = sae.to(ctx.host.device)
    start = time.time()
    setups = pair_setups(ctx, config)
    setup_seconds = time.time() - start
    judge = make_judge(config.judge, ctx.host)
    judged: dict = {}
    timing: dict[str, float] = {}
    results, details = {}, {}
    for setup in setups:
        results[setup.task.name], details[setup.task.name] = run_pair(ctx, sae, setup, config, judge, judged,
                                                                      timing)
    flat, per_seed = summarize(results, config.seeds)
    # One pair or seed with too many failed judgements voids the headline score (no average over the rest).
    if any("shift_score" not in row for runs in results.values() for row in runs.values()):
        flat["shift_score"] = None
        flat.pop("shift_score_std", None)
    flat.setdefault("judge_agreement_with_probes", None)
    for key in ("n_candidates", "n_judged_spurious", "n_failed_judgements"):
        flat[key] = int(round(flat[key] or 0))
    metrics, by_n = split_metrics(flat, SHIFTMetrics)
    explainer = config.explainer if config.explainer in ("none", "tokens") else f"chat model {config.explainer}"
    return SHIFTResult(
        **ctx.envelope("shift", sae), config=config,
        metrics=SHIFTMetrics(**metrics),
        details=SHIFTDetails(mode=config.mode, quirks=quirks(config.mode), judge=judge.name, explainer=explainer,
                             pairs=details, per_seed=per_seed, by_n=by_n, setup_seconds=round(setup_seconds, 2),
                             sae_seconds=round(time.time() - start - setup_seconds, 2),
                             judge_seconds=round(timing.get("judge", 0.0), 2)),
    )

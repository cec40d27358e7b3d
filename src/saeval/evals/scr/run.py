"""Spurious Correlation Removal (SHIFT with probe attribution; SAEBench scr_and_tpp with perform_scr=True).

Per class pair (e.g. professor / nurse) and second attribute (male / female): a "biased" probe trained on a
perfectly correlated set (male professors vs female nurses), an oracle per attribute trained on balanced
data. dir1 ablates the top-N latents by |attribution| to the gender probe and measures the biased probe on
profession data; dir2 ablates profession latents and measures it on gender data. Score
(A_abl - A_base) / (A_oracle - A_base), 0 when the denominator is below 0.001. The reported
``scr_metric_threshold_N`` is dir1 when the biased probe is worse on profession than on gender (it relies on
gender), dir2 when it is worse on gender, absent (null) when equal, as in SAEBench. Averaged over pairs and
datasets, then over seeds. Mode "saebench" draws from SAEBench's random stream (see pairs.py), takes its
torch.topk set per N and its float32 accuracies, so a seed gives SAEBench's numbers.
"""

from __future__ import annotations

import time

import torch

from saeval.analysis.erasure import quirks, split_metrics, summarize
from saeval.evals.base import EvalContext
from saeval.evals.scr.config import SCRConfig, SCRDetails, SCRMetrics, SCRResult
from saeval.evals.scr.pairs import (
    PROBES,
    PairSetup,
    check_pair_config,
    normalized_gain,
    pair_sae,
    pair_setups,
    probe_accuracy,
    sanity,
)


def run_pair(ctx: EvalContext, sae, setup: PairSetup, config: SCRConfig) -> tuple[dict, dict]:
    saebench = config.mode == "saebench"
    run = pair_sae(ctx, sae, setup, max(config.n_values), saebench, tuple(config.n_values) if saebench else ())
    per_seed: dict[int, dict[str, float]] = {}
    for s in config.seeds:
        row: dict[str, float] = {}
        direction = setup.chosen_direction(s)
        for d, ablated, measured in ((1, "c2", "c1"), (2, "c1", "c2")):
            original = setup.clean[s][("biased", measured)]
            oracle = setup.clean[s][(measured, measured)]
            for n in config.n_values:
                changed = probe_accuracy(setup, run.view, s, "biased", measured, run.ablated(s, ablated, n))
                row[f"scr_dir{d}_threshold_{n}"] = normalized_gain(changed, original, oracle)
                if direction == d:
                    row[f"scr_metric_threshold_{n}"] = row[f"scr_dir{d}_threshold_{n}"]
        per_seed[s] = row
    s0 = config.seeds[0]
    labels = setup.task.labels
    detail = {
        "task": setup.task.info, "labels": labels, "n_examples": len(setup.task.texts),
        "n_tokens": int(setup.acts.n_ord_E.sum()), "activation_cache": setup.acts.key,
        "clean_accuracy": {str(s): {f"{labels[p]} probe on {labels[g]} data": v for (p, g), v in acc.items()}
                           for s, acc in setup.clean.items()},
        "probe_fits": {str(s): {labels[p]: fit.model_dump() for p, (_, fit) in probes.items()}
                       for s, probes in setup.probes.items()},
        "reported_direction": {str(s): setup.chosen_direction(s) for s in config.seeds},
        "sanity": sanity(setup),
        "top_latents": {labels[p]: [[int(f), float(run.effects[(s0, p)][f])]
                                    for f in run.ranked[(s0, p)][: config.top_latents_recorded]] for p in PROBES},
        "results": per_seed[s0],
    }
    return per_seed, detail


@torch.inference_mode()
def run(ctx: EvalContext, sae, config: SCRConfig) -> SCRResult:
    check_pair_config(config, sae)
    sae = sae.to(ctx.host.device)
    start = time.time()
    setups = pair_setups(ctx, config)
    setup_seconds = time.time() - start
    results, details = {}, {}
    for setup in setups:
        results[setup.task.name], details[setup.task.name] = run_pair(ctx, sae, setup, config)
    flat, per_seed = summarize(results, config.seeds)
    metrics, by_n = split_metrics(flat, SCRMetrics)
    return SCRResult(
        **ctx.envelope("scr", sae), config=config,
        metrics=SCRMetrics(**metrics),
        details=SCRDetails(mode=config.mode, quirks=quirks(config.mode), pairs=details, per_seed=per_seed,
                           by_n=by_n, setup_seconds=round(setup_seconds, 2),
                           sae_seconds=round(time.time() - start - setup_seconds, 2)),
    )

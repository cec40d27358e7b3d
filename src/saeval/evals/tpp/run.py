"""Targeted Probe Perturbation (Karvonen et al. 2024, SAEBench scr_and_tpp with perform_scr=False).

One-vs-rest probes per class on mean-pooled activations; for class i, zero-ablate the top-N latents by
attribution to probe i (SAE error kept) and measure every probe's accuracy drop:
S_TPP = mean_i [A_i - A_i^(abl i)] - mean_i mean_{j != i} [A_j - A_j^(abl i)]
(``tpp_threshold_N_total_metric`` = intended - unintended), averaged over datasets, then over seeds.

Mode "saebench" keeps SAEBench's quirks: probe epoch chosen on the test set, negatives redrawn for every
evaluation, padded positions entering the ablated mean. Mode "validation" selects on a held-out part of the
training data, draws each class's test negatives once, and pools ordinary tokens only.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from saeval.analysis.erasure import (
    ExampleActivations,
    ProbeSpec,
    ablation_view,
    accuracy_of,
    attribution,
    cached_activations,
    check_erasure_config,
    decoder_rows,
    fit_probes,
    quirks,
    sae_pass,
    split_metrics,
    split_validation,
    summarize,
    top_n,
)
from saeval.analysis.probes import LinearProbe, generator, one_vs_rest_negatives
from saeval.data.labeled import ErasureTask, load_labeled, tpp_task
from saeval.evals.base import EvalContext
from saeval.evals.tpp.config import TPPConfig, TPPDetails, TPPMetrics, TPPResult


class TPPDraws:
    """Every random example set of one seed, drawn up front so each evaluation is reproducible."""

    def __init__(self, task: ErasureTask, seed: int, mode: str, fraction: float):
        self.task, self.seed, self.mode = task, seed, mode
        self.train = {c: np.asarray(v) for c, v in task.train.items()}
        self.test = {c: np.asarray(v) for c, v in task.test.items()}
        self.specs: list[ProbeSpec] = []
        self.attr: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.clean: dict[str, np.ndarray] = {}
        for c in self.train:
            neg = self._neg(self.train, c, "train")
            if mode == "saebench":
                sel_pos, sel_neg = self.test[c], self._neg(self.test, c, "select")
                fit_pos, fit_neg = self.train[c], neg
                self.attr[c] = (self.train[c], self._neg(self.train, c, "attribution"))
                self.clean[c] = self._neg(self.test, c, "clean")
            else:
                fit_pos, sel_pos = split_validation(self.train[c], fraction, generator("tpp", seed, c, "val+"))
                fit_neg, sel_neg = split_validation(neg, fraction, generator("tpp", seed, c, "val-"))
                self.attr[c] = (self.train[c], neg)
                self.clean[c] = self._neg(self.test, c, "test")
            self.specs.append(ProbeSpec(name=c, train_pos=fit_pos.tolist(), train_neg=fit_neg.tolist(),
                                        sel_pos=sel_pos.tolist(), sel_neg=sel_neg.tolist()))

    def _neg(self, split: dict[str, np.ndarray], c: str, purpose: str, *extra: object) -> np.ndarray:
        others = [split[o] for o in split if o != c]
        return one_vs_rest_negatives(len(split[c]), others, generator("tpp", self.seed, c, purpose, *extra))

    def ablation_negatives(self, ablated: str, n: int, measured: str) -> np.ndarray:
        if self.mode == "saebench":  # SAEBench's prepare_probe_data draws anew on every call
            return self._neg(self.test, measured, "ablation", ablated, n)
        return self.clean[measured]


def tpp_metrics(clean: dict[str, float], ablated: dict[tuple[str, int, str], float], classes: list[str],
                n_values: list[int]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """SAEBench create_tpp_plotting_dict: per class and averaged over classes."""
    per_class: dict[str, dict[str, float]] = {}
    for i in classes:
        row = {}
        for n in n_values:
            intended = clean[i] - ablated[(i, n, i)]
            unintended = float(np.mean([clean[j] - ablated[(i, n, j)] for j in classes if j != i]))
            row[f"tpp_threshold_{n}_total_metric"] = intended - unintended
            row[f"tpp_threshold_{n}_intended_diff_only"] = intended
            row[f"tpp_threshold_{n}_unintended_diff_only"] = unintended
        per_class[i] = row
    keys = next(iter(per_class.values())).keys()
    return {k: float(np.mean([per_class[c][k] for c in classes])) for k in keys}, per_class


def prepare(ctx: EvalContext, dataset: str, config: TPPConfig):
    key = ("tpp-task", dataset, config.train_set_size, config.test_set_size, config.data_seed)
    if key not in ctx.memo:
        ctx.memo[key] = tpp_task(load_labeled(dataset, config.data_seed), config.train_set_size,
                                 config.test_set_size, config.data_seed)
    task = ctx.memo[key]
    return task, cached_activations(ctx, task, config.ctx_len, config.llm_batch_size, config.sink_ratio)


def run_dataset(ctx: EvalContext, sae, dataset: str, config: TPPConfig) -> tuple[dict, dict, float]:
    start = time.time()
    task, acts = prepare(ctx, dataset, config)
    draws = {s: TPPDraws(task, s, config.mode, config.validation_fraction) for s in config.seeds}
    fits = {s: fit_probes(acts, draws[s].specs, config.probe, s) for s in config.seeds}
    probes = {s: {c: probe for c, (probe, _) in fits[s].items()} for s in config.seeds}
    setup = time.time() - start
    per_seed, detail = tpp_scores(sae, task, acts, draws, probes, config)
    s0 = config.seeds[0]
    detail.update({
        "task": task.info, "n_examples": len(task.texts), "n_tokens": int(acts.n_ord_E.sum()),
        "activation_cache": acts.key,
        "probe_fits": {str(s): {task.labels[c]: fits[s][c][1].model_dump() for c in task.train} for s in fits},
    })
    detail["per_class"] = detail.pop("per_class_by_seed")[s0]
    return per_seed, detail, setup


def tpp_scores(sae, task: ErasureTask, acts: ExampleActivations, draws: dict[int, TPPDraws],
               probes: dict[int, dict[str, LinearProbe]], config: TPPConfig) -> tuple[dict, dict]:
    """Per-seed TPP metrics of one SAE given the activations, the seeds' example draws and probes."""
    classes = list(task.train)
    seeds = list(draws)
    rows_FD = decoder_rows(sae).cpu()
    train_ids = np.unique(np.concatenate(list(draws[seeds[0]].train.values())))
    sets = [part for s in seeds for c in classes for part in draws[s].attr[c]]
    means = sae_pass(sae, acts, train_ids, sets=sets).means_SF
    assert means is not None
    n_max = max(config.n_values)
    selected: dict[tuple[int, str], Tensor] = {}
    effects_top: dict[tuple[int, str], list] = {}
    nonzero: dict[tuple[int, str], int] = {}
    for k, (s, c) in enumerate((s, c) for s in seeds for c in classes):
        effects = attribution(means[2 * k], means[2 * k + 1], rows_FD @ probes[s][c].w_D, "tpp")
        selected[(s, c)] = top_n(effects, n_max)
        nonzero[(s, c)] = int((effects != 0).sum())
        effects_top[(s, c)] = [[int(f), float(effects[f])] for f in selected[(s, c)][: config.top_latents_recorded]]
    test_ids = np.unique(np.concatenate(list(draws[seeds[0]].test.values())))
    keep = torch.cat(list(selected.values()))
    view = ablation_view(sae, acts, test_ids, keep, padding_quirk=config.mode == "saebench")

    per_seed, clean_accs, per_class = {}, {}, {}
    for s in seeds:
        d = draws[s]

        def acc(j: str, negatives: np.ndarray, latents: Tensor, s: int = s, d: TPPDraws = d) -> float:
            rows = np.concatenate([d.test[j], negatives])
            return accuracy_of(view.logits(probes[s][j], acts.xbar_ED, rows, latents), len(d.test[j]))

        clean = {j: acc(j, d.clean[j], torch.zeros(0, dtype=torch.long)) for j in classes}
        ablated = {(i, n, j): acc(j, d.ablation_negatives(i, n, j), selected[(s, i)][:n])
                   for i in classes for n in config.n_values for j in classes}
        per_seed[s], per_class[s] = tpp_metrics(clean, ablated, classes, config.n_values)
        clean_accs[s] = clean
    s0 = seeds[0]
    detail = {
        "clean_accuracy": {str(s): {task.labels[j]: v for j, v in clean_accs[s].items()} for s in seeds},
        "per_class_by_seed": {s: {task.labels[c]: v for c, v in per_class[s].items()} for s in seeds},
        "top_latents": {task.labels[c]: effects_top[(s0, c)] for c in classes},
        "n_nonzero_effects": {task.labels[c]: nonzero[(s0, c)] for c in classes},
    }
    return per_seed, detail


@torch.inference_mode()
def run(ctx: EvalContext, sae, config: TPPConfig) -> TPPResult:
    check_erasure_config(config, sae, "labeled dataset")
    sae = sae.to(ctx.host.device)
    start = time.time()
    results, details, setup = {}, {}, 0.0
    for dataset in config.datasets:
        results[dataset], details[dataset], seconds = run_dataset(ctx, sae, dataset, config)
        setup += seconds
    flat, per_seed = summarize(results, config.seeds)
    metrics, by_n = split_metrics(flat, TPPMetrics)
    return TPPResult(
        **ctx.envelope("tpp", sae), config=config,
        metrics=TPPMetrics(**metrics),
        details=TPPDetails(mode=config.mode, quirks=quirks(config.mode), datasets=details, per_seed=per_seed,
                           by_n=by_n, setup_seconds=round(setup, 2),
                           sae_seconds=round(time.time() - start - setup, 2)),
    )

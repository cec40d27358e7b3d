"""Targeted Probe Perturbation (Karvonen et al. 2024, SAEBench scr_and_tpp with perform_scr=False).

One-vs-rest probes per class on mean-pooled activations; for class i, zero-ablate the top-N latents by
attribution to probe i (SAE error kept) and measure every probe's accuracy drop:
S_TPP = mean_i [A_i - A_i^(abl i)] - mean_i mean_{j != i} [A_j - A_j^(abl i)]
(``tpp_threshold_N_total_metric`` = intended - unintended), averaged over datasets, then over seeds.

Mode "saebench" keeps SAEBench's quirks: probe epoch chosen on the test set, negatives redrawn for every
evaluation, padded positions entering the ablated mean; and its random stream: per seed one generator seeded
like SAEBench's ``torch.manual_seed(seed)`` that draws, over the datasets in order, what SAEBench draws in its
order (per class its train and test negatives, then its probe's init and epoch orders; the clean-accuracy
negatives; the attribution negatives; per ablated class and N each class's negatives), so a seed gives
SAEBench's numbers. Mode "validation" selects on a held-out part of the training data, draws each class's test
negatives once from its own labelled seeds, and pools ordinary tokens only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
    saebench_top_n,
    split_metrics,
    split_validation,
    stream_spec,
    stream_train,
    summarize,
    top_n,
)
from saeval.analysis.probes import LinearProbe, ProbeFit, SAEBenchStream, generator, one_vs_rest_negatives
from saeval.data.labeled import ErasureTask, load_labeled, tpp_task
from saeval.evals.base import EvalContext
from saeval.evals.tpp.config import TPPConfig, TPPDetails, TPPMetrics, TPPResult


@dataclass
class TPPDraws:
    """Every random example set of one seed on one dataset, drawn up front so each evaluation is reproducible."""

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    specs: list[ProbeSpec] = field(default_factory=list)
    attr: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # attribution (pos, neg)
    clean: dict[str, np.ndarray] = field(default_factory=dict)  # test negatives of the clean accuracies
    ablation: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)  # saebench: per evaluation
    fits: dict[str, tuple[LinearProbe, ProbeFit]] = field(default_factory=dict)  # trained while drawing

    @classmethod
    def validation(cls, task: ErasureTask, seed: int, fraction: float) -> TPPDraws:
        d = cls(_split(task.train), _split(task.test))
        for c in d.train:
            neg = _negatives(d.train, c, seed, "train")
            fit_pos, sel_pos = split_validation(d.train[c], fraction, generator("tpp", seed, c, "val+"))
            fit_neg, sel_neg = split_validation(neg, fraction, generator("tpp", seed, c, "val-"))
            d.attr[c] = (d.train[c], neg)
            d.clean[c] = _negatives(d.test, c, seed, "test")
            d.specs.append(ProbeSpec(name=c, train_pos=fit_pos.tolist(), train_neg=fit_neg.tolist(),
                                     sel_pos=sel_pos.tolist(), sel_neg=sel_neg.tolist()))
        return d

    @classmethod
    def saebench(cls, task: ErasureTask, stream: SAEBenchStream, d_model: int, config: TPPConfig, fit=None,
                 later: SAEBenchStream | None = None) -> TPPDraws:
        """SAEBench run_eval_single_dataset's draws, in its order; ``fit(spec)`` trains (or loads) each probe
        where SAEBench trains it (without it the epochs must be fixed: see ``stream_train``). ``later``: the
        stream of a later SAEBench run that loads the saved probes (its artifacts) instead of training them, so
        it draws only the attribution and ablation negatives; those are then taken from it."""
        d = cls(_split(task.train), _split(task.test))
        classes = list(d.train)
        for c in classes:  # train_probe_on_activations: train draw, test draw, training, per class
            train, sel = _draw(stream, d.train, c), _draw(stream, d.test, c)
            d.specs.append(stream_spec(stream, c, train, sel))
            trained = stream_train(stream, d.specs[-1], d_model, config.probe, fit)
            if trained is not None:
                d.fits[c] = trained
        for c in classes:  # get_probe_test_accuracy
            d.clean[c] = _draw(stream, d.test, c).neg
        d.attr, d.ablation = d._per_sae_draws(stream, config.n_values)
        if later is not None:
            d.attr, d.ablation = d._per_sae_draws(later, config.n_values)
        return d

    def _per_sae_draws(self, stream: SAEBenchStream, n_values: list[int]) -> tuple[dict, dict]:
        """get_all_node_effects_for_one_sae, then perform_feature_ablations (per ablated class and N)."""
        classes = list(self.train)
        attr = {c: (self.train[c], _draw(stream, self.train, c).neg) for c in classes}
        ablation = {(i, n, j): _draw(stream, self.test, j).neg for i in classes for n in n_values for j in classes}
        return attr, ablation

    def ablation_negatives(self, ablated: str, n: int, measured: str) -> np.ndarray:
        if self.ablation:  # SAEBench's prepare_probe_data draws anew on every call
            return self.ablation[(ablated, n, measured)]
        return self.clean[measured]


def _split(groups: dict[str, list[int]]) -> dict[str, np.ndarray]:
    return {c: np.asarray(v) for c, v in groups.items()}


def _draw(stream: SAEBenchStream, split: dict[str, np.ndarray], c: str):
    return stream.one_vs_rest(split[c], [split[o] for o in split if o != c])


def _negatives(split: dict[str, np.ndarray], c: str, seed: int, purpose: str) -> np.ndarray:
    others = [split[o] for o in split if o != c]
    return one_vs_rest_negatives(len(split[c]), others, generator("tpp", seed, c, purpose))


def seed_draws(task: ErasureTask, acts: ExampleActivations, config: TPPConfig, seed: int,
               stream: SAEBenchStream | None = None, later: SAEBenchStream | None = None,
               ) -> tuple[TPPDraws, dict[str, tuple[LinearProbe, ProbeFit]]]:
    """One seed's draws and probes on one dataset (mode saebench: continuing ``stream``, a fresh one if None;
    ``later``: see TPPDraws.saebench)."""
    if config.mode != "saebench":
        d = TPPDraws.validation(task, seed, config.validation_fraction)
        return d, fit_probes(acts, d.specs, config.probe, seed)
    d = TPPDraws.saebench(task, stream or SAEBenchStream(seed), acts.d_model, config,
                          fit=lambda spec: fit_probes(acts, [spec], config.probe, seed)[spec.name], later=later)
    return d, d.fits


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


def run_dataset(ctx: EvalContext, sae, dataset: str, config: TPPConfig,
                streams: dict[int, SAEBenchStream] | None = None,
                later: dict[int, SAEBenchStream] | None = None) -> tuple[dict, dict, float]:
    start = time.time()
    task, acts = prepare(ctx, dataset, config)
    draws, fits = {}, {}
    for s in config.seeds:
        draws[s], fits[s] = seed_draws(task, acts, config, s, (streams or {}).get(s), (later or {}).get(s))
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
    saebench = config.mode == "saebench"
    n_max = max(config.n_values)
    selected: dict[tuple[int, str, int], Tensor] = {}
    effects_top: dict[tuple[int, str], list] = {}
    nonzero: dict[tuple[int, str], int] = {}
    for k, (s, c) in enumerate((s, c) for s in seeds for c in classes):
        effects = attribution(means[2 * k], means[2 * k + 1], rows_FD @ probes[s][c].w_D, "tpp")
        ranked = top_n(effects, n_max)
        for n in config.n_values:
            selected[(s, c, n)] = saebench_top_n(effects, n) if saebench else ranked[:n]
        nonzero[(s, c)] = int((effects != 0).sum())
        effects_top[(s, c)] = [[int(f), float(effects[f])] for f in ranked[: config.top_latents_recorded]]
    test_ids = np.unique(np.concatenate(list(draws[seeds[0]].test.values())))
    keep = torch.cat(list(selected.values()))
    view = ablation_view(sae, acts, test_ids, keep, padding_quirk=saebench)

    per_seed, clean_accs, per_class = {}, {}, {}
    for s in seeds:
        d = draws[s]

        def acc(j: str, negatives: np.ndarray, latents: Tensor, s: int = s, d: TPPDraws = d) -> float:
            rows = np.concatenate([d.test[j], negatives])
            return accuracy_of(view.logits(probes[s][j], acts.xbar_ED, rows, latents), len(d.test[j]), saebench)

        clean = {j: acc(j, d.clean[j], torch.zeros(0, dtype=torch.long)) for j in classes}
        ablated = {(i, n, j): acc(j, d.ablation_negatives(i, n, j), selected[(s, i, n)])
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
def run(ctx: EvalContext, sae, config: TPPConfig, saved_probes: bool = False) -> TPPResult:
    """``saved_probes`` (mode saebench): the numbers of an SAEBench run that found the probes an earlier run at
    the same hook saved (every SAE after the first in a sweep, or a rerun) and so draws only the attribution and
    ablation negatives from its freshly seeded stream; else those of the run that trained them."""
    check_erasure_config(config, sae, "labeled dataset")
    sae = sae.to(ctx.host.device)
    start = time.time()
    results, details, setup = {}, {}, 0.0
    # SAEBench seeds once per SAE and its stream runs on through the datasets.
    streams = {s: SAEBenchStream(s) for s in config.seeds} if config.mode == "saebench" else None
    later = {s: SAEBenchStream(s) for s in config.seeds} if streams and saved_probes else None
    for dataset in config.datasets:
        results[dataset], details[dataset], seconds = run_dataset(ctx, sae, dataset, config, streams, later)
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

"""Sparse probing (Gao et al. 2024, Gurnee et al. 2023; SAEBench sparse_probing).

Each class of a dataset is a binary task: its examples against as many drawn from the other classes
(SAEBench prepare_probe_data: ceil(n / n_others) of each, then n of them). Inputs are mean-pooled over ordinary
tokens: the model's activations at the SAE's hook, and the SAE's latents (each token encoded, then averaged, as
SAEBench get_sae_meaned_activations). Dimensions are ranked by |mean_pos - mean_neg| on the training split
(stable ties: the lower index first); a LogisticRegression (L2, C=1, lbfgs, 1000 iterations) on the top k gives
``{llm,sae}_top_{k}_test_accuracy``; a probe on all of them ``{llm,sae}_test_accuracy``. Per dataset the mean over
its classes, then the mean over datasets.

Mode "saebench" keeps SAEBench's quirks: the full-width probe keeps its epoch of best TEST accuracy (and reports
it), and every probe (each k, model and SAE side) sees its own random draw of negatives. Mode "validation"
selects that epoch on held-out training data and draws each class's negatives once, so that the SAE and model
probes of a class are compared on the same examples.

The model's activations come from the erasure cache (analysis/erasure.py: same texts, hook, ctx_len and
sink_ratio as TPP give the same entry); the model-side probes, the same for every SAE, are kept per run and on
disk (kind ``sparse-probing-llm``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saeval.analysis.erasure import ExampleActivations, cached_activations, sae_pass, split_validation
from saeval.analysis.probes import derive_seed, generator, one_vs_rest_negatives, train_probe
from saeval.data.cache import CacheKey, read_record, write_record
from saeval.data.labeled import ErasureTask
from saeval.data.probing_sets import load_probing, probing_task
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.sparse_probing.config import (
    SparseProbingConfig,
    SparseProbingDetails,
    SparseProbingMetrics,
    SparseProbingResult,
)
from saeval.hashing import json_digest

LLM_KIND, LLM_FORMAT = "sparse-probing-llm", 1


@dataclass
class ProbeSets:
    """Example ids of one binary probe: fit on train, score on test; the full-width torch probe fits on ``fit``
    and keeps its epoch of best accuracy on ``sel`` (the test set in mode saebench)."""

    train_pos: np.ndarray
    train_neg: np.ndarray
    test_pos: np.ndarray
    test_neg: np.ndarray
    fit_pos: np.ndarray
    fit_neg: np.ndarray
    sel_pos: np.ndarray
    sel_neg: np.ndarray


def draw_sets(task: ErasureTask, cls: str, purpose: str, config: SparseProbingConfig) -> ProbeSets:
    """The examples of class ``cls``'s probe ``purpose`` (e.g. ``sae_top_2``); one draw per class in mode
    validation."""
    key = purpose if config.mode == "saebench" else "shared"

    def negatives(split: dict[str, list[int]], name: str) -> tuple[np.ndarray, np.ndarray]:
        others = [np.asarray(v) for c, v in split.items() if c != cls]
        pos = np.asarray(split[cls])
        return pos, one_vs_rest_negatives(len(pos), others, generator("sparse_probing", config.seed, task.name, cls,
                                                                      name, key))

    train_pos, train_neg = negatives(task.train, "train")
    test_pos, test_neg = negatives(task.test, "test")
    if config.mode == "saebench":
        return ProbeSets(train_pos, train_neg, test_pos, test_neg, train_pos, train_neg, test_pos, test_neg)
    fraction = config.validation_fraction
    fit_pos, sel_pos = split_validation(train_pos, fraction, generator("sparse_probing", config.seed, task.name, cls,
                                                                       "val+"))
    fit_neg, sel_neg = split_validation(train_neg, fraction, generator("sparse_probing", config.seed, task.name, cls,
                                                                       "val-"))
    return ProbeSets(train_pos, train_neg, test_pos, test_neg, fit_pos, fit_neg, sel_pos, sel_neg)


def xy(X_ND: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_N = np.r_[np.ones(len(pos), dtype=np.int64), np.zeros(len(neg), dtype=np.int64)]
    return X_ND[np.concatenate([pos, neg])], y_N


def rank_dims(X_ND: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dimensions by |mean over pos - mean over neg| (float64), largest first, ties to the lower index."""
    diff_D = np.abs(X_ND[pos].astype(np.float64).mean(0) - X_ND[neg].astype(np.float64).mean(0))
    return np.argsort(-diff_D, kind="stable"), diff_D


def sklearn_probe(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                  config: SparseProbingConfig) -> tuple[float, bool]:
    """SAEBench train_sklearn_probe: test accuracy of LogisticRegression(C, max_iter); and whether it converged."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=config.sklearn_C, max_iter=config.sklearn_max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted in details.not_converged instead
        model.fit(x.astype(np.float32), y)
    accuracy = float((model.predict(x_test.astype(np.float32)) == y_test).mean())
    return accuracy, bool(model.n_iter_.max() < config.sklearn_max_iter)


def full_probe(X_ND: np.ndarray, sets: ProbeSets, config: SparseProbingConfig, seed: int) -> tuple[float, dict, bool]:
    """Test accuracy of a probe on every dimension, its fit record, and whether it converged."""
    x_test, y_test = xy(X_ND, sets.test_pos, sets.test_neg)
    if config.full_width_probe == "sklearn":
        x, y = xy(X_ND, sets.train_pos, sets.train_neg)
        accuracy, converged = sklearn_probe(x, y, x_test, y_test, config)
        return accuracy, {"probe": "sklearn", "n_train": len(y)}, converged
    x_fit, y_fit = xy(X_ND, sets.fit_pos, sets.fit_neg)
    x_sel, y_sel = xy(X_ND, sets.sel_pos, sets.sel_neg)
    probe, fit_info = train_probe(torch.from_numpy(x_fit), torch.from_numpy(y_fit), torch.from_numpy(x_sel),
                                  torch.from_numpy(y_sel), config.probe, seed=seed)
    accuracy = probe.accuracy(torch.from_numpy(x_test), torch.from_numpy(y_test))
    return accuracy, {"probe": "torch", **fit_info.model_dump()}, True


@contextmanager
def one_thread() -> Iterator[None]:
    """Probe fits are thousands of small ops; with several intra-op threads each op waits for the others, which on
    a busy machine costs more than the work (5 s instead of 27 s for one demo dataset's SAE probes on 2 shared
    cores)."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def probe_features(X_ND: np.ndarray, task: ErasureTask, config: SparseProbingConfig, source: str) -> dict[str, Any]:
    """Every probe of one side (``llm`` or ``sae``) for each class of the task: accuracies under SAEBench's keys,
    the top dimensions of the largest k's ranking, the full-width fits, the count of unconverged fits."""
    with one_thread():
        return _probe_features(X_ND, task, config, source)


def _probe_features(X_ND: np.ndarray, task: ErasureTask, config: SparseProbingConfig, source: str) -> dict[str, Any]:
    per_class: dict[str, dict[str, float]] = {}
    top: dict[str, list] = {}
    fits: dict[str, dict] = {}
    not_converged = 0
    for cls in task.train:
        row: dict[str, float] = {}
        sets = draw_sets(task, cls, source, config)
        row[f"{source}_test_accuracy"], fits[task.labels[cls]], ok = full_probe(
            X_ND, sets, config, derive_seed(config.seed, task.name, cls, source))
        not_converged += not ok
        ranking = None
        for k in sorted(config.k_values):
            # Mode validation draws once per class: every k shares one ranking (over all F latents, not cheap).
            if config.mode == "saebench" or ranking is None:
                sets = draw_sets(task, cls, f"{source}_top_{k}", config)
                ranking = rank_dims(X_ND, sets.train_pos, sets.train_neg)
            order, diff = ranking
            keep = order[:k]
            x, y = xy(X_ND[:, keep], sets.train_pos, sets.train_neg)
            x_test, y_test = xy(X_ND[:, keep], sets.test_pos, sets.test_neg)
            row[f"{source}_top_{k}_test_accuracy"], ok = sklearn_probe(x, y, x_test, y_test, config)
            not_converged += not ok
            top[task.labels[cls]] = [[int(d), float(diff[d])] for d in order[: config.top_latents_recorded]]
        per_class[task.labels[cls]] = row
    return {"per_class": per_class, "top": top, "full_fits": fits, "not_converged": not_converged}


def llm_key(task: ErasureTask, acts: ExampleActivations, config: SparseProbingConfig) -> CacheKey:
    """What the model-side probes depend on: the activations' content key, the example groups, the probe config."""
    import sklearn

    fields = ("k_values", "mode", "validation_fraction", "full_width_probe", "probe", "sklearn_C", "sklearn_max_iter",
              "seed", "top_latents_recorded")
    return CacheKey(LLM_KIND, {"format": LLM_FORMAT, "acts": acts.key, "sklearn": sklearn.__version__,
                               "task": task.name, "groups": json_digest([task.train, task.test]),
                               "config": config.model_dump(include=set(fields), mode="json")})


def llm_probes(ctx: EvalContext | None, task: ErasureTask, acts: ExampleActivations,
               config: SparseProbingConfig) -> dict[str, Any]:
    """The model-side probes: computed once per run (memo) and once ever (disk record)."""
    key = llm_key(task, acts, config)
    memo = ctx.memo if ctx is not None else {}
    if key.digest in memo:
        return memo[key.digest]
    found = read_record(key)
    if found is None:
        found = probe_features(acts.xbar_ED.numpy(), task, config, "llm")
        write_record(key, found)
    memo[key.digest] = found
    return found


def pooled_latents(sae, acts: ExampleActivations) -> np.ndarray:
    """[E, F] mean over each example's ordinary tokens of its per-token latents."""
    encoded = sae_pass(sae, acts, np.arange(len(acts)), keep=torch.arange(sae.d_sae))
    assert encoded.fbar_EK is not None
    return encoded.fbar_EK.numpy()


def class_means(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = next(iter(per_class.values())).keys()
    return {k: float(np.mean([row[k] for row in per_class.values()])) for k in keys}


def probe_dataset(sae, task: ErasureTask, acts: ExampleActivations, config: SparseProbingConfig,
                  llm: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both sides on one dataset's task and activations (``llm``: the model-side results, computed if None)."""
    llm = llm if llm is not None else probe_features(acts.xbar_ED.numpy(), task, config, "llm")
    sae_side = probe_features(pooled_latents(sae, acts), task, config, "sae")
    per_class = {c: {**llm["per_class"][c], **sae_side["per_class"][c]} for c in sae_side["per_class"]}
    return {
        "metrics": class_means(per_class), "per_class": per_class, "task": task.info,
        "n_examples": len(task.texts), "n_tokens": int(acts.n_ord_E.sum()), "activation_cache": acts.key,
        "top_latents": sae_side["top"], "top_dims": llm["top"],
        "full_width_fits": {"llm": llm["full_fits"], "sae": sae_side["full_fits"]},
        "not_converged": {"llm": llm["not_converged"], "sae": sae_side["not_converged"]},
    }


def prepare(ctx: EvalContext, dataset: str, config: SparseProbingConfig) -> tuple[ErasureTask, ExampleActivations]:
    key = ("sparse-probing-task", dataset, config.train_set_size, config.test_set_size, config.data_seed)
    if key not in ctx.memo:
        base = ctx.memo.setdefault("probing-base-tables", {})
        ds = load_probing(dataset, config.data_seed, config.train_set_size, config.test_set_size, memo=base)
        ctx.memo[key] = probing_task(ds, config.train_set_size, config.test_set_size, config.data_seed)
    task = ctx.memo[key]
    return task, cached_activations(ctx, task, config.ctx_len, config.llm_batch_size, config.sink_ratio)


def check_config(config: SparseProbingConfig, sae, d_model: int) -> None:
    top = min(sae.d_sae, d_model)
    if any(k > top for k in config.k_values):
        raise SaevalError(f"k_values {config.k_values} must lie in 1..{top} (the SAE's latents and the model's "
                          "dimensions)")


def quirks(mode: str) -> dict[str, Any]:
    saebench = mode == "saebench"
    return {"full_width_epoch_selected_on": "test" if saebench else "validation",
            "negatives": "redrawn per probe" if saebench else "drawn once per class",
            "llm_negatives_shared_with_sae": not saebench}


def summarize(per_dataset: dict[str, dict[str, float]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """SAEBench average_results_dictionaries: each key's mean over datasets; (typed keys, the other k)."""
    keys = next(iter(per_dataset.values())).keys()
    flat = {k: float(np.mean([m[k] for m in per_dataset.values()])) for k in keys}
    known = SparseProbingMetrics.model_fields
    return {k: v for k, v in flat.items() if k in known}, {k: v for k, v in flat.items() if k not in known}


@torch.inference_mode()
def run(ctx: EvalContext, sae, config: SparseProbingConfig) -> SparseProbingResult:
    check_config(config, sae, ctx.host.d_model)
    sae = sae.to(ctx.host.device)
    start = time.time()
    details: dict[str, Any] = {}
    setup = 0.0
    for dataset in config.datasets:
        t0 = time.time()
        task, acts = prepare(ctx, dataset, config)
        llm = llm_probes(ctx, task, acts, config)
        setup += time.time() - t0
        details[dataset] = probe_dataset(sae, task, acts, config, llm)
    metrics, by_k = summarize({d: v["metrics"] for d, v in details.items()})
    not_converged = sum(sum(v["not_converged"].values()) for v in details.values())
    return SparseProbingResult(
        **ctx.envelope("sparse_probing", sae), config=config, metrics=SparseProbingMetrics(**metrics),
        details=SparseProbingDetails(mode=config.mode, quirks=quirks(config.mode), datasets=details, by_k=by_k,
                                     not_converged=not_converged, setup_seconds=round(setup, 2),
                                     sae_seconds=round(time.time() - start - setup, 2)),
    )

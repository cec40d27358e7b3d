"""The FaithfulSAE data study's config and result types (torch-free: validated before any model loads)."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from saeval.saes.train_config import TrainConfig
from saeval.studies.base import StudyConfig, StudyResult
from saeval.studies.records import PairMatch

SELF = "self-generated"


class FaithfulTrainConfig(TrainConfig):
    """The trainer's config with the paper's TopK settings as defaults; d_sae and seed come from the study."""

    d_sae: int = Field(4608, gt=0, exclude=True, description="set by the study: expansion x the host's d_model")
    seed: int = Field(0, exclude=True, description="set by the study: each of its seeds")
    k: int = Field(16, gt=0, description="active latents per token (the paper's k=16)")
    batch_size: int = Field(512, gt=0, description="tokens per optimiser step")
    dead_tokens: int = Field(50_000, gt=0, description="a latent silent for this many tokens counts as dead")

    @model_validator(mode="after")
    def _derived_fields(self) -> FaithfulTrainConfig:
        given = {"d_sae", "seed"} & self.model_fields_set
        if given:
            raise ValueError(f"train.{sorted(given)[0]} is set by the study: use expansion (d_sae = expansion x "
                             "d_model) and seeds instead")
        return self


class FaithfulConfig(StudyConfig):
    train_tokens: int = Field(131_072, gt=0, description="training tokens per corpus (the demo SAEs' budget)")
    eval_tokens: int = Field(8_192, gt=0, description="held-out tokens per corpus for the cross-data table")
    ctx_len: int = Field(128, gt=1, description="context length (BOS included)")
    seeds: tuple[int, int] = Field((0, 1), description="the two training seeds compared per corpus")
    # The paper's TopK SAEs have a 16x dictionary (GPT-2's 12,288 = 16 x 768), so a preset suits any model.
    expansion: int = Field(16, gt=0, description="dictionary size as a multiple of the host's d_model")
    train: FaithfulTrainConfig = Field(default_factory=FaithfulTrainConfig, description="SAE training settings")
    data_seed: int = Field(1, description="order of the contexts and seed of the self-generated text")
    threshold: float = Field(0.7, ge=-1, le=1, description="cosine above which matched latents count as shared")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the self-generated text")

    @model_validator(mode="after")
    def _distinct_seeds(self) -> FaithfulConfig:
        if self.seeds[0] == self.seeds[1]:
            raise ValueError(f"seeds must differ (got {list(self.seeds)}): the study compares two seeds")
        return self


PRESETS: dict[str, dict] = {
    # The demo's own SAEs are this preset's State of the Union pair (saeval.demo), so its size and schedule are
    # the smallest that make two seeds share at least 30% of their features (benchmarks/bench_demo_saes.py, SmolLM2
    # at blocks.15.hook_resid_post, 24,576 training tokens, k=16, lr 3e-3, batch 256; shared ratio by epoch):
    # 1152 latents (2 x 576): 0.10 / 0.19 / 0.26 / 0.30 after 4 / 8 / 12 / 16 epochs; 576 (1 x): 0.23 / 0.30 / 0.34
    # after 8 / 12 / 16 at about half the training time (batch 512: 0.26 after 16, 0.32 after 24; 12,288 tokens:
    # 0.18 after 16); lr 6e-3 diverges (negative explained variance).
    # 2,048 held-out tokens per corpus: 208 contexts in all, exactly the complete samples (101 + 107) of two
    # generation batches of SmolLM2's own text (128 samples each), so no third batch is generated.
    "demo": {
        "train_tokens": 24_576,
        "eval_tokens": 2_048,
        "expansion": 1,
        "train": {"k": 16, "lr": 3e-3, "batch_size": 256, "epochs": 16, "dead_tokens": 50_000},
    },
    "tiny": {
        "train_tokens": 2_048,
        "eval_tokens": 512,
        "ctx_len": 32,
        "expansion": 1,
        "train": {"k": 4, "lr": 3e-3, "batch_size": 128, "epochs": 2, "dead_tokens": 2_000},
    },
}


class CrossDataRow(BaseModel):
    """One SAE on one corpus's held-out text (saeval.analysis.matching.cross_data_metrics)."""

    trained_on: str
    evaluated_on: str
    sae: str
    n_tokens: int
    explained_variance: float | None = Field(description="1 - E||x - xhat||^2 / total variance (the core eval's)")
    explained_variance_faithfulsae: float | None = Field(description="FaithfulSAE's 1 - Var(x - xhat) / Var(x)")
    mse: float | None
    l2_loss: float | None = Field(description="mean squared error over all elements (FaithfulSAE)")
    ce_clean: float | None
    ce_sae: float | None
    ce_diff: float | None = Field(description="CE with the reconstruction spliced in minus clean CE")


class FaithfulMetrics(BaseModel):
    shared_ratio_corpus_seeds: float | None = Field(
        description="shared feature ratio of the two seeds trained on the corpus")
    shared_ratio_self_seeds: float | None = Field(
        description="shared feature ratio of the two seeds trained on own text")
    top1_ratio_corpus_seeds: float | None = Field(description="top-1 ratio of the two seeds trained on the corpus")
    top1_ratio_self_seeds: float | None = Field(description="top-1 ratio of the two seeds trained on own text")
    shared_ratio_across_corpora: float | None = Field(
        description="mean shared feature ratio of corpus vs own-text SAEs of different seeds")
    shared_ratio_same_seed: float | None = Field(
        description="largest shared ratio of corpus vs own-text SAEs of one seed (initialisation check)")
    undertrained: bool = Field(
        description="same-seed SAEs share 10 points more than any different-seed pair: still near initialisation")


class FaithfulDetails(BaseModel):
    corpora: list[str] = Field(description="the human corpus, then the self-generated text")
    sizes: dict[str, dict[str, int]] = Field(description="per corpus: training and held-out contexts")
    saes: dict[str, list[str]] = Field(description="per corpus: names of the two trained SAEs")
    train_config: TrainConfig = Field(description="the training config as used (d_sae = expansion x d_model)")
    cross_seed: dict[str, PairMatch]
    cross_corpus: list[PairMatch]
    same_seed_check: list[PairMatch]
    cross_data: list[CrossDataRow]
    timings: dict[str, float | None] = Field(description="seconds per phase")


class FaithfulResult(StudyResult[FaithfulConfig, FaithfulMetrics, FaithfulDetails]):
    pass

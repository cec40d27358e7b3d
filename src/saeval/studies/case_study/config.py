"""The case study's config and result types (torch-free: validated before any model loads)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from saeval.analysis.window_records import ActExample
from saeval.evals.embedding_score.config import EmbeddingConfig, check_explainer
from saeval.evals.self_explanation.config import SelfExplanationConfig
from saeval.studies.base import StudyConfig, StudyResult
from saeval.studies.records import MatchSummary


class CaseStudyConfig(StudyConfig):
    threshold: float = Field(0.7, ge=-1, le=1, description="cosine above which matched latents count as shared")
    top: int = Field(10, ge=0, description="best matched pairs studied")
    bottom: int | None = Field(None, ge=0, description="worst matched pairs studied; None: as many as top")
    match_method: Literal["auto", "dense", "sparse"] = Field(
        "auto", description="assignment: dense (exact), sparse (top-k candidates, for wide SAEs) or auto by size")
    window: int = Field(30, gt=0, description="tokens per window (the researcher's window length)")
    k_windows: int = Field(10, gt=0, description="top windows kept per criterion (mean, density, max)")
    ctx_len: int = Field(128, gt=1, description="context length of the windows pass (BOS included)")
    n_tokens: int = Field(1_000_000, gt=0,
                          description="corpus tokens scanned for windows (delphi caches 10M; SOTU holds ~2.1M)")
    batch_size: int = Field(8, gt=0, description="contexts per forward pass")
    explainer: str = Field("self", description="explanations scored by the embedding score: self | local | "
                                               "local:MODEL | openai:MODEL@BASE_URL")
    explain: SelfExplanationConfig = Field(default_factory=SelfExplanationConfig,
                                           description="self-explanation settings")
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig,
                                       description="embedding-score settings (model, window samples)")
    min_activating_windows: int | None = Field(
        None, gt=0, description="pairs are studied only when both latents have at least this many activating "
        "windows in the scanned tokens; None: embedding.n_test, plus embedding.n_explain_windows when an explainer "
        "model is shown windows, so every studied latent fills its embedding-score test set")

    def min_windows(self) -> int:
        """The activating windows each latent of a studied pair needs (min_activating_windows resolved)."""
        if self.min_activating_windows is not None:
            return self.min_activating_windows
        shown = self.embedding.n_explain_windows if self.explainer != "self" else 0
        return self.embedding.n_test + shown

    @field_validator("explainer")
    @classmethod
    def _check_explainer(cls, value: str) -> str:
        return check_explainer(value)


PRESETS: dict[str, dict] = {
    # Fewer scales, generations and corpus tokens. The contexts are core's and the embedding_score demo's (32,768
    # tokens of 128), so the forward to the hook is shared with them through the run's memo; the explanations use
    # the embedding score's template.
    "demo": {
        "n_tokens": 32_768,
        "explain": {"template": "meaning", "n_search_scales": 6, "n_generation_scales": 2, "generation_scales": "best",
                    "max_new_tokens": 16, "batch_size": 64},
        "embedding": {"n_test": 20, "n_random": 20, "reservoir": 200, "n_pool": 400},
    },
    "tiny": {
        "top": 2,
        "n_tokens": 2048,
        "ctx_len": 64,
        "window": 12,
        "k_windows": 3,
        "explain": {
            "n_search_scales": 3,
            "n_generation_scales": 1,
            "max_new_tokens": 4,
            "rep_hook": "blocks.1.hook_resid_pre",
            "probe_hook": "blocks.3.hook_resid_pre",
        },
        "embedding": {"n_test": 6, "n_random": 6, "n_quantiles": 3, "reservoir": 30, "n_pool": 60},
    },
}


class CaseStudyEntry(BaseModel):
    """One matched pair; each list holds (SAE A's latent, SAE B's latent)."""

    group: Literal["top", "bottom"] = Field(description="among the best or the worst matched pairs")
    rank: int = Field(description="0 = best (top) or worst (bottom)")
    similarity: float | None = Field(description="decoder cosine of the pair")
    indices: list[int]
    self_explanations: list[str]
    eleuthers: list[float | None] = Field(description="embedding-score AUROC of each latent's scored explanation")
    self_explanation_candidates: list[list[str]]
    scored_explanations: list[str]
    eleuther_notes: list[str]
    self_explanation_failed: list[bool]
    chosen_scales: list[float]
    max_selfsim: list[float]
    fired: list[bool]
    max_act: list[float]
    windows: list[dict[str, list[ActExample]]] = Field(description="per latent: top windows by mean, density, max")


class CaseStudyMetrics(BaseModel):
    shared_feature_ratio: float | None = Field(description="fraction of Hungarian-matched pairs above the threshold")
    top1_ratio: float | None = Field(description="fraction of B's latents whose best cosine to A exceeds the threshold")
    mean_matched_cosine: float | None = Field(description="mean decoder cosine over all matched pairs")
    n_pairs: int = Field(description="matched pairs studied")
    mean_auroc_top: float | None = Field(description="mean embedding-score AUROC of the latents of the top pairs")
    mean_auroc_bottom: float | None = Field(description="mean embedding-score AUROC of the bottom pairs' latents")


class CaseStudyDetails(BaseModel):
    match: MatchSummary
    hooks: list[str]
    n_tokens_scanned: int
    never_fired: list[list[int]] = Field(description="per SAE: studied latents that never fired")
    min_activating_windows: int | None = Field(
        None, description="activating windows each latent of a studied pair had at least (config.min_windows())")
    n_eligible_pairs: int | None = Field(
        None, description="matched pairs whose two latents both had that many (the pairs top and bottom come from)")
    explainer: str
    timings: dict[str, float | None] = Field(description="seconds per phase")
    entries: list[CaseStudyEntry]


class CaseStudyResult(StudyResult[CaseStudyConfig, CaseStudyMetrics, CaseStudyDetails]):
    pass

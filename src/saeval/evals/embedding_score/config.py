"""Embedding score's config and result types (torch-free: validated before any model loads)."""

from __future__ import annotations

from pydantic import BaseModel, Field, NonNegativeInt, field_validator

from saeval.evals.base import EvalConfig
from saeval.evals.self_explanation.config import SelfExplanationConfig
from saeval.results import EvalResult


def check_explainer(spec: str) -> str:
    """``self``, ``local``, ``local:MODEL`` or ``openai:MODEL@BASE_URL`` (see saeval.llm.chat_model)."""
    if spec in ("self", "local") or spec.startswith("local:") or (spec.startswith("openai:") and "@" in spec):
        return spec
    raise ValueError(f"unknown explainer {spec!r}: use self, local, local:MODEL or openai:MODEL@BASE_URL")


class EmbeddingConfig(EvalConfig):
    embedding_model: str = Field(
        "all-MiniLM-L6-v2", description="SentenceTransformer name or folder (offline default; the paper: stella)")
    n_test: int = Field(50, gt=0, description="activating windows scored, drawn by quantile (delphi)")
    n_quantiles: int = Field(10, gt=0, description="activation quantiles the activating windows are drawn from")
    n_random: int = Field(50, gt=0, description="random non-activating windows scored (delphi)")
    window: int = Field(32, gt=0, description="tokens per window (delphi's example length)")
    ctx_len: int = Field(129, gt=1, description="context length: BOS + 4 windows of 32")
    n_tokens: int = Field(1_000_000, gt=0, description="corpus tokens scanned for windows")
    reservoir: int = Field(1000, gt=0, description="uniform sample of activating windows per latent (quantiles' pool)")
    n_pool: int = Field(2000, gt=0, description="random windows checked for non-activation")
    batch_size: int = Field(8, gt=0, description="contexts per forward pass")
    explainer: str = Field("self", description="self (self-explanation) | local | local:MODEL | openai:MODEL@BASE_URL")
    n_explain_windows: int = Field(10, gt=0, description="top windows (by max) shown to an explainer chat model")
    explain: SelfExplanationConfig = Field(
        default_factory=SelfExplanationConfig,
        description="self-explanation settings for latents the self_explanation eval did not explain")
    latents: list[NonNegativeInt] | None = Field(
        None, description="latents to score; None: those of self_explanation, or n_latents live ones at random")
    n_latents: int = Field(32, gt=0, description="latents drawn at random when neither latents nor explanations exist")

    @field_validator("explainer")
    @classmethod
    def _check_explainer(cls, value: str) -> str:
        return check_explainer(value)


class LatentScore(BaseModel):
    latent: int
    explanation: str
    auroc: float | None = Field(description="AUROC of activating vs non-activating windows; None when unscored")
    n_activating: int
    n_non_activating: int
    note: str = Field("", description="why the latent has no AUROC")
    activating_windows: list[int] = Field([], description="window ids (see WindowsResult.window_tokens)")
    non_activating_windows: list[int] = []
    activating_similarity: list[float] = []
    non_activating_similarity: list[float] = []


class EmbeddingMetrics(BaseModel):
    n_latents: int = Field(description="latents considered")
    n_scored: int = Field(description="latents with an AUROC")
    n_never_fired: int = Field(description="latents that never fired on the scanned tokens")
    mean_auroc: float | None = Field(description="mean AUROC over scored latents")
    median_auroc: float | None = Field(description="median AUROC over scored latents")
    frac_auroc_above_0_5: float | None = Field(description="fraction of scored latents above chance")


class EmbeddingDetails(BaseModel):
    explainer: str
    embedding_model: str
    n_tokens_scanned: int
    scores: list[LatentScore]


class EmbeddingResult(EvalResult[EmbeddingConfig, EmbeddingMetrics, EmbeddingDetails]):
    pass


def requires(config: EmbeddingConfig) -> tuple[str, ...]:
    """Given latents need nothing; self-explanations reuse the self_explanation eval's; otherwise core's
    densities pick live latents."""
    if config.latents is not None:
        return ()
    return ("self_explanation",) if config.explainer == "self" else ("core",)

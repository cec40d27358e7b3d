"""Autointerp's config and result types (torch-free: validated before any model loads)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, NonNegativeInt, field_validator, model_validator

from saeval.evals.base import EvalConfig
from saeval.evals.embedding_score.config import check_explainer
from saeval.evals.self_explanation.config import SelfExplanationConfig
from saeval.results import EvalResult

ScorerName = Literal["detection", "fuzzing", "embedding"]


class AutointerpConfig(EvalConfig):
    explainer: str = Field(
        "local", description="who writes the explanations: local (the host model) | local:MODEL | "
        "openai:MODEL@BASE_URL | self (self-explanation, reusing the self_explanation eval's results)")
    judge: str | None = Field(
        None, description="chat model of the detection and fuzzing judges: local | local:MODEL | "
        "openai:MODEL@BASE_URL; None: the explainer's model (local when the explainer is self)")
    scorers: list[ScorerName] = Field(
        ["detection", "fuzzing"], min_length=1,
        description="scorers fed the same explanations: detection, fuzzing (delphi), embedding (delphi)")
    judge_format: Literal["list", "each"] | None = Field(
        None, description="list: all of a latent's examples in one prompt, the judge lists the numbers "
        "(SAEBench); each: one Yes/No prompt per example (delphi's n_examples_shown=1), answered by comparing "
        "the Yes and No probabilities when the judge is local; None: list for an endpoint, each for a local "
        "judge (a small model cannot write a usable list)")
    n_latents: int = Field(1000, gt=0, description="latents scored, drawn at random among those firing enough")
    latents: list[NonNegativeInt] | None = Field(
        None, description="latents to score (no firing-count filter, as SAEBench's override_latents)")
    min_count: int = Field(
        15, ge=0, description="a latent is drawn only if it fires on more than this many scanned tokens "
        "(SAEBench's dead_latent_threshold)")
    n_tokens: int = Field(2_000_000, gt=0, description="corpus tokens scanned for windows (SAEBench: 2M)")
    ctx_len: int = Field(128, gt=1, description="context length (SAEBench: 128)")
    window: int = Field(21, gt=0, description="tokens per window (SAEBench: +-10 around the activation)")
    n_top_explain: int = Field(10, ge=0, description="top windows shown to the explainer")
    n_iw_explain: int = Field(5, ge=0, description="importance-weighted windows shown to the explainer")
    n_top_score: int = Field(2, ge=0, description="top windows scored (held out from the explainer)")
    n_iw_score: int = Field(2, ge=0, description="importance-weighted windows scored")
    n_random: int = Field(10, gt=0, description="random non-activating windows scored")
    act_threshold_frac: float = Field(
        0.01, ge=0, lt=1, description="a token counts as active above this fraction of the latent's top "
        "activation (marked for the explainer and fuzzing; a scored window is activating if any token is)")
    fuzz_type: Literal["default", "active"] = Field(
        "default", description="fuzzing's wrong examples: default: non-activating windows with random tokens "
        "marked; active: activating windows with random inactive tokens marked (delphi)")
    n_pool: int = Field(2000, gt=0, description="random windows checked for non-activation")
    batch_size: int = Field(8, gt=0, description="contexts per forward pass of the windows pass")
    max_explanation_tokens: int = Field(30, gt=0, description="tokens of an explanation (SAEBench: 30)")
    max_judge_tokens: int = Field(48, gt=0, description="tokens of a judge's reply in the list format")
    embedding_model: str = Field(
        "all-MiniLM-L6-v2", description="SentenceTransformer of the embedding scorer (name or folder)")
    explain: SelfExplanationConfig = Field(
        default_factory=SelfExplanationConfig,
        description="self-explanation settings for latents the self_explanation eval did not explain")

    @field_validator("explainer")
    @classmethod
    def _check_explainer(cls, value: str) -> str:
        return check_explainer(value)

    @field_validator("judge")
    @classmethod
    def _check_judge(cls, value: str | None) -> str | None:
        if value == "self":
            raise ValueError("a judge must be a chat model: local, local:MODEL or openai:MODEL@BASE_URL")
        return value if value is None else check_explainer(value)

    @model_validator(mode="after")
    def _enough_windows(self) -> AutointerpConfig:
        if self.n_top_explain + self.n_iw_explain == 0:
            raise ValueError("the explainer needs windows: n_top_explain + n_iw_explain must be at least 1")
        if self.n_top_score + self.n_iw_score == 0:
            raise ValueError("scoring needs activating windows: n_top_score + n_iw_score must be at least 1")
        return self

    def judge_spec(self) -> str:
        return self.judge or ("local" if self.explainer == "self" else self.explainer)

    def resolved_judge_format(self) -> str:
        return self.judge_format or ("each" if self.judge_spec().startswith("local") else "list")


class LLMUsage(BaseModel):
    model: str
    n_calls: int = Field(0, description="messages sent (an endpoint's cached replies included: they cost nothing)")
    n_failed: int = Field(0, description="messages without a usable answer")
    prompt_tokens: int = Field(0, description="message tokens, counted with the host's tokenizer")
    completion_tokens: int = Field(0, description="reply tokens, counted with the host's tokenizer")


class ScoredExample(BaseModel):
    window: int = Field(description="window id (saeval.analysis.windows.WindowsResult.window_tokens)")
    kind: Literal["top", "iw", "random"]
    label: bool = Field(description="what the judge should say (detection: fires; fuzzing: marking correct)")
    prediction: bool | None = Field(description="what it said; None when the reply was unusable")
    p_yes: float | None = Field(None, description="the judge's probability of yes (local judge, each format)")
    similarity: float | None = Field(None, description="embedding scorer: cosine to the explanation query")


class ScorerResult(BaseModel):
    """One scorer's verdict on one latent's explanation."""

    scorer: str
    latent: int
    score: float | None = Field(description="balanced accuracy (detection, fuzzing) or AUROC (embedding)")
    accuracy: float | None = Field(None, description="fraction of the judged examples judged right")
    auroc: float | None = Field(None, description="AUROC of the judge's P(yes), or of the embedding similarity")
    n_examples: int = 0
    n_failed: int = Field(0, description="examples without a usable judgement")
    note: str = Field("", description="why there is no score")
    examples: list[ScoredExample] = []
    replies: list[str] = Field([], description="the judge's raw replies (list format)")


class LatentAutointerp(BaseModel):
    latent: int
    n_active_tokens: int = Field(description="scanned tokens where the latent fired")
    explanation: str
    note: str = Field("", description="why the latent was not explained or scored")
    explaining_windows: list[int] = Field([], description="window ids shown to the explainer")
    scores: dict[str, ScorerResult] = {}


class AutointerpMetrics(BaseModel):
    autointerp_score: float | None = Field(
        description="SAEBench: mean over latents of the fraction of the detection examples (n_top_score top, "
        "n_iw_score importance-weighted, n_random random) the judge classified right")
    autointerp_std_dev: float | None = Field(description="standard deviation of that fraction over latents")
    detection_balanced_accuracy: float | None = Field(description="mean over latents of detection's balanced accuracy")
    fuzzing_balanced_accuracy: float | None = Field(description="mean over latents of fuzzing's balanced accuracy")
    embedding_auroc: float | None = Field(description="mean over latents of the embedding scorer's AUROC")
    detection_auroc: float | None = Field(
        description="mean AUROC of the judge's P(yes) in detection (each format, local judge): threshold-free")
    fuzzing_auroc: float | None = Field(description="the same for fuzzing")
    n_latents: int = Field(description="latents chosen")
    n_explained: int = Field(description="latents with a non-empty explanation")
    n_scored: int = Field(description="latents with a score from the first scorer")
    n_judge_calls: int = Field(description="messages sent to the judge")
    n_explainer_calls: int = Field(description="messages sent to the explainer")


class AutointerpDetails(BaseModel):
    explainer: str
    judge: str
    judge_format: str
    n_tokens_scanned: int
    n_candidates: int = Field(description="latents scanned to find n_latents that fire more than min_count")
    judge_note: str = Field("", description="a caveat on the judge for readers: set when it is a small local model")
    usage: dict[str, LLMUsage] = Field(description="explainer and judge: calls and tokens")
    latents: list[LatentAutointerp]


class AutointerpResult(EvalResult[AutointerpConfig, AutointerpMetrics, AutointerpDetails]):
    pass


def requires(config: AutointerpConfig) -> tuple[str, ...]:
    """Given latents need nothing; self-explanations reuse the self_explanation eval's (and its latents);
    otherwise core's densities narrow the draw to latents expected to fire more than min_count."""
    if config.latents is not None:
        return ()
    return ("self_explanation",) if config.explainer == "self" else ("core",)

"""Self-explanation's config and result types (torch-free: validated before any model loads)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field, NonNegativeInt, model_validator

from saeval.evals.base import EvalConfig
from saeval.results import EvalResult

TEMPLATES: dict[str, tuple[str, str]] = {
    # (user message, start of the assistant's reply); the reply is continued by the model.
    "repeat": ('Repeat "X" four times exactly as it is written.', '1. "X"\n2. "X"\n3. "X"\n4. "'),
    "meaning": ('What is the meaning of the word "X"?', 'The meaning of the word "X" is "'),
}
PLACEHOLDER = "X"
# The reference's filter (rate_new.py: max self-similarity > 0.01) on its self-similarity, which divides by the
# norm of the whole batch of PICK_BATCH = 64 sweep residuals: with rows of about equal norm that is sqrt(64) = 8
# times a row's norm, so its 0.01 is 0.08 in cosine units. Measured on SmolLM2-135M with a demo SAE (8 random
# latents, 64 scales): max cosine / max reference value = 7.6 to 8.4, and the two filters agreed on all 8.
REFERENCE_THRESHOLD = 0.01
REFERENCE_BATCH = 64
COSINE_THRESHOLD = REFERENCE_THRESHOLD * math.sqrt(REFERENCE_BATCH)


class SelfExplanationConfig(EvalConfig):
    template: Literal["repeat", "meaning"] = Field(
        "repeat", description="chat prompt whose placeholder X holds the latent's direction")
    rep_hook: str = Field("blocks.2.hook_resid_pre",
                          description="residual hook where X is replaced (the paper's REP_LAYER 2)")
    probe_hook: str | None = Field(
        None, description="hook read for self-similarity; default resid_pre of block round(16/18 * n_layers)")
    min_scale: float = Field(0.0, ge=0, description="smallest injection scale of the sweep")
    max_scale: float = Field(200.0, gt=0, description="largest injection scale of the sweep")
    n_search_scales: int = Field(64, gt=0, description="scales of the self-similarity / entropy sweep")
    n_generation_scales: int = Field(32, gt=0, description="scales at which explanations are generated")
    generation_scales: Literal["grid", "best"] = Field(
        "grid", description="grid: linspace(min, max) as in the paper; best: the best-ranked search scales")
    generations_per_scale: int = Field(1, gt=0, description="sampled explanations per generation scale")
    max_new_tokens: int = Field(64, gt=0, description="tokens generated per explanation")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of the generations (0: greedy)")
    selfsim: Literal["cosine", "reference"] = Field(
        "cosine", description="cosine: per-row cosine of the probe residual with the decoder row, scale at the "
        "argmax, each text scored at its nearest search scale; reference: micrlhf-progress's quirks (divides by "
        "the norm of the whole sweep batch, scale at argmax(selfsim[1:]) - 1, text i scored at sweep index "
        "int(i / len(texts) * len(metric))), for comparison with its numbers")
    selfsim_threshold: float | None = Field(
        None, description="a latent whose self-similarity never exceeds this is flagged as failed; None: 0.01 x "
        "sqrt(64) = 0.08 in cosine mode (the reference's 0.01 on its batch-normalised values, in cosine units), "
        "0.01 in reference mode")
    alpha: float = Field(0.4, ge=0, le=1,
                         description="weight of self-similarity against cross-entropy when ranking generations")
    n_best: int = Field(3, gt=0, description="explanations kept per latent, best first")
    batch_size: int = Field(32, gt=0, description="sequences per forward (sweep) or generation batch")
    latents: list[NonNegativeInt] | None = Field(
        None, description="latents to explain; None: n_latents at random among live ones (core densities)")
    n_latents: int = Field(32, gt=0, description="latents drawn at random when latents is None")

    @model_validator(mode="after")
    def _scale_range(self) -> SelfExplanationConfig:
        if self.max_scale <= self.min_scale:
            raise ValueError(f"max_scale ({self.max_scale}) must exceed min_scale ({self.min_scale})")
        if self.selfsim == "reference" and self.generation_scales != "grid":
            # Its int(i / len(texts) * len(metric)) assumes the texts follow the grid's order.
            raise ValueError("selfsim='reference' maps texts to sweep metrics by their order on the grid: use "
                             "generation_scales='grid'")
        if self.selfsim == "reference" and self.n_search_scales < 2:
            raise ValueError("selfsim='reference' picks the scale by argmax(selfsim[1:]) - 1: use "
                             "n_search_scales >= 2")
        return self

    def threshold(self) -> tuple[float, str]:
        """The failure threshold in use and where it comes from."""
        if self.selfsim_threshold is not None:
            return self.selfsim_threshold, "set in the config (selfsim_threshold)"
        if self.selfsim == "reference":
            return REFERENCE_THRESHOLD, "the reference's 0.01 (rate_new.py), on its batch-normalised values"
        return COSINE_THRESHOLD, (
            f"the reference's {REFERENCE_THRESHOLD:g} x sqrt({REFERENCE_BATCH}): it divides by the norm of a "
            f"batch of {REFERENCE_BATCH} residuals, about sqrt({REFERENCE_BATCH}) times a row's norm, so its "
            f"{REFERENCE_THRESHOLD:g} is about {COSINE_THRESHOLD:g} in cosine units")


class ScaleSweep(BaseModel):
    scales: list[float] = Field(description="the search scales")
    selfsim: list[float] = Field(description="self-similarity at each scale, minus its value at scale 0 "
                               "(reference mode: at the sweep's first scale)")
    entropy: list[float] = Field(description="next-token entropy at each scale, minus its value at scale 0")
    crossent: list[float] = Field(description="cross-entropy against the mean-embedding baseline at each scale")
    chosen_scale: float | None = Field(
        description="the scale of maximal self-similarity (reference mode: argmax(selfsim[1:]) - 1)")
    max_selfsim: float | None = Field(
        description="self-similarity at the chosen scale (cosine mode: the sweep's maximum)")
    entropy_at_chosen: float | None = Field(description="entropy difference at the chosen scale")
    failed: bool = Field(description="the sweep's self-similarity never exceeded the threshold")


class Generation(BaseModel):
    scale: float | None
    text: str = Field(description="the completion")
    explanation: str = Field(description="repeat: the completion up to its closing quote or line end; meaning: "
                             "its first line (see explain.extract_explanation)")
    metric: float | None = Field(description="ranking metric at the scale (higher is better)")


class SelfExplanation(BaseModel):
    latent: int
    sweep: ScaleSweep
    generations: list[Generation]
    best: list[str] = Field(description="the n_best distinct explanations, best first")

    @property
    def explanation(self) -> str:
        return self.best[0] if self.best else ""


class SelfExplanationMetrics(BaseModel):
    n_latents: int = Field(description="latents explained")
    frac_failed: float | None = Field(
        description="fraction of latents whose self-similarity never passed the threshold")
    mean_max_selfsim: float | None = Field(description="mean over latents of the self-similarity at the chosen "
                                           "scale (cosine mode: the maximal one)")
    mean_chosen_scale: float | None = Field(description="mean over latents of the scale of maximal self-similarity")
    mean_entropy_at_chosen: float | None = Field(description="mean entropy difference at the chosen scale")
    frac_with_explanation: float | None = Field(
        description="fraction of latents with at least one non-empty explanation")


class SelfExplanationDetails(BaseModel):
    latents: list[int]
    probe_hook: str
    prompt: str
    explanations: list[SelfExplanation]
    selfsim: str = Field("cosine", description="the self-similarity mode (config.selfsim)")
    selfsim_threshold: float | None = Field(None, description="the failure threshold in use")
    selfsim_threshold_derivation: str = Field("", description="where that threshold comes from")
    departures: list[str] = Field([], description="where this run departs from the reference code, and why")


class SelfExplanationResult(EvalResult[SelfExplanationConfig, SelfExplanationMetrics, SelfExplanationDetails]):
    pass


# Preset sizes shared with the embedding_score eval, so that one run computes each explanation once (memo).
# The demo asks "What is the meaning of the word X?" (the paper's other template): the repeat template makes the
# model repeat one word, the meaning template explains in a phrase, which the embedding score can match against
# text in the first dozen tokens. One generation batch holds every (latent, scale) of the embedding score's 32
# latents: generation, whose per-step cost hardly grows with the batch on CPU, is the larger part of the cost.
DEMO_EXPLAIN = {"template": "meaning", "n_search_scales": 12, "n_generation_scales": 2, "generation_scales": "best",
                "max_new_tokens": 16, "batch_size": 64}
TINY_EXPLAIN = {
    "n_search_scales": 4,
    "n_generation_scales": 2,
    "max_new_tokens": 6,
    "rep_hook": "blocks.1.hook_resid_pre",
    "probe_hook": "blocks.3.hook_resid_pre",
}


def requires(config: SelfExplanationConfig) -> tuple[str, ...]:
    """Core's densities pick live latents; given latents need nothing."""
    return () if config.latents is not None else ("core",)

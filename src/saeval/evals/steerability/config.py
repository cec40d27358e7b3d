"""Steerability eval config and result types, and the strength checks the CLI runs before any model loads.
No torch here."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from saeval.errors import SaevalError
from saeval.evals.base import EvalConfig
from saeval.results import EvalResult

PAPER_STRENGTHS = [-20.0, -5.0, 0.0, 5.0, 10.0, 20.0, 50.0, 150.0]


class SteerabilityConfig(EvalConfig):
    strengths: list[float] = Field(PAPER_STRENGTHS, min_length=1, description="steering strengths, distinct and "
                                   "including the baseline 0 (the post's sweep: 0, .5, 1, 5, 10, 100)")
    summary_strength: float | None = Field(None, description="strength of the SAE summary, one of strengths "
                                           "(None: the largest; paper: 150)")
    n_latents: Annotated[int, Field(gt=0)] | None = Field(None, description="latents sampled at random (None: "
                                                          "d_sae // 20; paper: 2457 of 49152)")
    latents: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="explicit latent ids instead of "
                                                              "sampling")
    n_inputs: int = Field(192, gt=0, description="images (paper: 6 batches x 32 ImageNet val) or prompts")
    batch_size: int = Field(32, gt=0, description="inputs per prefix pass")
    max_rows: int = Field(256, gt=0, description="sequences per stacked forward from the hook on (latents x "
                          "strengths x inputs)")
    vocab: str = Field("default", description="concept vocabulary: 'default' (WordNet common words) or a file "
                       "with one word per line")
    vocab_size: int = Field(5000, gt=0, description="first lines of the vocabulary (paper: the first 5000 of "
                            "CLIP-Dissect's list)")
    softmax_scale: Annotated[float, Field(gt=0)] | Literal["model"] | None = Field(
        None, description="softmax scale of the readout scores (None: 100 for CLIP as in the paper, 1 for LMs; "
        "'model': CLIP's exp(logit_scale))")
    steerable_threshold: float = Field(0.1, ge=0, description="a latent is steerable when S exceeds this")
    top_k_concepts: int = Field(5, gt=0, description="promoted and demoted concepts kept per latent")
    # language models
    prompt_len: int = Field(32, ge=2, description="LMs: tokens per prompt (BOS + corpus text)")
    readout: Literal["last", "all"] = Field("last", description="LMs: next-token distribution at the last "
                                            "position or at every ordinary one")
    steer_special_tokens: bool = Field(False, description="LMs: also steer BOS (an attention sink the SAE never "
                                       "saw)")
    lm_concepts: Literal["single_token", "first_token"] = Field(
        "single_token", description="LMs: concepts are the words that are one token (' word'), or every word by "
        "its first token (shared pieces merge)")
    # CLIP
    images: str = Field("fashion-mnist", description="CLIP: images to steer (see data/images.load_images; the "
                        "paper used ImageNet val: pass its folder)")
    text_template: str = Field("{}", description="CLIP: text prompt of each concept word")


def check_strengths(config: SteerabilityConfig) -> tuple[list[float], float]:
    """The sorted strengths and the summary strength, or a one-line error."""
    strengths = [float(s) for s in config.strengths]
    if not strengths or not all(math.isfinite(s) for s in strengths) or len(set(strengths)) != len(strengths):
        raise SaevalError(f"strengths must be distinct finite numbers, got {config.strengths}")
    if 0.0 not in strengths:
        raise SaevalError(f"strengths {strengths} lack the baseline 0 (latent switched off): add 0 to the sweep")
    summary = max(strengths) if config.summary_strength is None else float(config.summary_strength)
    if summary not in strengths:
        raise SaevalError(f"summary_strength {summary} is not one of the strengths {strengths}")
    return sorted(strengths), summary


class SteerabilityMetrics(BaseModel):
    summary_strength: float | None = Field(description="strength the other metrics are taken at")
    n_latents: int = Field(description="latents steered")
    n_steerable: int = Field(description="latents whose steerability S exceeds the threshold")
    frac_steerable: float | None = Field(description="fraction of latents that are steerable")
    n_distinct_top_concepts: int = Field(description="distinct most-promoted concepts among the steerable latents")
    n_distinct_top_concepts_all: int = Field(description="distinct most-promoted concepts among all latents")
    mean_power: float | None = Field(description="mean power: the largest probability gain of any concept")
    mean_steerability: float | None = Field(description="mean steerability S: sum over concepts of the squared mean "
                                     "probability shift")
    mean_s_over_p: float | None = Field(description="mean per-latent S / power over latents with positive power")
    mean_steerability_signed: float | None = Field(description="mean signed S: sum of Delta |Delta|")
    mean_aggregate_prob_diff: float | None = Field(
        description="mean probability mass moved (half the L1 norm of Delta)")
    mean_logit_power: float | None = Field(description="mean largest logit gain of any concept")
    mean_logit_steerability: float | None = Field(description="mean sum over concepts of the squared mean logit shift")
    mean_polysemanticity: float | None = Field(description="mean distance of the Delta-weighted concept direction from "
                                        "the vocabulary's mean direction")


class LatentSteering(BaseModel):
    latent: int
    top_concept: str  # most promoted concept at the summary strength
    # one value per strength, in the order of details.strengths
    power: list[float]
    steerability: list[float]
    steerability_signed: list[float]
    aggregate_prob_diff: list[float]
    logit_power: list[float]
    logit_steerability: list[float]
    logit_steerability_signed: list[float]
    polysemanticity: list[float]
    top_concept_prob: list[float]  # mean probability of top_concept (its unsteered value: details)
    promoted: list[tuple[str, float | None]]  # at the summary strength
    demoted: list[tuple[str, float | None]]


class SteerabilityDetails(BaseModel):
    host: str
    inputs: str
    n_inputs: int
    readout: str
    n_readout_positions: int
    vocab: str
    vocab_size: int
    # words sharing a first token with an earlier word (LMs), or whose first token is a space
    n_vocab_dropped: int
    softmax_scale: float | None
    strengths: list[float]
    summary_strength: float | None
    unsteered_top: list[tuple[str, float | None]]
    mean_steerability_by_strength: list[float]
    frac_steerable_by_strength: list[float]
    mean_power_by_strength: list[float]
    n_prefix_sequences: int  # sequences run up to the hook
    n_suffix_sequences: int  # sequences run from the hook on (all variants plus the unsteered baseline)
    seconds_prefix: float | None
    seconds_sweep: float | None
    latents: list[LatentSteering]


class SteerabilityResult(EvalResult[SteerabilityConfig, SteerabilityMetrics, SteerabilityDetails]):
    pass

"""Records the studies share (torch-free): the summary of a feature matching between two SAEs."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Histogram(BaseModel):
    counts: list[int]
    edges: list[float]


class MatchSummary(BaseModel):
    """``MatchResult.summary()`` of saeval.analysis.matching, typed."""

    shared_feature_ratio: float | None = Field(description="fraction of Hungarian-matched pairs above the threshold")
    top1_ratio: float | None = Field(
        description="fraction of SAE-2 latents whose best SAE-1 cosine exceeds the threshold")
    threshold: float | None
    method: str = Field(description="dense, or sparse(k=..) for wide SAEs")
    exact: bool = Field(description="the assignment is provably optimal for the dense problem")
    optimality_gap: float | None = Field(description="bound on how far the summed cosine is below the optimum")
    n_a: int
    n_b: int
    n_pairs: int
    mean_matched_cosine: float | None
    matched_cosine_histogram: Histogram | None = None
    seconds: float | None = None


class PairMatch(MatchSummary):
    sae_a: str
    sae_b: str

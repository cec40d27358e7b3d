"""SHIFT's config and typed result (light: no torch)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from saeval.errors import SaevalError
from saeval.evals.scr.config import TOP_EXAMPLES, PairConfig, pair_preflight
from saeval.results import EvalResult

SHIFT_K = (2, 5, 10, 20)  # the K of the typed shift_threshold_K metrics


class SHIFTConfig(PairConfig):
    n_values: list[Annotated[int, Field(ge=1)]] = Field(list(SHIFT_K), min_length=1,
                                                        description="candidate counts K of the shift_threshold_K "
                                                                    "curve (only the top K candidates considered)")
    n_candidates: int = Field(20, ge=1, description="top latents of the biased probe by |attribution| that the "
                                                    "judge sees")
    n_evidence: int = Field(5, ge=1, le=TOP_EXAMPLES, description="top activating windows shown per latent")
    window_before: int = Field(12, ge=0, description="tokens shown before the most active token of a window")
    window_after: int = Field(4, ge=0, description="tokens shown after the most active token of a window")
    explainer: str = Field("local", description="who explains each latent from its windows: a chat model (local, "
                                                "local:MODEL, openai:MODEL@URL), tokens or none")
    explain_max_tokens: int = Field(24, gt=0, description="longest explanation a chat model may write, in tokens")
    judge: str = Field("llm:local", description="who judges whether a latent concerns the spurious attribute: "
                                                "llm:local, llm:local:MODEL, llm:openai:MODEL@URL, embedding or "
                                                "embedding:PATH")
    spurious: Literal["auto", "c1", "c2"] = Field("auto", description="the spurious attribute: auto = the one "
                                                                      "SCR's reported direction removes")
    max_failed_fraction: float = Field(0.0, ge=0, le=1, description="share of failed judgements above which "
                                                                    "shift_score is null")
    self_explanation: bool = Field(False, description="also hand the judge each latent's self-explanation "
                                                      "(self_explanation eval)")
    self_explanation_config: dict[str, Any] = Field({}, description="self_explanation eval config fields for "
                                                                    "those self-explanations")


def self_explanation_config(config: SHIFTConfig):
    """The self_explanation eval's config that SHIFT's self-explanations use, validated with one-line errors."""
    from saeval.evals.base import validate_config
    from saeval.evals.self_explanation.config import SelfExplanationConfig

    return validate_config("shift.self_explanation_config", SelfExplanationConfig, config.self_explanation_config)


def check_shift_config(config: SHIFTConfig) -> None:
    if max(config.n_values) > config.n_candidates:
        raise SaevalError(f"shift.n_values {config.n_values} go beyond n_candidates {config.n_candidates}; "
                          "lower them or raise n_candidates")
    if config.self_explanation:
        self_explanation_config(config)


def preflight(config: SHIFTConfig) -> None:
    check_shift_config(config)
    pair_preflight("shift", config)


def _at(k: int) -> Any:
    return Field(None, description=f"SHIFT score when only the top {k} candidates may be ablated (those judged "
                                   "spurious)")


def _std(key: str) -> Any:
    return Field(None, description=f"sample std of {key} over seeds (null with one seed)")


class SHIFTMetrics(BaseModel):
    """Averaged over pairs and datasets, then seeds. shift_threshold_K at other K are in ``details.by_n``."""

    shift_score: float | None = Field(description="(A_abl - A_base) / (A_oracle - A_base) of the biased probe on "
                                                  "the target attribute after ablating the candidates judged "
                                                  "spurious; null when too many judgements failed")
    shift_score_partial: float | None = Field(description="the same score from the judgements that did not fail")
    shift_ablate_all_candidates: float | None = Field(description="the score when every candidate is ablated, "
                                                                  "no judge")
    n_candidates: int = Field(description="candidates judged per pair (mean over pairs and seeds, rounded)")
    n_judged_spurious: int = Field(description="candidates judged spurious per pair (mean, rounded)")
    n_failed_judgements: int = Field(description="failed judgements per pair (mean, rounded); never ablated")
    judge_agreement_with_probes: float | None = Field(description="share of judgements agreeing with the probe "
                                                                  "reference label (spurious when the normalised "
                                                                  "|attribution| to the spurious oracle is larger)")
    shift_threshold_2: float | None = _at(2)
    shift_threshold_5: float | None = _at(5)
    shift_threshold_10: float | None = _at(10)
    shift_threshold_20: float | None = _at(20)

    shift_score_std: float | None = _std("shift_score")
    shift_score_partial_std: float | None = _std("shift_score_partial")
    shift_ablate_all_candidates_std: float | None = _std("shift_ablate_all_candidates")
    n_candidates_std: float | None = _std("n_candidates")
    n_judged_spurious_std: float | None = _std("n_judged_spurious")
    n_failed_judgements_std: float | None = _std("n_failed_judgements")
    judge_agreement_with_probes_std: float | None = _std("judge_agreement_with_probes")
    shift_threshold_2_std: float | None = _std("shift_threshold_2")
    shift_threshold_5_std: float | None = _std("shift_threshold_5")
    shift_threshold_10_std: float | None = _std("shift_threshold_10")
    shift_threshold_20_std: float | None = _std("shift_threshold_20")


class SHIFTDetails(BaseModel):
    mode: str
    quirks: dict[str, Any] = Field(description="which SAEBench quirks this mode keeps")
    judge: str = Field(description="the judge that ran")
    explainer: str = Field(description="who wrote the explanations the judge read")
    pairs: dict[str, Any] = Field(description="per (dataset, pair): the question, every judgement with its "
                                              "evidence and probe reference, sanity checks, scores")
    per_seed: dict[str, dict[str, float | None]] = Field(
        description="every metric (all K) per seed, averaged over pairs")
    by_n: dict[str, float | None] = Field({}, description="shift_threshold_K at K outside 2, 5, 10, 20")
    setup_seconds: float | None
    sae_seconds: float | None
    judge_seconds: float | None


class SHIFTResult(EvalResult[SHIFTConfig, SHIFTMetrics, SHIFTDetails]):
    pass

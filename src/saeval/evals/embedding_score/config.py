"""Embedding score's config and result types (torch-free: validated before any model loads)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, NonNegativeInt, field_validator, model_validator

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
    selection: Literal["saeval", "delphi"] = Field(
        "saeval", description="saeval: latents drawn among those with min_activating_windows (default: a test "
        "set's worth), explainer shown its top windows by max; delphi: delphi's sampler (latents drawn among those "
        "with delphi_min_examples activating windows, given latents with fewer skipped, "
        "explainer shown delphi_n_explain windows sampled by quantile), its train/test leak fixed")
    delphi_min_examples: int = Field(
        200, gt=0, description="selection=delphi: fewest activating windows a scored latent has "
        "(delphi's min_examples)")
    delphi_n_explain: int = Field(
        40, gt=0, description="selection=delphi: windows shown to an explainer chat model, drawn by activation "
        "quantile from the reservoir (delphi's n_examples_train, train_type quantiles)")
    explain: SelfExplanationConfig = Field(
        default_factory=SelfExplanationConfig,
        description="self-explanation settings for latents the self_explanation eval did not explain")
    latents: list[NonNegativeInt] | None = Field(
        None, description="latents to score; None: n_latents drawn at random (seeded) among the latents with at "
        "least min_activating_windows activating windows in the scanned tokens, self_explanation's latents first")
    n_latents: int = Field(32, gt=0, description="latents drawn when latents is None")
    min_activating_windows: int | None = Field(
        None, gt=0, description="fewest activating windows a drawn latent has in the scanned tokens; None: n_test "
        "plus the windows an explainer model is shown (n_explain_windows; delphi_n_explain when selection=delphi), "
        "so every drawn latent fills its test set; selection=delphi: delphi_min_examples (delphi's min_examples)")
    n_bootstrap: int = Field(
        10_000, ge=100, description="bootstrap resamples of the scored latents' AUROCs for the 95% percentile "
        "interval of the mean AUROC (seeded)")

    def min_windows(self) -> int:
        """The activating windows a drawn latent needs (min_activating_windows resolved)."""
        if self.min_activating_windows is not None:
            return self.min_activating_windows
        if self.selection == "delphi":
            return self.delphi_min_examples
        if self.explainer == "self":  # self-explanation sees no window: the test set is all it needs
            return self.n_test
        return self.n_test + self.n_explain_windows

    @field_validator("explainer")
    @classmethod
    def _check_explainer(cls, value: str) -> str:
        return check_explainer(value)

    @model_validator(mode="after")
    def _reservoir_holds_both_sets(self) -> EmbeddingConfig:
        # delphi mode takes the explaining and the scored windows from one reservoir, disjoint: it must hold both.
        need = self.delphi_n_explain + self.n_test
        if self.selection == "delphi" and self.explainer != "self" and self.reservoir < need:
            raise ValueError(
                f"selection=delphi draws delphi_n_explain + n_test = {need} windows from the reservoir: "
                f"raise reservoir to at least {need} (it is {self.reservoir})")
        return self


class LatentScore(BaseModel):
    latent: int
    explanation: str
    auroc: float | None = Field(description="AUROC of activating vs non-activating windows; None when unscored")
    n_activating: int
    n_non_activating: int
    note: str = Field("", description="why the latent has no AUROC")
    explaining_windows: list[int] = Field(
        [], description="window ids shown to the explainer; never among activating_windows")
    activating_windows: list[int] = Field([], description="window ids (see WindowsResult.window_tokens)")
    non_activating_windows: list[int] = []
    activating_similarity: list[float] = []
    non_activating_similarity: list[float] = []


class EmbeddingMetrics(BaseModel):
    n_latents: int = Field(description="latents considered")
    n_scored: int = Field(description="latents with an AUROC")
    n_never_fired: int = Field(description="latents that never fired on the scanned tokens")
    n_below_min_examples: int = Field(
        0, description="selection=delphi: latents skipped for fewer than delphi_min_examples activating windows")
    mean_auroc: float | None = Field(description="mean AUROC over scored latents")
    mean_auroc_ci_low: float | None = Field(
        None, description="2.5th percentile of the bootstrap means (95% interval of mean_auroc over the scored "
        "latents, n_bootstrap resamples, seeded); None with fewer than 2 scored latents")
    mean_auroc_ci_high: float | None = Field(None, description="97.5th percentile of the bootstrap means")
    n_eligible: int | None = Field(
        None, description="latents of the SAE with at least min_activating_windows activating windows in the "
        "scanned tokens (the pool the latents were drawn from); None when the latents were given")
    median_auroc: float | None = Field(description="median AUROC over scored latents")
    frac_auroc_above_0_5: float | None = Field(description="fraction of scored latents above chance")


class EmbeddingDetails(BaseModel):
    explainer: str
    embedding_model: str
    n_tokens_scanned: int
    scores: list[LatentScore]
    selection: str = Field("saeval", description="config.selection")
    min_activating_windows: int | None = Field(
        None, description="activating windows a drawn latent needed (config.min_windows()); None: latents given")
    anchor: str = Field("delphi", description="the implementation the departures are measured against")
    departures: list[str] = Field([], description="where this run departs from delphi on purpose, and why")


class EmbeddingResult(EvalResult[EmbeddingConfig, EmbeddingMetrics, EmbeddingDetails]):
    pass


def departures(config: EmbeddingConfig) -> list[str]:
    """Where this config departs from delphi on purpose, one line each: delphi's behaviour, saeval's reason."""
    out = []
    if config.explainer != "self":
        out.append(
            "delphi draws its explaining and scoring examples from the same activating list, so explaining examples "
            "can reappear among the scored ones (a train/test leak); saeval removes every window the explainer saw "
            "and draws the scored windows by quantile from the rest (scores[].explaining_windows and "
            "activating_windows are disjoint)")
    out.append(
        "delphi samples from all of a latent's activating examples (up to its top 10,000); saeval from a uniform "
        f"reservoir of {config.reservoir} activating windows per latent, so one pass over the corpus stays "
        "O(latents x reservoir)")
    if config.selection == "saeval":
        out.append(
            "delphi scores only latents with at least 200 activating examples (min_examples); saeval draws its "
            f"latents among those with at least {config.min_windows()} activating windows (a full test set, "
            "min_activating_windows), a bar that a short corpus can meet, and scores given latents whatever they "
            "fire (selection=delphi keeps 200)")
        if config.explainer != "self":
            out.append(
                "delphi's explainer sees 40 examples sampled by activation quantile; saeval shows the top "
                f"{config.n_explain_windows} windows by max activation, a short prompt that local explainers handle "
                "(selection=delphi samples by quantile)")
    elif (config.delphi_min_examples, config.delphi_n_explain) != (200, 40):
        out.append(
            "delphi keeps latents with at least 200 activating examples and shows its explainer 40; this run uses "
            f"{config.delphi_min_examples} and {config.delphi_n_explain}")
    if config.explainer == "self":
        out.append(
            "delphi explains each latent with an LLM shown activating examples; explainer=self scores the model's "
            "self-explanations (from the decoder direction, no window shown), so nothing can leak into scoring")
    if "stella" not in config.embedding_model.lower():
        out.append(
            f"the paper embeds with stella_en_400M_v5; this run with {config.embedding_model} (saeval's default, "
            "all-MiniLM-L6-v2, ships offline)")
    return out


def requires(config: EmbeddingConfig) -> tuple[str, ...]:
    """Self-explanations reuse the self_explanation eval's; latents are drawn from the eval's own windows pass
    (by activating windows), so nothing else is needed."""
    if config.latents is not None:
        return ()
    return ("self_explanation",) if config.explainer == "self" else ()

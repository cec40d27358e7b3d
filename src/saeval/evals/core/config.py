"""Core eval config and result types (SAEBench core metric names). No torch here: the CLI validates configs
before any model loads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from saeval.evals.base import EvalConfig
from saeval.results import EvalResult


class CoreConfig(EvalConfig):
    # SAEBench paper settings: ctx 128, 409,600 reconstruction tokens, ~4.1M density tokens.
    n_eval_tokens: int = Field(409_600, gt=0, description="tokens for reconstruction and CE/KL (SAEBench: 409,600)")
    n_density_tokens: int = Field(4_096_000, gt=0, description="tokens for latent densities, the reconstruction "
                                  "tokens included (SAEBench: ~4.1M)")
    ctx_len: int = Field(128, ge=2, description="tokens per context, BOS included (SAEBench: 128)")
    batch_size: int = Field(8, gt=0, description="contexts per forward pass")
    compute_ce: bool = Field(True, description="also run the spliced and zero-ablated models for CE/KL scores")
    # Both defaults are what SAELens's evals.get_recons_loss does (and SAEBench core's copy of it); the other
    # values are what saeval computed before it matched SAELens.
    zero_ablation_positions: Literal["all", "ordinary"] = Field(
        "all", description="positions the zero-ablated run zeroes at the hook: all = every position, special "
        "tokens (BOS) included (SAELens/SAEBench); ordinary = only non-special ones, special tokens keep their "
        "activation as in the reconstruction run (saeval's former default)")
    kl_positions: Literal["ordinary", "with_next_token"] = Field(
        "ordinary", description="positions KL is averaged over: ordinary = every position whose input token is "
        "not special, the last one included (SAELens/SAEBench); with_next_token = those of them that have a next "
        "token in the context (positions 0..L-2, the CE positions; saeval's former default). CE is always averaged "
        "over positions 0..L-2 whose input token is not special (the target may be special), as in SAELens")
    weight_chunk: int = Field(4096, gt=0, description="decoder rows per chunk of the weight-cosine pass")
    prefixes: list[int] | None = Field(
        None, description="Matryoshka SAEs: also report the reconstruction and CE/KL metrics of the nested SAE made "
        "of the first w latents, for each width w here (each at most d_sae), in details.prefixes; they share "
        "the eval's clean and zero-ablated passes, e.g. --set core.prefixes=[128,512]")
    shared_memory_mb: float = Field(
        4096, ge=0, description="memory (MiB, on the model's device) the run may keep for core's SAE-independent "
        "passes, reused by every SAE of the run: the activations at the hook, the state to continue the model "
        "from it and two d_model-wide vectors standing for the clean next-token distribution per eval token, then the "
        "density tokens' activations. SmolLM2 (d_model 576), demo preset (8,192 eval, 32,768 density tokens): "
        "~57 + 54 MiB, held until the run ends. "
        "Beyond it each SAE recomputes them (the cost of an unshared run); 0 shares nothing")

    @field_validator("prefixes")
    @classmethod
    def _positive_widths(cls, widths: list[int] | None) -> list[int] | None:
        if widths is not None and any(w < 1 for w in widths):
            raise ValueError(f"prefix widths must be positive, got {widths}")
        return widths


class CoreMetrics(BaseModel):
    valid: bool = Field(description="false when the reconstruction is broken (NaN/inf, or its mean norm over 100x "
                        "the input's): the CE/KL scores are then withheld (null) and `warnings` says why")
    l0: float | None = Field(description="mean number of active latents per token")
    l1: float | None = Field(description="mean sum of latent activations per token")
    mse: float | None = Field(description="mean squared reconstruction error per token (summed over dimensions)")
    explained_variance: float | None = Field(description="1 - E||x - xhat||^2 / total variance of x")
    explained_variance_legacy: float | None = Field(description="per-token explained variance against the batch mean, "
                                             "averaged (SAEBench paper, Neuronpedia)")
    cossim: float | None = Field(description="mean cosine between x and its reconstruction")
    l2_norm_in: float | None = Field(description="mean L2 norm of x")
    l2_norm_out: float | None = Field(description="mean L2 norm of the reconstruction")
    l2_ratio: float | None = Field(description="mean ||xhat|| / ||x|| (shrinkage below 1)")
    relative_reconstruction_bias: float | None = Field(
        description="E||xhat||^2 / E<x, xhat> taken within each batch of batch_size contexts, then averaged over "
        "batches, as SAELens/SAEBench (1 without shrinkage; depends on the batch size)")
    relative_reconstruction_bias_global: float | None = Field(
        None, description="E||xhat||^2 / E<x, xhat> over all eval tokens at once (one ratio; what saeval reported "
        "as relative_reconstruction_bias formerly)")
    ce_loss_score: float | None = Field(None, description="(CE zero-ablated - CE with SAE) / (CE zero-ablated - "
                                        "CE clean); 1 = lossless")
    ce_loss_without_sae: float | None = Field(None, description="next-token CE of the clean model")
    ce_loss_with_sae: float | None = Field(None, description="next-token CE with the reconstruction spliced in")
    ce_loss_with_ablation: float | None = Field(None, description="next-token CE with the hook zero-ablated "
                                                "(at the positions zero_ablation_positions says)")
    kl_div_score: float | None = Field(None, description="(KL zero-ablated - KL with SAE) / KL zero-ablated; "
                                       "1 = lossless")
    kl_div_with_sae: float | None = Field(None, description="KL(clean || with SAE) of the next-token distribution, "
                                          "averaged over the positions kl_positions says")
    kl_div_with_ablation: float | None = Field(None, description="KL(clean || zero-ablated) of the next-token "
                                               "distribution")
    frac_alive: float | None = Field(description="fraction of latents that fired on the density tokens")
    freq_over_1_percent: float | None = Field(description="fraction of latents firing on more than 1% of tokens")
    freq_over_10_percent: float | None = Field(description="fraction of latents firing on more than 10% of tokens")
    average_max_decoder_cosine_sim: float | None = Field(
        description="mean over latents of the max cosine of its decoder "
                                                  "row to any other")
    average_max_encoder_cosine_sim: float | None = Field(
        description="mean over latents of the max cosine of its encoder "
                                                  "column to any other")
    average_encoder_decoder_cosine_sim: float | None = Field(description="mean cosine of each latent's encoder column "
                                                      "and decoder row")


class CorePrefixMetrics(BaseModel):
    width: int = Field(description="latents of the nested prefix SAE (the first `width` of the Matryoshka SAE)")
    valid: bool = Field(description="false when this prefix's reconstruction is broken (its scores are then null)")
    l0: float | None = Field(description="mean number of active latents per token")
    mse: float | None = Field(description="mean squared reconstruction error per token")
    explained_variance: float | None = Field(description="1 - E||x - xhat||^2 / total variance of x")
    cossim: float | None = Field(description="mean cosine between x and its reconstruction")
    ce_loss_with_sae: float | None = Field(None, description="next-token CE with this prefix's reconstruction "
                                           "spliced in")
    ce_loss_score: float | None = Field(None, description="as the eval's ce_loss_score, for this prefix")
    kl_div_with_sae: float | None = Field(None, description="KL(clean || with this prefix's reconstruction)")
    kl_div_score: float | None = Field(None, description="as the eval's kl_div_score, for this prefix")
    warnings: list[str] = Field(default_factory=list, description="why a metric of this prefix is null")


class CoreDetails(BaseModel):
    n_eval_tokens: int = Field(description="ordinary tokens the reconstruction metrics saw")
    n_density_tokens: int = Field(description="ordinary tokens the latent densities saw")
    n_ce_positions: int | None = Field(None, description="positions the CE means average over")
    n_kl_positions: int | None = Field(None, description="positions the KL means average over (kl_positions)")
    latent_density: list[float] = Field(description="per latent: fraction of density tokens where it fired")
    log10_density_histogram: dict[str, list[float]] = Field(description="counts and edges of the log10 density "
                                                            "histogram of live latents")
    max_decoder_cosine: list[float] = Field(description="per latent: max cosine of its decoder row to any other")
    hook_out: str | None = Field(None, description="transcoders: the hook the reconstruction is compared with and "
                                 "spliced into (the encoder reads the eval's hook)")
    prefixes: list[CorePrefixMetrics] | None = Field(None, description="per width of core.prefixes: the nested "
                                                     "prefix SAE's metrics")
    kl_method: Literal["projected", "recomputed"] | None = Field(
        None, description="how KL met the clean distribution: projected = from a d_model-wide projection of it "
        "kept once per run (exact up to rounding, see analysis.reconstruction.CleanDistribution); recomputed = "
        "the clean run again beside the spliced one (logits not affine in the final residual, e.g. soft-capped, "
        "or a bf16/fp16 model)")
    shared_state_mb: float | None = Field(None, description="MiB of SAE-independent state this run keeps for core "
                                          "at these hooks and tokens (0: over shared_memory_mb, recomputed per SAE)")
    anchor: str = Field("SAELens / SAEBench 0.6.0", description="the reference implementation compared against")
    departures: list[str] = Field(default_factory=lambda: list(DEPARTURES),
                                  description="where this eval departs from its anchor on purpose, and why")


# Checked against sae_lens.evals in tests/test_core_saelens.py (every shared metric to 1e-5).
DEPARTURES = (
    "mse: SAEBench 0.6.0 divides the summed squared error by the batch size a second time; saeval reports the "
    "mean per-token squared error (SAELens's value)",
    "explained_variance: SAEBench 0.6.0 measures variance around zero; saeval uses the variance around the mean "
    "(as SAELens >= 6.45) and keeps the old per-batch value as explained_variance_legacy",
    "relative_reconstruction_bias: SAELens's per-batch average; the single global ratio is "
    "relative_reconstruction_bias_global",
)


class CoreResult(EvalResult[CoreConfig, CoreMetrics, CoreDetails]):
    pass

"""Synthetic-activations eval config and result types. No torch here: the CLI validates configs before any
model loads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from saeval.evals.base import EvalConfig
from saeval.results import EvalResult

TARGET_TYPES = ("real", "sae_recon", "synthetic_structured", "synthetic_baseline", "random")
# The paper's finding on GPT-2 (mean L2 MS step): real 51.60 < SAE recon 53.34 < structured 55.69
# <= baseline 56.87 < random 65.01.
PAPER_MS_STEP = {"real": 51.60, "sae_recon": 53.34, "synthetic_structured": 55.69,
                 "synthetic_baseline": 56.87, "random": 65.01}
PAPER_PLATEAU = {"real": 15.12, "random": 8.33, "synthetic_structured": 7.76, "synthetic_baseline": 6.18}
T_MAX = 100.0  # absolute steps run t = linspace(0, 100, n_steps) in units of step_size
GRID_MAX = 99  # MS steps are reported on the paper's 100-point grid (index 0..99)
TEREN_PLATEAU_THRESHOLD = 20.0  # teren's find_activation_plateau_length(threshold=20), GPT-2 small units
TEREN_CENSORED_PLATEAU = 100.0  # ... and what it returns when the curve never reaches it

Positive = Annotated[float, Field(gt=0)]


class SyntheticConfig(EvalConfig):
    reference: Literal["saeval", "teren"] = Field(
        "saeval", description="construction rules: saeval's, or teren's code as it runs (linear-density "
        "neighbours, dead and active latents allowed as replacements, ascending latent order, plateau threshold "
        "20, a censored plateau counts 100, MS-step ties to the last index), for comparison with the paper")
    hook: str | None = Field(None, description="perturbation hook, which must be the SAE's (None: the SAE's hook, "
                             "else the run's)")
    prompt_len: int = Field(10, ge=2, description="tokens per prompt, BOS + corpus tokens (paper: the first 10 "
                            "tokens of openwebtext rows)")
    n_samples: int = Field(1000, ge=2, description="base activations, i.e. perturbations per target type")
    n_fit: int = Field(1000, ge=2, description="real activations the Gaussian (random target) is fitted to")
    n_steps: int = Field(100, ge=2, description="points of each perturbation curve")
    step_size: Positive | Literal["auto"] = Field(
        0.5, description="absolute step length; 'auto': median real-to-real distance / 100, so the steps span a "
        "typical real distance (0.5 is the paper's value at GPT-2's blocks.1.hook_resid_pre)")
    slope_floor: float = Field(0.02, ge=0, description="a curve with no slope above this never blows up (MS step "
                               "99)")
    baseline_pool: int = Field(10, gt=0, description="baseline target: draw among this many unused latents "
                               "closest in log-density")
    structured_pool: int = Field(100, gt=0, description="structured target: anchor among this many latents "
                                 "nearest the top latent in log-density")
    anchor_cos: float = Field(0.42, ge=-1, le=1, description="structured target: the anchor's decoder cosine to "
                              "the top latent is closest to this")
    dead_log10_density: float = Field(-10.0, le=0, description="latents at or below this log10 density count as "
                                      "dead")
    n_density_tokens: int = Field(4_096_000, gt=0, description="tokens of the density pass when no core result "
                                  "is given (core's default pass size)")
    density_ctx_len: int = Field(128, ge=2, description="tokens per context of that density pass")
    relative: bool = Field(True, description="also the relative interpolation A (1 - t) + T t")
    plateau: bool = Field(True, description="also the plateau experiment (from each target towards noise)")
    plateau_threshold: Positive | None = Field(
        None, description="final-layer L2 that ends a plateau; None: plateau_threshold_frac x the median final "
        "residual norm of the real prompts (the source's 20 is in GPT-2 small units), or 20 when reference is "
        "'teren'")
    plateau_threshold_frac: float = Field(0.1, gt=0, description="the plateau threshold as a fraction of the "
                                          "median final residual norm")
    cov_eps: float = Field(1e-6, gt=0, description="eigenvalue floor (x mean eigenvalue) for a singular "
                           "covariance")
    batch_rows: int = Field(256, gt=0, description="perturbed activations per forward pass")
    n_examples: int = Field(4, ge=0, description="example curves kept per target type")
    fast_path: bool = Field(True, description="cached single-position passes; false: a full forward per "
                            "perturbed activation")


class SyntheticMetrics(BaseModel):
    ms_real: float | None = Field(description="mean L2 MS step towards another prompt's activation (100-point grid)")
    ms_sae_recon: float | None = Field(description="mean L2 MS step towards that activation's SAE reconstruction")
    ms_synthetic_structured: float | None = Field(description="mean L2 MS step towards the cosine-structured synthetic "
                                           "activation")
    ms_synthetic_baseline: float | None = Field(description="mean L2 MS step towards the bag-of-latents synthetic "
                                         "activation")
    ms_random: float | None = Field(description="mean L2 MS step towards a Gaussian sample fitted to real activations")
    ks_sae_recon: float | None = Field(description="KS statistic of the SAE-recon L2 MS steps against the real ones")
    ks_synthetic_structured: float | None = Field(description="KS statistic of the structured L2 MS steps against the "
                                           "real ones")
    ks_synthetic_baseline: float | None = Field(description="KS statistic of the baseline L2 MS steps against the real "
                                         "ones")
    ks_random: float | None = Field(description="KS statistic of the random L2 MS steps against the real ones")
    kl_ms_real: float | None = Field(description="mean KL MS step towards real targets")
    kl_ms_synthetic_structured: float | None = Field(description="mean KL MS step towards structured targets")
    kl_ms_synthetic_baseline: float | None = Field(description="mean KL MS step towards baseline targets")
    kl_ms_random: float | None = Field(description="mean KL MS step towards random targets")
    plateau_real: float | None = Field(None, description="mean plateau length (steps) starting at real targets")
    plateau_synthetic_structured: float | None = Field(None, description="mean plateau length starting at "
                                                       "structured targets")
    plateau_synthetic_baseline: float | None = Field(None, description="mean plateau length starting at baseline "
                                                     "targets")
    plateau_random: float | None = Field(None, description="mean plateau length starting at random targets")
    paper_ordering_holds: bool = Field(description="real < SAE recon < structured <= baseline < random in mean L2 "
                                       "MS step, as in the paper")
    structured_closer_than_baseline: bool = Field(description="the structured MS steps are closer (KS) to the real "
                                                  "ones than the baseline's")


class CurveStats(BaseModel):
    """One statistic per sample for each target type, and its summary."""

    per_sample: dict[str, list[float]]
    mean: dict[str, float | None]
    std: dict[str, float | None]
    ks_vs_real: dict[str, float | None]


class SyntheticDetails(BaseModel):
    hook: str
    read_hook: str
    n_samples: int
    n_steps: int
    step_size: float | None
    step_size_source: str
    median_real_distance: float | None
    target_distance_median: dict[str, float | None]
    density_source: str
    density_tokens: int
    n_live_latents: int
    gaussian_fit_n: int
    ms_step_l2: CurveStats
    ms_step_kl: CurveStats
    ms_step_l2_relative: CurveStats | None = None
    ms_step_kl_relative: CurveStats | None = None
    no_blowup_fraction: dict[str, float | None]
    plateau: CurveStats | None = None
    plateau_censored_fraction: dict[str, float | None] = {}
    plateau_threshold: float | None = None
    plateau_threshold_derivation: str | None = None
    final_resid_norm_median: float | None
    ordering: list[str]
    paper_ms_step: dict[str, float | None]
    paper_plateau: dict[str, float | None]
    examples: dict[str, dict[str, list[list[float]]]]
    warnings: list[str]
    reference: str = "saeval"
    departures: list[str] = Field([], description="where these rules depart from teren's code, and why")


class SyntheticResult(EvalResult[SyntheticConfig, SyntheticMetrics, SyntheticDetails]):
    pass

"""Steerability (arXiv 2504.08729; LessWrong feature steerability metrics): registered here, run by
``saeval.evals.steerability.run``."""

from saeval.evals.base import EvalSpec, Headline, register_eval
from saeval.evals.steerability.config import (
    SteerabilityConfig,
    SteerabilityDetails,
    SteerabilityMetrics,
    SteerabilityResult,
    check_strengths,
)

SPEC = register_eval(EvalSpec(
    name="steerability",
    headline=Headline(
        metric="frac_steerable", better="higher",
        meaning="Fraction of latents whose clamping moves the output distribution over the concept vocabulary"
                " past the steerability threshold.",
        source="seed 000 (steerability)"),
    device_sizes={"cuda": {"batch_size": 128, "max_rows": 2048}},
    config_cls=SteerabilityConfig,
    result_cls=SteerabilityResult,
    run="saeval.evals.steerability.run:run",
    description="steer each sampled latent over a strength sweep; probability shifts over a concept vocabulary "
                "(power, steerability S, % steerable, top concepts)",
    presets={
        # 32 latents x 5 strengths x 8 prompts of 16 tokens: 20k tokens run from the hook on per SAE, half
        # what 32-token prompts cost (measured 0.55-0.65x per SAE); the unsteered pass is shared by the SAEs.
        "demo": {"n_latents": 32, "n_inputs": 8, "prompt_len": 16, "strengths": [-20.0, 0.0, 20.0, 50.0, 150.0]},
        "tiny": {"n_latents": 8, "n_inputs": 4, "prompt_len": 16, "vocab_size": 500, "strengths": [0.0, 10.0, 50.0]},
        # The LessWrong post's sweep, paper sizes otherwise.
        "post": {"strengths": [0.0, 0.5, 1.0, 5.0, 10.0, 100.0]},
    },
    report="saeval.evals.steerability.report:report",
    preflight=check_strengths,
))

__all__ = ["SPEC", "SteerabilityConfig", "SteerabilityDetails", "SteerabilityMetrics", "SteerabilityResult"]

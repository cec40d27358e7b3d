"""Self-explanation by placeholder replacement (Kharlapenko et al. 2024); see explain.py for the method."""

from saeval.evals.base import EvalSpec, Headline, register_eval
from saeval.evals.self_explanation.config import (
    DEMO_EXPLAIN,
    TINY_EXPLAIN,
    SelfExplanationConfig,
    SelfExplanationResult,
    requires,
)

SPEC = register_eval(
    EvalSpec(
        name="self_explanation",
        headline=Headline(
            metric="frac_with_explanation", better="higher",
            meaning="Fraction of latents for which steering the model produced a self-explanation.",
            source="seed 002 (self-explanation by steering)"),
        config_cls=SelfExplanationConfig,
        result_cls=SelfExplanationResult,
        run="saeval.evals.self_explanation.run:run",
        description="self-explanation by placeholder replacement: scale sweep (self-similarity, entropy), "
        "failure flag, batched generations",
        presets={"demo": {"n_latents": 6, **DEMO_EXPLAIN}, "tiny": {"n_latents": 2, **TINY_EXPLAIN}},
        report="saeval.evals.self_explanation.report:report",
        requires=requires,  # live latents are drawn from core's densities
    )
)

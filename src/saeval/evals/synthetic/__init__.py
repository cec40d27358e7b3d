"""Synthetic activations (Giglemiani et al. 2024): registered here, run by ``saeval.evals.synthetic.run``."""

from saeval.evals.base import EvalSpec, Headline, register_eval
from saeval.evals.synthetic.config import SyntheticConfig, SyntheticDetails, SyntheticMetrics, SyntheticResult

SPEC = register_eval(EvalSpec(
    name="synthetic",
    headline=Headline(
        metric="ms_sae_recon", better="lower",
        meaning="Mean step of the sharpest change in a late-layer activation (MS) when a real activation is "
                "moved toward the SAE reconstruction of another; toward real activations MS is lowest and toward "
                "random ones highest, so lower means more like real activations.",
        source="seed 003 (synthetic activations)"),
    config_cls=SyntheticConfig,
    result_cls=SyntheticResult,
    run="saeval.evals.synthetic.run:run",
    description="synthetic activations (Giglemiani et al. 2024): does the model treat activations built from "
                "SAE latents like real ones? MS step of perturbations towards real, SAE-reconstructed, "
                "synthetic and random targets; activation plateaus",
    presets={
        # Fewer samples and steps, no relative interpolation: 32 samples x 5 targets x 2 curves x <= 40 steps
        # of single-position passes (48 samples cost half as much again). The next SAE reuses the real and
        # random targets' curves and the prepared prompts: it costs ~0.4-0.6 of the first (bench_shared_work).
        "demo": {"n_samples": 32, "n_fit": 750, "n_steps": 40, "step_size": "auto", "relative": False,
                 "n_density_tokens": 16384, "n_examples": 3},
        "tiny": {"n_samples": 6, "n_fit": 80, "n_steps": 8, "step_size": "auto", "n_density_tokens": 2048,
                 "density_ctx_len": 32, "structured_pool": 20, "n_examples": 2},
    },
    report="saeval.evals.synthetic.report:report",
    requires=("core",),  # latent densities; without a core result the run makes its own density pass
))

__all__ = ["SPEC", "SyntheticConfig", "SyntheticDetails", "SyntheticMetrics", "SyntheticResult"]

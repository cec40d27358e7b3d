"""Core reconstruction metrics (SAEBench core eval): registered here, run by ``saeval.evals.core.run``."""

from saeval.evals.base import EvalSpec, Headline, register_eval
from saeval.evals.core.config import CoreConfig, CoreDetails, CoreMetrics, CoreResult

SPEC = register_eval(EvalSpec(
    name="core",
    headline=Headline(
        metric="ce_loss_score", better="higher",
        meaning="Fraction of the next-token loss lost by zero-ablating the hook that splicing in the "
                "reconstruction recovers (1 = lossless).",
        source="SAEBench core (Karvonen et al. 2025)"),
    device_sizes={"cuda": {"batch_size": 64, "weight_chunk": 16384}},
    config_cls=CoreConfig,
    result_cls=CoreResult,
    run="saeval.evals.core.run:run",
    transcoders=True,  # reconstruction at hook_name_out is what a transcoder is for
    description="reconstruction (MSE, explained variance, cossim), CE/KL scores, sparsity, weight cosines",
    presets={"demo": {"n_eval_tokens": 8192, "n_density_tokens": 32768},
             "tiny": {"n_eval_tokens": 512, "n_density_tokens": 1024, "ctx_len": 32}},
))

__all__ = ["SPEC", "CoreConfig", "CoreDetails", "CoreMetrics", "CoreResult"]

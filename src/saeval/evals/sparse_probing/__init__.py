"""Sparse probing (Gao et al. 2024, Gurnee et al. 2023; SAEBench sparse_probing): k-sparse probes on the top
latents by class-mean difference, against the same on the model's own dimensions."""

from saeval.analysis.erasure_config import DEMO_LLM_BATCH
from saeval.evals.base import EvalSpec, Headline, register_eval
from saeval.evals.sparse_probing.config import (
    SparseProbingConfig,
    SparseProbingDetails,
    SparseProbingMetrics,
    SparseProbingResult,
    preflight,
)

SPEC = register_eval(EvalSpec(
    name="sparse_probing",
    headline=Headline(
        metric="sae_top_1_test_accuracy", better="higher",
        meaning="Test accuracy of a probe on the single most class-selective latent, averaged over datasets.",
        source="SAEBench sparse probing (Karvonen et al. 2025)"),
    config_cls=SparseProbingConfig,
    result_cls=SparseProbingResult,
    run="saeval.evals.sparse_probing.run:run",
    description="k-sparse probing: logistic regression on the top k SAE latents by class-mean difference, per "
                "binary task, against the model's top k dimensions and full-width probes (SAEBench)",
    presets={
        # wordnet at TPP's demo sizes, ctx_len and sink_ratio: the two evals share its activation cache entry.
        # sotu-party is left out: from 31 tokens SmolLM2's own probe is at chance (0.53).
        "demo": {"datasets": ["wordnet", "sotu-era", "spam-assassin", "moby-dick-vs-sotu"], "train_set_size": 400,
                 "test_set_size": 160, "ctx_len": 32, "sink_ratio": 10.0, "llm_batch_size": DEMO_LLM_BATCH},
        "tiny": {"datasets": ["wordnet"], "train_set_size": 40, "test_set_size": 20, "ctx_len": 16,
                 "probe": {"epochs": 5}},
    },
    report="saeval.evals.sparse_probing.report:report",
    preflight=preflight,
))

__all__ = ["SPEC", "SparseProbingConfig", "SparseProbingDetails", "SparseProbingMetrics", "SparseProbingResult"]

"""Targeted Probe Perturbation (Karvonen et al. 2024; SAEBench scr_and_tpp with perform_scr=False)."""

from saeval.analysis.erasure_config import DEMO_LLM_BATCH
from saeval.evals.base import EvalSpec, Headline, register_eval
from saeval.evals.tpp.config import TPPConfig, TPPDetails, TPPMetrics, TPPResult, preflight

SPEC = register_eval(EvalSpec(
    name="tpp",
    headline=Headline(
        metric="tpp_threshold_20_total_metric", better="higher",
        meaning="Targeted probe perturbation at 20 ablated latents: accuracy the intended class probe loses "
                "minus what the other probes lose.",
        source="SAEBench TPP (Karvonen et al. 2025)"),
    device_sizes={"cuda": {"llm_batch_size": 128}},
    config_cls=TPPConfig,
    result_cls=TPPResult,
    run="saeval.evals.tpp.run:run",
    description="Targeted Probe Perturbation: ablate each class's top-N latents, intended minus unintended "
                "probe accuracy drop (SAEBench)",
    presets={
        "demo": {"datasets": ["wordnet"], "train_set_size": 400, "test_set_size": 160, "ctx_len": 32,
                 "sink_ratio": 10.0, "llm_batch_size": DEMO_LLM_BATCH},
        "tiny": {"datasets": ["wordnet"], "train_set_size": 40, "test_set_size": 20, "ctx_len": 16,
                 "n_values": [2, 5, 10], "probe": {"epochs": 3}},
    },
    report="saeval.evals.tpp.report:report",
    preflight=preflight,
))

__all__ = ["SPEC", "TPPConfig", "TPPDetails", "TPPMetrics", "TPPResult"]

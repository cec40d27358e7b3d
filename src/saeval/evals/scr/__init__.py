"""Spurious Correlation Removal (SAEBench scr_and_tpp with perform_scr=True)."""

from saeval.analysis.erasure_config import DEMO_LLM_BATCH
from saeval.evals.base import EvalSpec, Headline, register_eval
from saeval.evals.scr.config import PairConfig, SCRConfig, SCRDetails, SCRMetrics, SCRResult, preflight

SCR_PRESETS = {
    "demo": {"datasets": ["wordnet-pos"], "pairs": {"wordnet-pos": [("cognition", "body")]},
             "train_set_size": 320, "test_set_size": 160, "ctx_len": 32, "sink_ratio": 10.0,
             "llm_batch_size": DEMO_LLM_BATCH},
    "tiny": {"datasets": ["sotu"], "train_set_size": 40, "test_set_size": 20, "ctx_len": 16,
             "n_values": [2, 5, 10], "probe": {"epochs": 3}},
}

SPEC = register_eval(EvalSpec(
    name="scr",
    headline=Headline(
        metric="scr_metric_threshold_20", better="higher",
        meaning="Spurious correlation removal at 20 ablated latents: fraction of the gap to an unbiased probe"
                " closed by ablating the spurious latents.",
        source="SAEBench SCR (Karvonen et al. 2025)"),
    device_sizes={"cuda": {"llm_batch_size": 128}},
    config_cls=SCRConfig,
    result_cls=SCRResult,
    run="saeval.evals.scr.run:run",
    description="Spurious Correlation Removal: ablate latents of one attribute, recover a biased probe's "
                "accuracy on the other (SAEBench SCR)",
    presets=SCR_PRESETS,
    report="saeval.evals.scr.report:report",
    preflight=preflight,
))

__all__ = ["SCR_PRESETS", "SPEC", "PairConfig", "SCRConfig", "SCRDetails", "SCRMetrics", "SCRResult"]

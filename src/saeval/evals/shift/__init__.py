"""SHIFT with an automated judge (Marks et al. 2024 as automated by Karvonen et al. 2024; not in SAEBench)."""

from saeval.analysis.erasure_config import DEMO_LLM_BATCH
from saeval.evals.base import EvalSpec, Headline, register_eval
from saeval.evals.shift.config import SHIFTConfig, SHIFTDetails, SHIFTMetrics, SHIFTResult, preflight

SPEC = register_eval(EvalSpec(
    name="shift",
    headline=Headline(
        metric="shift_score", better="higher",
        meaning="SHIFT: accuracy a biased probe regains on the intended task when a judge-picked set of "
                "spurious latents is ablated.",
        source="Marks et al. 2024 (SHIFT)"),
    device_sizes={"cuda": {"llm_batch_size": 128}},
    config_cls=SHIFTConfig,
    result_cls=SHIFTResult,
    run="saeval.evals.shift.run:run",
    description="SHIFT with an automated judge: ablate the biased probe's top latents judged to concern the "
                "spurious attribute (Karvonen et al. 2024)",
    presets={
        "demo": {"datasets": ["wordnet-pos"], "pairs": {"wordnet-pos": [("cognition", "body")]},
                 "train_set_size": 320, "test_set_size": 160, "ctx_len": 32, "sink_ratio": 10.0,
                 "llm_batch_size": DEMO_LLM_BATCH,
                 # SmolLM2-135M as judge agreed with the probe reference on 35% of demo candidates, the embedding
                 # judge on 70%, in a second instead of a minute or more: the demo uses the latter.
                 "explainer": "tokens", "judge": "embedding"},
        "tiny": {"datasets": ["sotu"], "train_set_size": 40, "test_set_size": 20, "ctx_len": 16,
                 "n_values": [2, 5], "n_candidates": 5, "n_evidence": 2, "explainer": "none",
                 "judge": "embedding", "probe": {"epochs": 3}},
    },
    report="saeval.evals.shift.report:report",
    preflight=preflight,
))

__all__ = ["SPEC", "SHIFTConfig", "SHIFTDetails", "SHIFTMetrics", "SHIFTResult"]

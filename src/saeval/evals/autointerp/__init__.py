"""Autointerp (Bills et al. 2023; delphi, Paulo et al. 2024; SAEBench's autointerp): explain, then score by
detection, fuzzing and embedding; see run.py for the score and records.py for the windows."""

from saeval.evals.autointerp.config import AutointerpConfig, AutointerpResult, requires
from saeval.evals.base import EvalSpec, Headline, register_eval
from saeval.evals.self_explanation.config import DEMO_EXPLAIN, TINY_EXPLAIN

SPEC = register_eval(
    EvalSpec(
        name="autointerp",
        headline=Headline(
            metric="autointerp_score", better="higher",
            meaning="Fraction of held-out windows a judge model classifies correctly from the latent "
                    "explanation.",
            source="SAEBench autointerp (Paulo et al. 2024)"),
        config_cls=AutointerpConfig,
        result_cls=AutointerpResult,
        run="saeval.evals.autointerp.run:run",
        description="autointerp (SAEBench, delphi): an LLM explains each latent from its top and importance-"
        "weighted windows; judges score the explanation by detection and fuzzing on held-out windows",
        presets={
            # SmolLM2 on CPU, the whole pipeline (windows, explanations, detection and fuzzing) at a small size.
            # In bare 8x128 forwards, measured: the windows pass ~0.5 per 1k tokens (shared by the SAEs of a
            # run), an explanation batch ~0.1 per decoding step (so a shorter reply, not fewer latents, is what
            # saves) plus its prompts, the local judge ~0.04 per message (one per example: 2 scorers x 4
            # latents x 6 examples here). Measured ~8 for the first SAE, ~6 for the next; the former 8 latents
            # x 8 examples over 8k tokens cost ~17 and ~14 (bench_shared_work). The 135M judge scores near chance
            # at any size (details.judge_note says so).
            # Its contexts are the first of core's demo contexts (same corpus, seed and ctx_len 128), whose
            # activations the windows pass finds in the run's memo.
            "demo": {"n_latents": 4, "n_tokens": 8192, "window": 16, "n_pool": 300,
                     "n_top_explain": 6, "n_iw_explain": 2, "n_top_score": 2, "n_iw_score": 1, "n_random": 3,
                     "max_explanation_tokens": 16, "explain": DEMO_EXPLAIN},
            "tiny": {"n_latents": 3, "n_tokens": 2048, "ctx_len": 65, "window": 16, "n_pool": 60, "min_count": 2,
                     "n_top_explain": 3, "n_iw_explain": 2, "n_top_score": 2, "n_iw_score": 2, "n_random": 4,
                     "max_explanation_tokens": 8, "max_judge_tokens": 8, "explain": TINY_EXPLAIN},
        },
        report="saeval.evals.autointerp.report:report",
        requires=requires,
    )
)

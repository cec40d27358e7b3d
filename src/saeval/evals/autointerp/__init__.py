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
            # SmolLM2 on CPU: a short corpus, shorter windows and fewer scored examples, since the local judge
            # reads one message per example (answered by its Yes/No probabilities).
            "demo": {"n_latents": 8, "n_tokens": 8192, "ctx_len": 129, "window": 16, "n_pool": 300,
                     "n_top_explain": 8, "n_iw_explain": 4, "n_top_score": 2, "n_iw_score": 2, "n_random": 4,
                     "max_explanation_tokens": 24, "explain": DEMO_EXPLAIN},
            "tiny": {"n_latents": 3, "n_tokens": 2048, "ctx_len": 65, "window": 16, "n_pool": 60, "min_count": 2,
                     "n_top_explain": 3, "n_iw_explain": 2, "n_top_score": 2, "n_iw_score": 2, "n_random": 4,
                     "max_explanation_tokens": 8, "max_judge_tokens": 8, "explain": TINY_EXPLAIN},
        },
        report="saeval.evals.autointerp.report:report",
        requires=requires,
    )
)

"""Embedding score of latent explanations (Paulo et al. 2024, delphi); see score.py for the method."""

from saeval.evals.base import EvalSpec, Headline, register_eval
from saeval.evals.embedding_score.config import EmbeddingConfig, EmbeddingResult, requires
from saeval.evals.self_explanation.config import DEMO_EXPLAIN, TINY_EXPLAIN

SPEC = register_eval(
    EvalSpec(
        name="embedding_score",
        headline=Headline(
            metric="mean_auroc", better="higher",
            meaning="Mean AUROC separating activating from non-activating windows by their embedding cosine "
                    "to the explanation (0.5 = chance).",
            source="delphi embedding score (Paulo et al. 2024)"),
        config_cls=EmbeddingConfig,
        result_cls=EmbeddingResult,
        run="saeval.evals.embedding_score.run:run",
        description="embedding score (delphi): AUROC of query-window cosine, activating (by quantile, "
        "disjoint from the explaining windows) vs random non-activating windows",
        presets={
            # Core's demo contexts (32,768 tokens of 128, seeded alike): the windows pass finds their activations in
            # the run's memo and runs no forward. Three windows of 32 per context (the default 129 fits four).
            "demo": {"n_latents": 32, "n_tokens": 32_768, "ctx_len": 128, "reservoir": 200, "n_pool": 400, "n_test": 20,
                     "n_random": 20, "explain": DEMO_EXPLAIN},
            "tiny": {"n_latents": 3, "n_tokens": 2048, "ctx_len": 65, "window": 16, "reservoir": 40, "n_pool": 60,
                     "n_test": 10, "n_random": 10, "n_quantiles": 5, "explain": TINY_EXPLAIN},
        },
        report="saeval.evals.embedding_score.report:report",
        requires=requires,
    )
)

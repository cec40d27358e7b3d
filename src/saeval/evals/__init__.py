"""The registered evals, one package each (see evals/base.py); importing this registers them all."""

from saeval.evals import (  # noqa: E402, I001  (each package registers its eval on import)
    autointerp,
    core,
    embedding_score,
    scr,
    self_explanation,
    shift,
    sparse_probing,
    steerability,
    synthetic,
    tpp,
)
from saeval.evals.base import EVALS, EvalConfig, EvalContext, EvalSpec, get_eval, register_eval

BUILTIN_EVALS = (autointerp, core, embedding_score, scr, self_explanation, shift, sparse_probing, steerability,
                 synthetic, tpp)

__all__ = ["EVALS", "EvalConfig", "EvalContext", "EvalSpec", "get_eval", "register_eval"]

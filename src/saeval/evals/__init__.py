"""Built-in evals register themselves on import (see evals/base.py)."""

from saeval.evals import core, embedding_score, explain, scr, shift, steerability, synthetic, tpp
from saeval.evals.base import EVALS, EvalConfig, EvalContext, EvalSpec, get_eval, register_eval, run_evals

BUILTIN_EVAL_MODULES = (core, embedding_score, explain, scr, shift, steerability, synthetic, tpp)

__all__ = ["EVALS", "EvalConfig", "EvalContext", "EvalSpec", "get_eval", "register_eval", "run_evals"]

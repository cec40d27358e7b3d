"""Built-in evals register themselves on import (see evals/base.py)."""

from saeval.evals import core  # noqa: F401
from saeval.evals import embedding_score  # noqa: F401
from saeval.evals import explain  # noqa: F401
from saeval.evals import scr  # noqa: F401
from saeval.evals import shift  # noqa: F401
from saeval.evals import steerability  # noqa: F401
from saeval.evals import synthetic  # noqa: F401
from saeval.evals import tpp  # noqa: F401
from saeval.evals.base import EVALS, EvalConfig, EvalContext, EvalSpec, get_eval, register_eval, run_evals

__all__ = ["EVALS", "EvalConfig", "EvalContext", "EvalSpec", "get_eval", "register_eval", "run_evals"]

"""Plans and runs jobs (SAE x eval): validation before any model loads, config-hash addressed results."""

from saeval.runner.local import JobOutcome, run_evals

__all__ = ["JobOutcome", "run_evals"]

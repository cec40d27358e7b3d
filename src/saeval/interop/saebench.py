"""SAEBench-format results, out and in.

Export: each saeval result becomes ``DEST/<eval_type_id>/<release>_<sae_id>_eval_results.json`` (SAEBench's layout,
"/" in the name replaced by "_"), with SAEBench's top-level keys and its metric categories, so SAEBench's graphing
code and Neuronpedia's viewer read it. Evals SAEBench lacks go in the same envelope as ``saeval_<eval>``, one
category named after the eval. What saeval actually used (its full config, the metrics SAEBench has no key for,
its details, config hash, provenance, warnings, data sizes, and how each eval_config field was derived) is under
``eval_result_unstructured.saeval``.

SAE ids: an SAE loaded from SAELens by ``release:sae_id`` keeps that release and id; any other SAE is
``sae_lens_release_id = "saeval"`` and ``sae_lens_id = <its saeval name>`` (SAEBench's own custom SAEs likewise
get a made-up release). ``sae_bench_commit_hash`` is the marker ``saeval-<version>``: the field is a required
string, and no SAEBench commit ran.

Import: SAEBench result files (a user's SAEBench runs, published baselines) are checked against SAEBench's own
output models (``sae_bench.evals.<eval>.eval_output``; needs ``pip install --no-deps sae-bench==0.6.0``), one line
per bad file, and stored under ``OUT/imported/saebench/<eval_type_id>/``; :func:`imported_records` gives them to
the report in saeval's record shape.

No torch and no sae_bench at module level: the CLI imports this lazily, and SAEBench's models load on first use.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from saeval import __version__
from saeval.errors import SaevalError
from saeval.interop.saebench_check import (
    INSTALL_HINT,
    field_type,
    output_model,
    print_missing,
    saebench_available,
    validate_file,
)
from saeval.interop.saebench_map import BY_TYPE_ID, SAEBENCH_EVALS, SAEBenchEval, eval_name_of, saeval_type_id
from saeval.io import write_json_atomic
from saeval.results import read_result, result_files
from saeval.runner.names import IMPORTED_FOLDER
from saeval.saes.release_id import parse_release

FORMAT = "saebench"
SAEVAL_RELEASE = "saeval"
COMMIT_MARKER = f"saeval-{__version__}"


def imported_dir(out_dir: Path) -> Path:
    return Path(out_dir) / IMPORTED_FOLDER / FORMAT


# ---- export -----------------------------------------------------------------------------------------------------
def sae_lens_ids(record: dict[str, Any]) -> tuple[str, str]:
    """(release, sae_id): a SAELens ``release:sae_id`` the SAE was loaded from, else ("saeval", its name)."""
    sae = record.get("sae") or {}
    path = sae.get("path") or (record.get("provenance") or {}).get("sae_path")
    parsed = _release_of(path) if isinstance(path, str) else None
    return parsed or (SAEVAL_RELEASE, sae.get("name") or "sae")


def _release_of(path: str) -> tuple[str, str] | None:
    """The SAELens (release, sae_id) of a path that is a release id; None for a path or a malformed id."""
    try:
        return parse_release(path)
    except SaevalError:  # a malformed JSON id: the SAE did not come from a release
        return None


def file_name(release: str, sae_id: str) -> str:
    """SAEBench's get_results_filepath: ``<release>_<sae_id>_eval_results.json`` with "/" (and "\\") -> "_"."""
    return f"{release}_{sae_id}_eval_results.json".replace("/", "_").replace("\\", "_")


SAELENS_ARCHITECTURE = {"relu": "standard"}  # saeval's name -> SAELens's; the others are spelled alike


def sae_cfg_dict(record: dict[str, Any]) -> dict[str, Any]:
    """The SAE's config in SAELens's key names (SAEBench's graphs read architecture and d_sae)."""
    sae, prov = record.get("sae") or {}, record.get("provenance") or {}
    hook = sae.get("hook_name") or prov.get("hook")
    layer = hook.split(".")[1] if isinstance(hook, str) and hook.startswith("blocks.") else None
    arch = sae.get("architecture")
    return {"architecture": SAELENS_ARCHITECTURE.get(arch, arch), "d_in": sae.get("d_in"), "d_sae": sae.get("d_sae"),
            "hook_name": hook, "hook_layer": int(layer) if layer and layer.isdigit() else None,
            "model_name": sae.get("model_name") or record.get("model"), "dtype": prov.get("dtype"),
            "device": prov.get("device"), "saeval_name": sae.get("name"), "saeval_architecture": arch,
            "path": sae.get("path") or prov.get("sae_path"),
            **{k: sae[k] for k in ("hook_name_out", "matryoshka_widths") if sae.get(k) is not None}}


def _epoch_millis(record: dict[str, Any]) -> int:
    stamp = record.get("created_at")
    try:
        when = datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        when = None
    if when is None:
        return 0
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


def _eval_id(record: dict[str, Any]) -> str:
    """Deterministic: the same result exports to the same file."""
    key = f"{record.get('eval')}|{(record.get('sae') or {}).get('name')}|{record.get('config_hash')}|" \
          f"{record.get('created_at')}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"saeval:{key}"))


def _unstructured(record: dict[str, Any], placed: set[str], mapping: dict[str, Any]) -> dict[str, Any]:
    metrics = record.get("metrics") or {}
    return {"saeval": {
        "eval": record.get("eval"), "saeval_version": record.get("saeval_version"), "preset": record.get("preset"),
        "model": record.get("model"), "sae": record.get("sae"), "config": record.get("config"),
        "metrics_not_in_saebench": {k: v for k, v in metrics.items() if k not in placed},
        "details": record.get("details"), "config_hash": record.get("config_hash"),
        "hash_inputs": record.get("hash_inputs"), "provenance": record.get("provenance"),
        "warnings": record.get("warnings") or [], "sizes": record.get("sizes") or {},
        "created_at": record.get("created_at"), "seconds": record.get("seconds"),
        "eval_config_mapping": mapping,
    }}


def _full_saebench_config(entry: SAEBenchEval, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """SAEBench's whole eval_config (its defaults for fields saeval has no equivalent of) and those fields, when
    SAEBench is installed; else just the mapped fields."""
    if not saebench_available():
        return values, []
    config_cls = field_type(output_model(entry.type_id), "eval_config")
    full = asdict(config_cls(**values))
    return full, sorted(set(full) - set(values))


def to_saebench(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(eval_type_id, SAEBench-format payload) of one saeval result record; SaevalError when SAEBench requires a
    number the record lacks (e.g. core's CE/KL scores without compute_ce)."""
    from saeval.evals.base import get_eval, validate_config

    spec = get_eval(str(record.get("eval")))
    # The config as the eval reads it: a field added since the result was written gets its default (the tables
    # index config fields), and a config that no longer fits is one line, not a KeyError.
    config = validate_config(spec.name, spec.config_cls, record.get("config") or {}).model_dump(mode="json")
    record = {**record, "config": config}
    metrics = record.get("metrics") or {}
    release, sae_id = sae_lens_ids(record)
    entry = SAEBENCH_EVALS.get(spec.name)
    if entry is None:
        type_id = saeval_type_id(spec.name)
        categories = {spec.name: dict(metrics)}
        config, details, placed = dict(record.get("config") or {}), [], set(metrics)
        mapping: dict[str, Any] = {"fields": "the saeval config itself"}
    else:
        type_id = entry.type_id
        values = metrics | {k: v for k, v in entry.derived(record).items() if k not in metrics}
        missing = [k for k in entry.required if not _is_number(values.get(k))]
        if missing:
            why = "; ".join(record.get("warnings") or []) or "see the eval's description of these metrics"
            raise SaevalError(f"SAEBench requires a number for {', '.join(missing)}, null in this result ({why})")
        categories = {cat: {k: values.get(k) for k in keys} for cat, keys in entry.categories.items()}
        mapped, notes = entry.config(record)
        config, defaults = _full_saebench_config(entry, mapped)
        details, placed = entry.details(record), set(entry.keys())
        mapping = {"fields": notes, "saebench_defaults": defaults,
                   "derived_on_export": {k: "computed from saeval's details" for k in entry.derived_keys}}
    versions = (record.get("provenance") or {}).get("versions") or {}
    payload = {
        "eval_type_id": type_id, "eval_config": config, "eval_id": _eval_id(record),
        "datetime_epoch_millis": _epoch_millis(record), "eval_result_metrics": categories,
        "eval_result_details": details, "sae_bench_commit_hash": COMMIT_MARKER, "sae_lens_id": sae_id,
        "sae_lens_release_id": release, "sae_lens_version": versions.get("sae-lens"),
        "sae_cfg_dict": sae_cfg_dict(record), "eval_result_unstructured": _unstructured(record, placed, mapping),
    }
    return type_id, payload


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Outcome:
    """What an export or import did: files written, and one line per file left out."""

    written: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def export_saebench(results_dir: Path, dest: Path) -> Outcome:
    """Every saeval result under ``results_dir`` as a SAEBench result file under ``dest``; each file is checked by
    SAEBench's output model when SAEBench is installed. A result that cannot be a valid file is left out with one
    line naming it and why."""
    results_dir, dest = Path(results_dir), Path(dest)
    if not results_dir.is_dir():
        raise SaevalError(f"results folder {results_dir} does not exist")
    if dest.resolve() == results_dir.resolve():  # DEST/core/x.json would then read as a result of SAE "core"
        raise SaevalError(f"DEST must not be the results folder itself; use e.g. {results_dir / 'saebench'}")
    files = result_files(results_dir)
    if not files:
        raise SaevalError(f"{results_dir} holds no saeval results (<sae>/<eval>.json)")
    out, taken = Outcome(), {}
    check = saebench_available()
    if not check:
        out.notes.append(f"SAEBench is not installed: files are written unchecked ({INSTALL_HINT} to check them)")
    for path in files:
        try:
            type_id, payload = to_saebench(read_result(path))
            if check:
                validate_file(payload)
        except SaevalError as err:
            out.problems.append(f"{path}: not exported: {err}")
            continue
        target = dest / type_id / file_name(payload["sae_lens_release_id"], payload["sae_lens_id"])
        if target in taken:
            out.problems.append(f"{path}: not exported: {target} is already written from {taken[target]} "
                                "(two SAEs give the same SAEBench file name)")
            continue
        taken[target] = path
        out.written.append(write_json_atomic(target, payload, indent=2))
    return out


# ---- import -----------------------------------------------------------------------------------------------------
def _candidates(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise SaevalError(f"{source} does not exist")
    files = sorted(p for p in source.rglob("*.json") if p.is_file())
    if not files:
        raise SaevalError(f"{source} holds no .json files")
    return files


def _non_finite(payload: dict[str, Any]) -> list[str]:
    return [f"{cat}.{k}" for cat, metrics in (payload.get("eval_result_metrics") or {}).items()
            if isinstance(metrics, dict)
            for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]


def import_saebench(source: Path, out_dir: Path) -> Outcome:
    """Check each SAEBench result file under ``source`` (a file or a folder, searched recursively) and store the
    good ones under ``out_dir/imported/saebench/<eval_type_id>/``; a bad file gets one line naming it."""
    source, out_dir = Path(source), Path(out_dir)
    files = _candidates(source)
    output_model(BY_TYPE_ID["core"].type_id)  # SAEBench missing: one line before reading any file
    out, taken = Outcome(), {}
    for path in files:
        try:
            payload = json.loads(path.read_text())
            type_id = validate_file(payload)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            out.problems.append(f"{path}: unreadable: {err}")
            continue
        except SaevalError as err:
            out.problems.append(f"{path}: {err}")
            continue
        target = imported_dir(out_dir) / type_id / path.name
        if target in taken:
            out.problems.append(f"{path}: same file name as {taken[target]} for {type_id}; not imported")
            continue
        taken[target] = path
        bad = _non_finite(payload)
        if bad:
            out.notes.append(f"{path}: {', '.join(bad)} not finite: stored as null, never shown as a score")
        payload["saeval_import"] = {"source": str(path.resolve()), "format": FORMAT, "saeval_version": __version__,
                                    "imported_at": datetime.now(UTC).isoformat(timespec="seconds")}
        out.written.append(write_json_atomic(target, payload, indent=2))
    return out


def _cfg_value(cfg: dict[str, Any], key: str) -> Any:
    """A key of a SAELens config dict, top level or (SAELens 6) under metadata."""
    value = cfg.get(key)
    return value if value is not None else (cfg.get("metadata") or {}).get(key)


def imported_record(path: Path) -> dict[str, Any]:
    """One stored SAEBench file as a saeval-shaped record with an ``imported`` key (see the report)."""
    payload = json.loads(Path(path).read_text())
    type_id = payload["eval_type_id"]
    metrics: dict[str, Any] = {}
    for values in (payload.get("eval_result_metrics") or {}).values():
        metrics.update(values if isinstance(values, dict) else {})
    saeval_part = (payload.get("eval_result_unstructured") or {})
    saeval_part = saeval_part.get("saeval") if isinstance(saeval_part, dict) else None
    if isinstance(saeval_part, dict):  # exported by saeval: the metrics SAEBench has no key for come back too
        metrics.update(saeval_part.get("metrics_not_in_saebench") or {})
    cfg = payload.get("sae_cfg_dict") or {}
    release, sae_id = payload.get("sae_lens_release_id"), payload.get("sae_lens_id")
    model = _cfg_value(cfg, "model_name") or (payload.get("eval_config") or {}).get("model_name") or None
    origin = payload.get("saeval_import") or {}
    return {
        "eval": eval_name_of(type_id),
        "sae": {"name": f"{release}/{sae_id}", "architecture": cfg.get("architecture"), "d_in": cfg.get("d_in"),
                "d_sae": cfg.get("d_sae"), "hook_name": _cfg_value(cfg, "hook_name"), "model_name": model},
        "model": model, "preset": "imported", "config": payload.get("eval_config") or {}, "metrics": metrics,
        "details": {},
        "imported": {"format": FORMAT, "source": origin.get("source", str(path)), "stored": str(path),
                     "eval_type_id": type_id, "sae_lens_release_id": release, "sae_lens_id": sae_id,
                     "datetime_epoch_millis": payload.get("datetime_epoch_millis")},
    }


def imported_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every SAEBench file imported into ``out_dir`` (``imported/saebench/**/*.json``), one record per (SAE, eval),
    sorted by eval then SAE. A stored file that no longer reads is left out with a note on stderr."""
    records = []
    for path in sorted(imported_dir(out_dir).glob("**/*.json")):
        try:
            records.append(imported_record(path))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            from rich.console import Console

            Console(stderr=True).print(f"[yellow]note:[/yellow] imported file {path} is unreadable ({err}); "
                                       "left out of the report")
    return sorted(records, key=lambda r: (r["eval"], r["sae"]["name"]))


if __name__ == "__main__":
    print_missing()

"""The records a report reads: every eval result under a folder (validated by its eval's result model), the
SAEBench results imported beside them, and the study results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from saeval.errors import SaevalError
from saeval.results import STUDY_FOLDER, read_result, result_files


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return read_result(path)
    except SaevalError:
        return None


def eval_records(out_dir: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Every eval result under ``out_dir`` (``<sae>/<eval>.json``), read through its eval's result model when
    the eval is registered; a file that does not read is left out with a note."""
    import saeval.evals  # noqa: F401  (registers the built-in evals)
    from saeval.evals.base import EVALS

    records = []
    for path in result_files(out_dir):
        rec = _read(path)
        if rec is None or "eval" not in rec:
            notes.append(f"{path}: not a result file")
            continue
        spec = EVALS.get(rec["eval"])
        if spec is not None:
            try:
                rec = spec.result_cls.model_validate(rec).model_dump(mode="json")
            except ValidationError:
                notes.append(f"{path}: does not match the {spec.name} result format (rerun it with --force)")
                continue
        records.append(rec)
    return records


def imported_records(out_dir: Path) -> list[dict[str, Any]]:
    """SAEBench results imported into ``out_dir``, saeval-shaped, each with an ``imported`` key."""
    from saeval.interop.saebench import imported_records as read_imported

    return [rec for rec in read_imported(Path(out_dir)) if isinstance(rec, dict) and "metrics" in rec]


def study_results(out_dir: Path, notes: list[str]) -> list[tuple[Any, Any]]:
    """(StudySpec, validated result) of every ``OUT/studies/<study>.json`` of a registered study."""
    from saeval.studies import STUDIES

    found = []
    for path in sorted((Path(out_dir) / STUDY_FOLDER).glob("*.json")):
        spec = STUDIES.get(path.stem)
        rec = _read(path)
        if spec is None or rec is None:
            notes.append(f"{path}: not the result of a registered study")
            continue
        try:
            found.append((spec, spec.result_cls.model_validate(rec)))
        except ValidationError:
            notes.append(f"{path}: does not match the {spec.name} result format (rerun it with --force)")
    return found

"""HTML tables: metrics as rows and SAEs as columns, numbers sorted numerically, empty columns left out, each
SAE's config pretty-printed, and a warning when the SAEs of one table ran under different settings."""

from __future__ import annotations

import html
import json
import math
import re
from typing import Any

from saeval.flatten import flatten

# Means over fewer latents than this are flagged: their spread across latents makes the SAE ranking unreliable.
MIN_LATENTS = 30
# The metric counting the latents each eval's means are taken over.
LATENT_COUNTS = {"embedding_score": "n_scored", "steerability": "n_latents", "autointerp": "n_scored",
                 "self_explanation": "n_latents"}


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def natural_key(text: str) -> list[Any]:
    """Sort key reading digit runs as numbers: threshold_2 < threshold_5 < threshold_10 < threshold_20."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _cell(value: Any, tag: str = "td") -> str:
    """A cell; numbers carry data-v so the page's sorter compares them as numbers, not as text."""
    if isinstance(value, Cell):
        return value.html(tag)
    number = _numeric(value)
    attr = f" data-v='{number!r}'" if number is not None else ""
    return f"<{tag}{attr}>{fmt(value)}</{tag}>"


class Cell:
    """A cell whose text is ready HTML, with an optional numeric sort value and class."""

    def __init__(self, text: str, sort: float | None = None, cls: str = "", title: str = ""):
        self.text, self.sort, self.cls, self.title = text, sort, cls, title

    def html(self, tag: str = "td") -> str:
        attrs = f" data-v='{self.sort!r}'" if self.sort is not None else ""
        attrs += f" class='{self.cls}'" if self.cls else ""
        attrs += f" title='{html.escape(self.title, quote=True)}'" if self.title else ""
        return f"<{tag}{attrs}>{self.text}</{tag}>"

    def __bool__(self) -> bool:
        return bool(self.text)


def _empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, Cell) and not value)


def table_html(rows: list[dict[str, Any]], columns: list[str], sortable: bool = True,
               headers: dict[str, str] | None = None, left: tuple[str, ...] = ()) -> str:
    """A table of ``rows`` over ``columns``, leaving out columns empty in every row; click a header to sort.
    ``headers`` maps a column to ready header HTML; ``left`` names text columns aligned left."""
    kept = [c for c in columns if any(not _empty(r.get(c)) for r in rows)]
    headers = headers or {}
    head = "".join(f"<th{' class=l' if c in left else ''}>{headers.get(c, html.escape(c))}</th>" for c in kept)
    body = "".join(
        "<tr>" + "".join(_cell(r.get(c)) if c not in left else f"<td class=l>{fmt(r.get(c))}</td>" for c in kept)
        + "</tr>" for r in rows)
    cls = " class='sortable'" if sortable else ""
    return f"<div class='tw'><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def with_uncertainty(metrics: dict[str, Any], key: str) -> Cell | Any:
    """``metrics[key]`` with its seed std (``key_std``) or bootstrap interval (``key_ci_low``/``key_ci_high``)
    when the eval recorded one."""
    value = metrics.get(key)
    number = _numeric(value)
    if number is None:
        return value
    std = _numeric(metrics.get(f"{key}_std"))
    low, high = _numeric(metrics.get(f"{key}_ci_low")), _numeric(metrics.get(f"{key}_ci_high"))
    text = fmt(value)
    if std is not None:
        text += f" <small>± {std:.2g}</small>"
    if low is not None and high is not None:
        text += f" <small>[{low:.3g}, {high:.3g}]</small>"
    return Cell(text, number)


def _is_companion(key: str, keys: set[str]) -> bool:
    """A std or interval bound shown beside its mean instead of in a row of its own."""
    for suffix in ("_std", "_ci_low", "_ci_high"):
        if key.endswith(suffix) and key[: -len(suffix)] in keys:
            return True
    return False


def metrics_table(records: list[dict[str, Any]], highlight: str | None = None) -> str:
    """Scalar metrics as rows (in natural order: thresholds 2, 5, 10, 20...), one column per SAE; rows empty
    for every SAE are left out; ``highlight`` (the headline) comes first."""
    names = [r["sae"]["name"] for r in records]
    keys: list[str] = []
    for rec in records:
        keys += [k for k, v in rec["metrics"].items()
                 if (v is None or isinstance(v, int | float)) and k not in keys]
    present = set(keys)
    keys = sorted((k for k in keys if not _is_companion(k, present)), key=natural_key)
    if highlight in keys:
        keys.remove(highlight)
        keys.insert(0, highlight)
    rows = []
    for key in keys:
        row: dict[str, Any] = {"metric": Cell(f"<b>{html.escape(key)}</b>" if key == highlight
                                              else html.escape(key), cls="l")}
        row.update({name: with_uncertainty(rec["metrics"], key) for name, rec in zip(names, records, strict=True)})
        if any(not _empty(row[n]) for n in names):
            rows.append(row)
    return table_html(rows, ["metric", *names], left=())


def run_settings(rec: dict[str, Any]) -> dict[str, Any]:
    """What a result ran under, flattened: model, preset, config fields, and the data sizes used."""
    settings = {"model": rec.get("model"), "preset": rec.get("preset")}
    settings.update(flatten(rec.get("config") or {}, "config"))
    settings.update({f"sizes.{name}": size.get("used") for name, size in (rec.get("sizes") or {}).items()
                     if isinstance(size, dict)})
    return settings


def differing_settings(records: list[dict[str, Any]]) -> list[str]:
    """The settings (``config.n_eval_tokens``, ``sizes...``) whose values differ among ``records``."""
    settings = [run_settings(r) for r in records]
    keys = sorted({k for s in settings for k in s}, key=natural_key)
    return [k for k in keys if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in settings}) > 1]


def _setting(key: str, value: Any) -> str:
    if value is None:  # a size is recorded only when a request was cut to what the data had
        return "(as requested)" if key.startswith("sizes.") else "(not set)"
    return f"<b>{fmt(json.dumps(value, sort_keys=True) if isinstance(value, list) else value)}</b>"


def settings_warning(records: list[dict[str, Any]]) -> str:
    differ = differing_settings(records)
    if len(records) < 2 or not differ:
        return ""
    shown = "".join(
        f"<li><code>{html.escape(k)}</code>: " + ", ".join(
            f"{html.escape(r['sae']['name'])} {_setting(k, run_settings(r).get(k))}" for r in records) + "</li>"
        for k in differ[:12])
    more = f"<li>and {len(differ) - 12} more</li>" if len(differ) > 12 else ""
    return (f"<div class='warn'><b>Not like for like:</b> these SAEs ran with different settings, so their "
            f"numbers are not directly comparable:<ul>{shown}{more}</ul></div>")


def config_details(records: list[dict[str, Any]]) -> str:
    """Each SAE's config, pretty-printed, in a collapsed block."""
    blocks = "".join(
        f"<h4>{html.escape(r['sae']['name'])} (preset {fmt(r.get('preset'))}, model {fmt(r.get('model'))})</h4>"
        f"<pre>{html.escape(json.dumps(r.get('config'), indent=2, sort_keys=True))}</pre>" for r in records)
    return f"<details><summary>config of each SAE</summary>{blocks}</details>"


def small_n_warning(eval_name: str, records: list[dict[str, Any]]) -> str:
    """A warning naming the SAEs whose means are taken over fewer than MIN_LATENTS latents."""
    key = LATENT_COUNTS.get(eval_name)
    few = [(r["sae"]["name"], r["metrics"].get(key)) for r in records
           if key and isinstance(r["metrics"].get(key), int) and r["metrics"][key] < MIN_LATENTS]
    if not few:
        return ""
    names = ", ".join(f"{html.escape(n)} ({v})" for n, v in few)
    return (f"<div class='warn'><b>Few latents:</b> means over fewer than {MIN_LATENTS} latents "
            f"(<code>{key}</code>): {names}; differences between SAEs may be noise.</div>")

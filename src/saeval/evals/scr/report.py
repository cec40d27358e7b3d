"""SCR's report section: the reported direction and both directions against N."""

from __future__ import annotations

from typing import Any

from saeval.report.curves import score_vs_n


def report(records: list[dict[str, Any]]) -> str:
    return score_vs_n(records, "scr_metric_threshold_{n}", "SCR (reported direction) vs N",
                      "SCR score (fraction of the probe gap closed)",
                      extra=[("scr_dir1_threshold_{n}", "dir1", "dash"), ("scr_dir2_threshold_{n}", "dir2", "dot")])

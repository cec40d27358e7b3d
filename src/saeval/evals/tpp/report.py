"""TPP's report section: intended, unintended and total accuracy drop against N."""

from __future__ import annotations

from typing import Any

from saeval.report.curves import score_vs_n


def report(records: list[dict[str, Any]]) -> str:
    return score_vs_n(records, "tpp_threshold_{n}_total_metric", "TPP total (intended - unintended) vs N",
                      "probe accuracy drop (fraction)",
                      extra=[("tpp_threshold_{n}_intended_diff_only", "intended", "dash"),
                             ("tpp_threshold_{n}_unintended_diff_only", "unintended", "dot")])

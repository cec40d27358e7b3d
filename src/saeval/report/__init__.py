from saeval.report.html import build_report, figure_html

__all__ = ["build_report", "figure_html"]

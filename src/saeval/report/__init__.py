from saeval.report.figures import figure_html
from saeval.report.page import build_report
from saeval.report.summary import print_summary

__all__ = ["build_report", "figure_html", "print_summary"]

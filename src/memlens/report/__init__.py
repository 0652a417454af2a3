"""Step 5 of the pipeline: turning results into tables, plots and pages."""

from memlens.report.page import render_report
from memlens.report.summary import print_summary, summary_lines, summary_table

__all__ = ["print_summary", "render_report", "summary_lines", "summary_table"]

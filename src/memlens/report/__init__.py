"""Step 5 of the pipeline: turning results into tables and pages."""

from memlens.report.table import print_summary, summary_lines, summary_table

__all__ = ["print_summary", "summary_lines", "summary_table"]

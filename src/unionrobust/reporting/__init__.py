"""Reporting: tables (markdown/plain), atomic JSON/CSV writers, markdown/HTML reports."""

from unionrobust.reporting.html import write_reports
from unionrobust.reporting.tables import (
    format_report,
    format_table,
    write_csv,
    write_json,
)
from unionrobust.reporting.tables import write_report as write_report  # deprecated

__all__ = [
    "format_report",
    "format_table",
    "write_csv",
    "write_json",
    "write_reports",
]

"""Reporting: tables (markdown/plain), atomic JSON/CSV writers, markdown/HTML reports."""

from unionrobust.reporting.html import write_reports
from unionrobust.reporting.tables import (
    format_report,
    format_table,
    write_csv,
    write_json,
    write_report,
)

__all__ = [
    "format_report",
    "format_table",
    "write_csv",
    "write_json",
    "write_report",
    "write_reports",
]

"""Reporting: tables (markdown/plain) and atomic JSON/CSV writers."""

from unionrobust.reporting.tables import (
    format_report,
    format_table,
    write_csv,
    write_json,
    write_report,
)

__all__ = ["format_report", "format_table", "write_csv", "write_json", "write_report"]

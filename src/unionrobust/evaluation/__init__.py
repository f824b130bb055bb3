"""Evaluation: suites, the cascade engine, per-example verdicts on disk and metrics."""

from unionrobust.evaluation.engine import evaluate, recheck
from unionrobust.evaluation.metrics import wilson_interval
from unionrobust.evaluation.report import EvaluationReport
from unionrobust.evaluation.suites import Suite, SuiteEntry, get_suite, suite_names

__all__ = [
    "EvaluationReport",
    "Suite",
    "SuiteEntry",
    "evaluate",
    "get_suite",
    "recheck",
    "suite_names",
    "wilson_interval",
]

"""Evaluation: suites, the cascade engine, per-example verdicts on disk and metrics."""

from unionrobust.evaluation.attack_report import AttackReport, attack_report
from unionrobust.evaluation.checks import recheck
from unionrobust.evaluation.corruptions import corruption_accuracy
from unionrobust.evaluation.curves import RobustnessCurve, robustness_curve, union_curve
from unionrobust.evaluation.diagnostics import gradient_masking, run_diagnostics
from unionrobust.evaluation.engine import evaluate
from unionrobust.evaluation.metrics import wilson_interval
from unionrobust.evaluation.mode import EvaluationMode
from unionrobust.evaluation.multirobust import competitiveness_ratio, multirobust_evaluation
from unionrobust.evaluation.report import EvaluationReport
from unionrobust.evaluation.suites import Suite, SuiteEntry, get_suite, suite_names

__all__ = [
    "AttackReport",
    "EvaluationMode",
    "EvaluationReport",
    "RobustnessCurve",
    "Suite",
    "SuiteEntry",
    "attack_report",
    "competitiveness_ratio",
    "corruption_accuracy",
    "evaluate",
    "get_suite",
    "gradient_masking",
    "multirobust_evaluation",
    "recheck",
    "robustness_curve",
    "run_diagnostics",
    "suite_names",
    "union_curve",
    "wilson_interval",
]

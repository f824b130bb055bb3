"""Pure tensor geometry: projections and steepest-ascent directions (no models)."""

from unionrobust.geometry.ball_box import project_l1_box, project_l2_box
from unionrobust.geometry.projections import (
    project_box,
    project_l0_box,
    project_l1,
    project_l2,
    project_linf,
    project_linf_box,
    project_simplex,
)
from unionrobust.geometry.steps import (
    box_movable,
    l1_topk_direction,
    l2_direction,
    linf_direction,
    slide_direction,
)

__all__ = [
    "box_movable",
    "l1_topk_direction",
    "l2_direction",
    "linf_direction",
    "project_box",
    "project_l0_box",
    "project_l1",
    "project_l1_box",
    "project_l2",
    "project_l2_box",
    "project_linf",
    "project_linf_box",
    "project_simplex",
    "slide_direction",
]

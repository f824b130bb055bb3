"""Rotation-translation threat model (Engstrom et al. 2019; Tramèr & Boneh 2019 §2.4, §4).

A perturbation is not additive: ``x_adv = T_θ(x)`` with θ = (angle in degrees, tx, ty in pixels),
|angle| ≤ ``max_rot``, |tx|, |ty| ≤ ``max_trans`` (papers' default ±30°, ±3 px). ``T_θ`` rotates
about the image centre, then translates, with bilinear sampling and black (zero) fill outside the
image, as Engstrom et al. (they in-paint with black).

The set is searched, not projected: :class:`RotationTranslation` is a
:class:`~unionrobust.threats.base.SearchedThreat` (its ℓp step / projection methods raise). Its
**lattice** (``n_rot`` angles × ``n_trans``² shifts, evenly spaced and symmetric, by default
Engstrom et al.'s 31 × 5 × 5 = 775 points) is the search space of the grid attack and of the
worst-of-k random attack (:mod:`unionrobust.attacks.spatial`).
``contains(delta, x)`` re-checks an attack output independently: ``x + delta`` must equal
``T_θ(x)`` (to ``atol``) for some lattice point θ, or for the recorded ``params`` (B, 3) when the
attack passes them (any θ inside the bounds then counts, not only lattice points).

Spec text: ``"rt:30:3"`` (max_rot:max_trans); ``"rt:30"`` means ±30° with the papers' ratio of
10° per pixel (±3 px). ``with_size(s)`` scales both bounds by ``s / max_rot`` (ε warm-up; the
β-scaled set β·S_RT of Tramèr & Boneh §2.5 is ``scaled(β)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unionrobust.errors import UnionRobustError, check_int
from unionrobust.resources import check_memory
from unionrobust.rng import KeyedRandom
from unionrobust.threats.base import SearchedThreat, ThreatModel, format_size

#: absolute tolerance of ``contains`` when comparing x + delta with T_θ(x)
SPATIAL_ATOL = 1e-4

#: peak bytes per lattice point of building :meth:`RotationTranslation.grid` (measured: ~80)
GRID_BYTES_PER_POINT = 96


def rotate_translate(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``T_θ(x)`` per example: rotate by ``params[:, 0]`` degrees (clockwise on the displayed
    image, rows pointing down; 90° equals ``torch.rot90(x, -1, (2, 3))``) about the centre, then
    shift by ``params[:, 1]`` px right and ``params[:, 2]`` px down; bilinear, zero fill.
    Differentiable in ``x`` (and θ).

    ``x``: (B, C, H, W); ``params``: (B, 3) or (3,) (broadcast). θ = 0 returns ``x`` exactly.
    """
    if x.dim() != 4:
        raise UnionRobustError(f"rotations need images (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    p = params.to(device=x.device, dtype=x.dtype).reshape(-1, 3).expand(b, 3)
    rad = p[:, 0] * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    sx, sy = 2.0 / w, 2.0 / h  # pixel -> normalised units (align_corners=False)
    # output pixel u (centred coords, pixels) samples input R^{-1}(u - t); in normalised units
    # n_in = S R^{-1} S^{-1} n_out - S R^{-1} t, with R^{-1} = [[c, s], [-s, c]] (y axis down)
    tx, ty = p[:, 1], p[:, 2]
    theta = torch.stack(
        [
            torch.stack([cos, sin * sx / sy, -sx * (cos * tx + sin * ty)], dim=1),
            torch.stack([-sin * sy / sx, cos, -sy * (-sin * tx + cos * ty)], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    identity = (p == 0).all(dim=1).reshape(-1, 1, 1, 1)
    return torch.where(identity, x, out)


def _linspace(bound: float, n: int) -> torch.Tensor:
    if n == 1 or bound == 0:
        return torch.zeros(1, dtype=torch.float64)
    return torch.linspace(-bound, bound, n, dtype=torch.float64)


class RotationTranslation(SearchedThreat):
    """Rotations up to ``max_rot`` degrees and translations up to ``max_trans`` pixels."""

    name = "rt"

    def __init__(
        self, max_rot: float = 30.0, max_trans: float = 3.0, n_rot: int = 31, n_trans: int = 5
    ) -> None:
        try:
            rot, trans = float(max_rot), float(max_trans)
        except (TypeError, ValueError):
            raise UnionRobustError(
                f"rt: bounds must be numbers, got {max_rot!r}, {max_trans!r}"
            ) from None
        if not (0 <= rot <= 180 and 0 <= trans < float("inf")) or rot + trans == 0:
            raise UnionRobustError(
                f"rt: need 0 <= max_rot <= 180, 0 <= max_trans, not both 0; got {rot}, {trans}"
            )
        self.max_rot = rot
        self.max_trans = trans
        self.n_rot = check_int("rt: n_rot", n_rot, 1)
        self.n_trans = check_int("rt: n_trans", n_trans, 1)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def size(self) -> float:
        return self.max_rot if self.max_rot > 0 else self.max_trans

    def scaled(self, beta: float) -> RotationTranslation | None:
        """β·S: both bounds times β (Tramèr & Boneh §2.5); ``None`` for β = 0 (identity only)."""
        beta = float(beta)
        if not 0.0 <= beta <= 1.0:
            raise UnionRobustError(f"rt: scale must lie in [0, 1], got {beta}")
        if beta == 0.0:
            return None
        return RotationTranslation(
            self.max_rot * beta, self.max_trans * beta, self.n_rot, self.n_trans
        )

    def with_size(self, size: float) -> ThreatModel:
        s = float(size)
        if not s > 0:
            raise UnionRobustError(f"rt: size must be > 0, got {size!r}")
        return RotationTranslation(
            self.max_rot * s / self.size, self.max_trans * s / self.size, self.n_rot, self.n_trans
        )

    @property
    def spec(self) -> str:
        return f"rt:{format_size(self.max_rot)}:{format_size(self.max_trans)}"

    def __repr__(self) -> str:
        return (
            f"RotationTranslation(max_rot={self.max_rot:g}, max_trans={self.max_trans:g}, "
            f"n_rot={self.n_rot}, n_trans={self.n_trans})"
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.spec, self.n_rot, self.n_trans))

    # -- the lattice ---------------------------------------------------------------------------
    def check_memory(self) -> None:
        """Refuse (one-line error, with the numbers) a lattice that cannot fit in memory."""
        rots = 1 if self.max_rot == 0 else self.n_rot
        shifts = 1 if self.max_trans == 0 else self.n_trans
        points = rots * shifts**2 + 1  # + the identity, when the lattice lacks it
        check_memory(
            GRID_BYTES_PER_POINT * points,
            f"the lattice of {self.spec} ({points:.3g} points)",
            "lower n_rot / n_trans (--n-rot, --n-trans)",
        )

    def grid(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """All lattice points θ, shape (N, 3), float64; the identity is always included (first
        if the lattice lacks it). A lattice that cannot fit in memory is refused first."""
        self.check_memory()
        rots = _linspace(self.max_rot, self.n_rot)
        shifts = _linspace(self.max_trans, self.n_trans)
        r, tx, ty = torch.meshgrid(rots, shifts, shifts, indexing="ij")
        pts = torch.stack([r.reshape(-1), tx.reshape(-1), ty.reshape(-1)], dim=1)
        if not (pts == 0).all(dim=1).any():
            pts = torch.cat([torch.zeros(1, 3, dtype=pts.dtype), pts])
        return pts.to(device)

    def random_params(self, rand: KeyedRandom, counter: int) -> torch.Tensor:
        """One random lattice point per example (B, 3), keyed by (seed, example id, counter)."""
        g = self.grid(rand.ids.device)
        idx = rand.randint(counter, 0, g.shape[0] - 1)
        return g[idx]

    def in_bounds(self, params: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Bool (B,): θ inside the bounds."""
        p = params.double()
        return (p[:, 0].abs() <= self.max_rot + tol) & (p[:, 1:].abs() <= self.max_trans + tol).all(
            dim=1
        )

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """``T_θ(x)`` for this threat (params checked against the bounds)."""
        if not bool(self.in_bounds(params.reshape(-1, 3)).all()):
            raise UnionRobustError(f"rotation-translation parameters outside {self.spec}")
        return rotate_translate(x, params)

    # -- membership ----------------------------------------------------------------------------
    def contains(
        self,
        delta: torch.Tensor,
        x: torch.Tensor,
        tol: float = 0.0,
        params: torch.Tensor | None = None,
        chunk: int = 64,
    ) -> torch.Tensor:
        """Bool (B,): ``x + delta`` is ``T_θ(x)`` (to :data:`SPATIAL_ATOL`) for the recorded θ
        (``params``, which must be inside the bounds) or, without ``params``, for some lattice
        point (searched in chunks of ``chunk`` points, stopping once every row matched)."""
        xa = x + delta
        b = x.shape[0]

        def close(cand: torch.Tensor) -> torch.Tensor:
            diff = (cand - xa).abs().reshape(b, -1).amax(dim=1)
            return diff <= SPATIAL_ATOL

        if params is not None:
            params = params.to(x.device).reshape(b, 3)
            return self.in_bounds(params) & close(rotate_translate(x, params))
        found = close(x)
        g = self.grid(x.device)
        for s in range(0, g.shape[0], chunk):
            todo = (~found).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            pts = g[s : s + chunk]
            n = pts.shape[0]
            xs = x[todo].repeat(n, *([1] * (x.dim() - 1)))
            cand = rotate_translate(xs, pts.repeat_interleave(todo.numel(), dim=0))
            diff = (cand - xa[todo].repeat(n, *([1] * (x.dim() - 1)))).abs()
            hit = (diff.reshape(n, todo.numel(), -1).amax(dim=2) <= SPATIAL_ATOL).any(dim=0)
            found[todo] = hit
        in_box = (xa.reshape(b, -1) >= -1e-6).all(dim=1) & (xa.reshape(b, -1) <= 1 + 1e-6).all(1)
        return found & in_box

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """The pixel ℓ∞ change (a diagnostic only: this set is not a norm ball)."""
        return delta.reshape(delta.shape[0], -1).abs().amax(dim=1)

    def random_init(self, x, rand, counter=0):
        """A random lattice transform of ``x``, returned as the perturbation T_θ(x) − x."""
        if x.dim() != 4:
            raise UnionRobustError("rotations need images (B, C, H, W)")
        return rotate_translate(x, self.random_params(rand, counter)) - x

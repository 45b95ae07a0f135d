"""The options of the influence step (``influence:`` in the config) and the errors the engine raises."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from ..config import check_fields, from_section, section_schema

MAX_EXACT_PARAMS = 5000
"""Largest parameter subset the dense curvature matrix is built for (5000² float64 = 200 MB)."""

DIVERGENCE_FACTOR = 10.0
"""LiSSA's iterate may not exceed this multiple of the largest norm a convergent recursion can reach."""

METHODS = tuple(section_schema("influence.method")["enum"])
CURVATURES = tuple(section_schema("influence.curvature")["enum"])
HVP_MODES = tuple(section_schema("influence.hvp_mode")["enum"])
DTYPES = {name: getattr(torch, name) for name in section_schema("influence.dtype")["enum"]}


class InfluenceDivergence(RuntimeError):
    """An inverse-HVP solver or the scoring produced unusable numbers; the message says which option to change."""


class NegativeCurvature(InfluenceDivergence):
    """``C + λI`` is not positive definite: influence functions are not defined at this damping.

    ``lambda_min_H`` is the most negative curvature found (an upper bound on λ_min); ``suggested_damping`` is a
    relative damping that makes the estimated spectrum positive with a factor-2 margin (None when the curvature has no
    positive eigenvalue at all, so no relative damping can help).
    """

    def __init__(
        self, message: str, *, lambda_min_H: float, damping: float, suggested_damping: float | None  # noqa: N803
    ) -> None:
        super().__init__(message)
        self.lambda_min_H = lambda_min_H
        self.damping = damping
        self.suggested_damping = suggested_damping


def negative_curvature(lam_min: float, lam_max: float, damping: float, where: str) -> NegativeCurvature:
    """The error for a curvature ``lam_min`` with ``lam_min + damping × lam_max ≤ 0``, found by ``where``."""
    if lam_max <= 0:
        return NegativeCurvature(
            f"{where} found no positive curvature of the training loss (largest eigenvalue of H is {lam_max:.4g} ≤ 0): "
            "the model is not near a minimum of its training loss for these influence.params, so influence functions "
            "with the Hessian are undefined. Use influence.curvature: gauss_newton (never negative), train the model "
            "to convergence or choose other influence.params.",
            lambda_min_H=lam_min,
            damping=damping,
            suggested_damping=None,
        )
    needed = -lam_min / lam_max
    suggested = float(f"{2.0 * needed:.2g}")  # two significant digits keep most of the factor-2 margin
    message = (
        f"{where} found curvature {lam_min:.4g} of the training-loss Hessian H (λ_max(H) ≈ {lam_max:.4g}), so "
        f"H + λI with λ = influence.damping × λ_max(H) = {damping:g} × {lam_max:.4g} = {damping * lam_max:.4g} "
        "is not positive definite and the damped problem is not a minimum (influence functions, LiSSA and CG assume "
        f"one). Use influence.damping > {needed:.3g} (suggested: {suggested:g}), influence.curvature: gauss_newton "
        "(positive semi-definite by construction), train the model closer to convergence, or restrict "
        "influence.params (e.g. 'head')."
    )
    return NegativeCurvature(message, lambda_min_H=lam_min, damping=damping, suggested_damping=suggested)


@dataclass
class InfluenceArgs:
    """Options of the influence step (``influence:`` in the config); saved as JSON beside its outputs.

    ``method``: the estimator (``cg`` default, ``lissa``, ``exact``, ``ekfac``); ``curvature``: the matrix C that
    replaces H (``gauss_newton`` default: ``G = (2/n) Σ wᵢ JᵢᵀJᵢ``, positive semi-definite; ``hessian``: the full
    Hessian). ``damping`` is relative to λ_max(C). ``chunk_size`` is the number of rows per forward/backward pass of
    every full-split product (memory only: it never changes a result beyond rounding); ``batch_size`` is LiSSA's
    mini-batch. ``depth``/``tolerance``/``patience``/``repeats`` drive LiSSA (``tolerance`` = relative change of the
    iterate); ``cg_iters``/``cg_tolerance`` drive CG (relative residual). ``spectrum_iters`` Lanczos steps on a seeded
    subsample of at most ``spectrum_samples`` training rows give λ_max and λ_min of C. ``topk`` is the k of the
    top-k stability reported for LiSSA's repeats. ``dtype`` applies to ``lissa``/``cg``/``ekfac``; ``exact`` always
    uses float64. ``score_batch_size`` is the batch size of :func:`score_samples`.
    """

    method: str = "cg"
    curvature: str = "gauss_newton"
    params: str | list[str] = "all"
    target: str = "validation"
    damping: float = 0.01
    scale: str | float = "auto"
    safety_factor: float = 1.5
    depth: int = 1000
    repeats: int = 2
    batch_size: int = 32
    tolerance: float = 5e-5
    patience: int = 10
    cg_iters: int = 14
    cg_tolerance: float = 1e-3
    chunk_size: int = 32
    spectrum_iters: int = 30
    spectrum_samples: int = 256
    topk: int = 20
    seed: int = 0
    dtype: str = "float32"
    hvp_mode: str = "double_backward"
    score_batch_size: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.params, tuple):
            self.params = list(self.params)
        check_fields(self, {f.name: f"influence.{f.name}" for f in fields(self)})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (round-trips through :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InfluenceArgs:
        """Build from a config section; unknown keys are errors (a typo must not fall back to a default)."""
        return from_section(cls, d, "influence")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype the solver works in (float64 for ``exact`` whatever ``dtype`` says)."""
        return torch.float64 if self.method == "exact" else DTYPES[self.dtype]

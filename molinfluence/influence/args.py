"""The options of the influence step (``influence:`` in the config) and the errors the engine raises."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConfigError, check_fields, section_schema
from ..rule_keys import WORKFLOW_KEYS

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
class SpectrumArgs:
    """Lanczos phase: ``iters`` steps on a seeded subsample of at most ``samples`` training rows give λ_max and λ_min
    of C (config keys ``influence.spectrum_iters`` / ``influence.spectrum_samples``); used by ``cg``, ``lissa`` and
    ``ekfac`` (``exact`` reads the dense spectrum)."""

    iters: int = 30
    samples: int = 256

    KEYS = {"iters": "influence.spectrum_iters", "samples": "influence.spectrum_samples"}

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)


@dataclass
class CGArgs:
    """Conjugate-gradient phase: at most ``iters`` full-split products, stopped at relative residual ``tolerance``
    (config keys ``influence.cg_iters`` / ``influence.cg_tolerance``)."""

    iters: int = 14
    tolerance: float = 1e-3

    KEYS = {"iters": "influence.cg_iters", "tolerance": "influence.cg_tolerance"}

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)


@dataclass
class LissaArgs:
    """LiSSA phase: ``repeats`` recursions of at most ``depth`` steps on mini-batches of ``batch_size`` rows, each
    stopped when the relative change of the iterate stays below ``tolerance`` for ``patience`` steps; scale σ is
    ``safety_factor × λ̂_max(C + λI)`` for ``scale: auto`` (config keys ``influence.<field>``, the same names)."""

    scale: str | float = "auto"
    safety_factor: float = 1.5
    depth: int = 1000
    repeats: int = 2
    batch_size: int = 32
    tolerance: float = 5e-5
    patience: int = 10

    KEYS = {name: f"influence.{name}" for name in
            ("scale", "safety_factor", "depth", "repeats", "batch_size", "tolerance", "patience")}

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)


@dataclass
class ScoringArgs:
    """Scoring phase: ``batch_size`` rows per batch of :func:`score_samples` (config key
    ``influence.score_batch_size``; memory only) and the k of the top-k stability reported for LiSSA's repeats
    (``influence.topk``)."""

    batch_size: int = 64
    topk: int = 20

    KEYS = {"batch_size": "influence.score_batch_size", "topk": "influence.topk"}

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)


PHASES: dict[str, type] = {"spectrum": SpectrumArgs, "cg": CGArgs, "lissa": LissaArgs, "scoring": ScoringArgs}
"""The options of each phase, by the name of their field in :class:`InfluenceArgs`."""

@dataclass
class InfluenceArgs:
    """Options of the influence step (``influence:`` in the config), grouped by phase; saved as JSON beside its
    outputs (flat, under the config's keys: :meth:`to_dict`).

    Shared by every phase: ``method``: the estimator (``cg`` default, ``lissa``, ``exact``, ``ekfac``);
    ``curvature``: the matrix C that replaces H (``gauss_newton`` default: ``G = (2/n) Σ wᵢ JᵢᵀJᵢ``, positive
    semi-definite; ``hessian``: the full Hessian); ``params``: the parameter subset; ``damping``: relative to
    λ_max(C); ``dtype`` (``lissa``/``cg``/``ekfac``; ``exact`` always uses float64); ``hvp_mode``; ``chunk_size``:
    rows per forward/backward pass of every full-split product (memory only: it never changes a result beyond
    rounding); ``seed``. Per phase: :class:`SpectrumArgs` (Lanczos), :class:`CGArgs`, :class:`LissaArgs`,
    :class:`ScoringArgs`. The workflow's ``influence.target`` is not an option here (:data:`WORKFLOW_KEYS`).
    """

    method: str = "cg"
    curvature: str = "gauss_newton"
    params: str | list[str] = "all"
    damping: float = 0.01
    dtype: str = "float32"
    hvp_mode: str = "double_backward"
    chunk_size: int = 32
    seed: int = 0
    spectrum: SpectrumArgs = field(default_factory=SpectrumArgs)
    cg: CGArgs = field(default_factory=CGArgs)
    lissa: LissaArgs = field(default_factory=LissaArgs)
    scoring: ScoringArgs = field(default_factory=ScoringArgs)

    SHARED = ("method", "curvature", "params", "damping", "dtype", "hvp_mode", "chunk_size", "seed")
    KEYS = {name: f"influence.{name}" for name in SHARED}

    def __post_init__(self) -> None:
        if isinstance(self.params, tuple):
            self.params = list(self.params)
        check_fields(self, self.KEYS)
        for name, cls in PHASES.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"InfluenceArgs.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict under the config's flat keys (round-trips through :meth:`from_dict`)."""
        flat = {name: getattr(self, name) for name in self.SHARED}
        for phase, cls in PHASES.items():
            options = getattr(self, phase)
            flat.update({key.removeprefix("influence."): getattr(options, name) for name, key in cls.KEYS.items()})
        return flat

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InfluenceArgs:
        """Build from the config section (its flat keys); unknown keys are errors (a typo must not fall back to a
        default). The workflow's keys (:data:`WORKFLOW_KEYS`) are accepted and left out."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"config key `influence` must be a mapping of options, got {type(d).__name__}")
        values = {k: v for k, v in d.items() if k not in WORKFLOW_KEYS}
        known = list(option_keys())
        unknown = sorted(set(values) - set(known))
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"config: unknown key {unknown[0]!r}{hint} in `influence`; allowed keys: {', '.join(known)}")
        groups = {
            phase: phase_cls(**{name: values.pop(key.removeprefix("influence."))
                                for name, key in phase_cls.KEYS.items() if key.removeprefix("influence.") in values})
            for phase, phase_cls in PHASES.items()
        }
        return cls(**values, **groups)

    @classmethod
    def of(cls, **flat: Any) -> InfluenceArgs:
        """``InfluenceArgs.of(method="lissa", depth=200)``: :meth:`from_dict` with keyword arguments."""
        return cls.from_dict(flat)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype the solver works in (float64 for ``exact`` whatever ``dtype`` says)."""
        return torch.float64 if self.method == "exact" else DTYPES[self.dtype]


def option_keys() -> dict[str, str]:
    """Every option's config key (``influence.<key>``, without the prefix) -> its phase (``shared``, ``spectrum``,
    ``cg``, ``lissa``, ``scoring``)."""
    keys = {name: "shared" for name in InfluenceArgs.SHARED}
    for phase, cls in PHASES.items():
        keys.update({key.removeprefix("influence."): phase for key in cls.KEYS.values()})
    return keys

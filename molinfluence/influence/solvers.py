"""Solvers of ``(C + λI) x = v`` as functions of a curvature operator ``op(vec, rows=None)`` (:class:`CurvatureOperator`).

- :func:`lissa` — the stochastic recursion of Agarwal et al. (2017) on ``A = C + λI`` with scale ``σ``::

      h₀ = v,   hⱼ = v + (I − A_Bⱼ / σ) hⱼ₋₁,   s ≈ h_J / σ

  where ``A_Bⱼ`` uses a seeded mini-batch ``Bⱼ`` of the training split (``batch_size`` ≥ n gives the exact,
  deterministic Richardson iteration). It converges when ``σ > λ_max(A)/2`` and ``λ_min(A) > 0``, at rate
  ``1 − λ_min(A)/σ`` per step. ``scale: auto`` uses ``σ = safety_factor × λ̂_max(A)``. The stop rule "relative change
  ``‖hⱼ − hⱼ₋₁‖ / ‖hⱼ‖`` below ``tolerance`` for ``patience`` steps" bounds the relative error by about ``tolerance ×
  σ / λ_min(A)`` for full batches (``error_estimate``). ``repeats`` independent runs are averaged.
- :func:`cg` — conjugate gradients on ``A`` with full-split products; stops when ``‖v − A x‖ / ‖v‖ < cg_tolerance``
  or after ``cg_iters`` iterations. For the Gauss–Newton matrix A is positive definite for any λ > 0.
- :func:`dense_solve` — ``(C + λI)⁻¹ v`` through the eigendecomposition of a dense C (the reference).

Safeguards: a negative ``λ̂_min + λ`` proves A indefinite (:class:`NegativeCurvature` with the damping that fixes it).
LiSSA stops when its iterate becomes non-finite or exceeds ``DIVERGENCE_FACTOR × σ‖v‖ / λ̂_min(A)`` and diagnoses the
cause from the curvature of the diverging iterate; CG raises on a direction with ``pᵀAp ≤ 0``. Both raise when the
estimate's full-split residual is no better than that of ``s = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .args import DIVERGENCE_FACTOR, LissaArgs, InfluenceDivergence, negative_curvature
from .curvature import CurvatureOperator
from .spectrum import EigenEstimate

_MAX_TRACE_POINTS = 200  # convergence-trace points kept per run


@dataclass
class SolveResult:
    """A solver's estimate of ``(C + λI)⁻¹ v`` (flat), per-repeat estimates, and its JSON-able diagnostics."""

    x: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    repeats: list[torch.Tensor] = field(default_factory=list)


def relative_residual(op: CurvatureOperator, v: torch.Tensor, x: torch.Tensor, lam: float) -> float:
    """``‖v − (C + λI) x‖ / ‖v‖`` with a full-split product (1 means no better than x = 0)."""
    return float((v - op(x) - lam * x).norm() / v.norm())


def resolve_scale(args: LissaArgs, eigs: EigenEstimate, lam: float) -> float:
    """LiSSA's σ: ``safety_factor × λ̂_max(C + λI)`` for ``scale: auto``, else the given number."""
    return args.safety_factor * (eigs.top + lam) if args.scale == "auto" else float(args.scale)


def _lissa_divergence(
    op: CurvatureOperator, h: torch.Tensor, lam: float, scale: float, eigs: EigenEstimate, step: int, rep: int,
    norm: float, bound: float,
) -> InfluenceDivergence:
    """Diagnose a diverging recursion from the curvature ``q = hᵀCh / hᵀh`` of its last finite iterate ``h``."""
    q = float(torch.dot(h, op(h)) / torch.dot(h, h))
    what = "became non-finite" if not math.isfinite(norm) else f"reached ‖h‖ = {norm:.4g} > {bound:.4g}"
    if math.isfinite(q) and q + lam <= 0:
        return negative_curvature(q, eigs.top, lam / eigs.top, f"LiSSA (diverged at step {step}; its iterate)")
    return InfluenceDivergence(
        f"LiSSA diverged at step {step} of repeat {rep + 1}: the iterate {what}. The recursion converges only when "
        f"the scale σ = {scale:.4g} exceeds λ_max(C + λI)/2 (estimate λ_max ≈ {eigs.top + lam:.4g}; the diverging "
        f"direction has curvature {q + lam:.4g}; mini-batch curvatures can be larger) and C + λI is positive "
        "definite. Use influence.scale: auto or a larger influence.scale / influence.safety_factor, a larger "
        "influence.batch_size, or a larger influence.damping."
    )


def lissa(
    op: CurvatureOperator, v: torch.Tensor, lam: float, eigs: EigenEstimate, args: LissaArgs, seed: int,
    progress: bool = False
) -> SolveResult:
    """LiSSA for ``(C + λI)⁻¹ v`` with absolute damping ``lam`` (module docstring).

    Mini-batches of ``args.batch_size`` rows are drawn without replacement from a permutation of the training split
    (seeded by ``seed``, reshuffled when exhausted); ``batch_size ≥ n`` uses the full split every step.
    """
    if eigs.top <= 0 or eigs.bottom + lam <= 0:
        raise negative_curvature(eigs.bottom, eigs.top, lam / eigs.top if eigs.top > 0 else 0.0, "the spectrum estimate")
    train = op.data
    scale = resolve_scale(args, eigs, lam)
    floor = min(x for x in (lam, eigs.bottom + lam) if x > 0)  # a lower bound on λ_min(C + λI) as far as we know
    bound = DIVERGENCE_FACTOR * scale * float(v.norm()) / floor
    n, full = len(train), args.batch_size >= len(train)
    gen = torch.Generator().manual_seed(seed)
    log_every = max(1, args.depth // _MAX_TRACE_POINTS)
    estimates: list[torch.Tensor] = []
    repeats: list[dict[str, Any]] = []
    traces: list[list[list[float]]] = []
    with tqdm(total=args.depth * args.repeats, desc="LiSSA", disable=not progress, leave=False) as bar:
        for rep in range(args.repeats):
            h = v.clone()
            perm, pos = torch.randperm(n, generator=gen), 0
            calm, rel, converged, step = 0, math.inf, False, 0
            trace: list[list[float]] = []
            for step in range(1, args.depth + 1):
                if full:
                    batch = None
                else:
                    if pos + args.batch_size > n:
                        perm, pos = torch.randperm(n, generator=gen), 0
                    batch = train.subset(perm[pos : pos + args.batch_size])
                    pos += args.batch_size
                h_new = v + h - (op(h, batch) + lam * h) / scale
                norm = float(h_new.norm())
                if not math.isfinite(norm) or norm > bound:
                    raise _lissa_divergence(op, h, lam, scale, eigs, step, rep, norm, bound)
                rel = float((h_new - h).norm()) / norm
                h = h_new
                calm = calm + 1 if rel < args.tolerance else 0
                bar.update(1)
                if step % log_every == 0:
                    trace.append([step, rel])
                    bar.set_postfix(repeat=rep + 1, rel_change=f"{rel:.2e}", refresh=False)  # drawn at tqdm's interval
                if calm >= args.patience:
                    converged = True
                    break
            if not trace or trace[-1][0] != step:
                trace.append([step, rel])
            estimates.append(h / scale)
            traces.append(trace)
            repeats.append(
                {"steps": step, "converged": converged, "final_relative_change": rel, "norm": float(h.norm()) / scale}
            )
    x = torch.stack(estimates).mean(dim=0)
    residual = relative_residual(op, v, x, lam)
    if not math.isfinite(residual) or residual >= 1.0:
        raise InfluenceDivergence(
            f"LiSSA's estimate has full-batch relative residual ‖v − (C + λI)s‖/‖v‖ = {residual:.3g} ≥ 1, no better "
            f"than s = 0 (σ = {scale:.4g}, λ̂_max(C + λI) = {eigs.top + lam:.4g}): increase influence.scale or "
            "influence.safety_factor, influence.batch_size, influence.repeats or influence.damping; or use "
            "influence.method: cg."
        )
    norms = [r["norm"] for r in repeats]
    mean_norm = sum(norms) / len(norms)
    spread = vector_spread = None
    if len(norms) > 1 and mean_norm > 0:
        spread = math.sqrt(sum((q - mean_norm) ** 2 for q in norms) / (len(norms) - 1)) / mean_norm
        vector_spread = sum(float((e - x).norm()) for e in estimates) / len(estimates) / float(x.norm())
    last = max(r["final_relative_change"] for r in repeats)
    return SolveResult(
        x=x,
        repeats=estimates,
        stats={
            "scale": scale,
            "scale_mode": "auto" if args.scale == "auto" else "fixed",
            "full_batch": full,
            "steps": [r["steps"] for r in repeats],
            "converged": all(r["converged"] for r in repeats),
            "repeats": repeats,
            "repeat_norms": norms,
            "repeat_norm_spread": spread,
            "repeat_vector_spread": vector_spread,
            "relative_residual": residual,
            # ‖residual‖/λ_min bound on the error; mini-batch noise dominates the change, so only for full batches.
            "error_estimate": last * scale / floor if full else None,
            "divergence_bound": bound,
            "convergence_trace": traces,
        },
    )


def cg(
    op: CurvatureOperator, v: torch.Tensor, lam: float, iters: int, tolerance: float, top: float | None = None,
    damping: float = 0.0, progress: bool = False,
) -> SolveResult:
    """Conjugate gradients on ``(C + λI) x = v`` (absolute damping ``lam``) with full-split products.

    Stops when the recursive relative residual drops below ``tolerance`` (at most ``iters`` iterations). A direction
    ``p`` with ``pᵀ(C + λI)p ≤ 0`` proves the problem indefinite: :class:`NegativeCurvature` (``top`` = λ̂_max(C) and
    the relative ``damping`` make its message).
    """
    vnorm = float(v.norm())
    x = torch.zeros_like(v)
    r = v.clone()
    p = r.clone()
    rs = float(torch.dot(r, r))
    rel, converged, k = 1.0, False, 0
    trace: list[list[float]] = []
    for k in tqdm(range(1, iters + 1), desc="CG", disable=not progress, leave=False):
        cp = op(p)
        pcp, pp = float(torch.dot(p, cp)), float(torch.dot(p, p))
        if not math.isfinite(pcp):
            raise InfluenceDivergence(f"CG met a non-finite curvature at iteration {k}: the loss derivatives are not finite")
        if pcp + lam * pp <= 0:
            est_top = top if top is not None else float(torch.dot(v, op(v))) / vnorm**2
            raise negative_curvature(pcp / pp, est_top, damping, f"conjugate gradient (iteration {k})")
        alpha = rs / (pcp + lam * pp)
        x = x + alpha * p
        r = r - alpha * (cp + lam * p)
        rs_new = float(torch.dot(r, r))
        rel = math.sqrt(rs_new) / vnorm
        trace.append([k, rel])
        if rel < tolerance:
            converged = True
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    residual = relative_residual(op, v, x, lam)
    if not math.isfinite(residual) or residual >= 1.0:
        raise InfluenceDivergence(f"CG's estimate has relative residual {residual:.3g} ≥ 1; increase influence.damping")
    return SolveResult(
        x=x,
        repeats=[x],
        stats={
            "steps": [k],
            "converged": converged,
            "relative_residual": residual,
            "recursive_residual": rel,
            "convergence_trace": [trace[:: max(1, len(trace) // _MAX_TRACE_POINTS)]],
        },
    )


def dense_solve(matrix: torch.Tensor, v: torch.Tensor, lam: float) -> SolveResult:
    """``(C + λI)⁻¹ v`` through the eigendecomposition of the dense ``matrix`` (absolute damping ``lam``)."""
    evals, evecs = torch.linalg.eigh(matrix)
    lam_min, lam_max = float(evals[0]), float(evals[-1])
    if lam_max <= 0 or lam_min + lam <= 0:
        raise negative_curvature(lam_min, lam_max, lam / lam_max if lam_max > 0 else 0.0, "the exact eigendecomposition")
    v = v.to(matrix.device, matrix.dtype)
    x = evecs @ ((evecs.T @ v) / (evals + lam))
    return SolveResult(
        x=x,
        repeats=[x],
        stats={
            "lambda_max_C": lam_max,
            "lambda_min_C": lam_min,
            "lambda_max_A": lam_max + lam,
            "lambda_min_A": lam_min + lam,
            "condition_number_A": (lam_max + lam) / (lam_min + lam),
            "relative_residual": float((v - matrix @ x - lam * x).norm() / v.norm()),
            "steps": [1],
            "converged": True,
        },
    )

"""Both ends of the curvature's spectrum from one Lanczos run.

Power iteration converges to the eigenvalue of largest *magnitude*, which for an indefinite Hessian can be the most
negative one: it then reports a tiny or negative "λ_max" and a damping relative to it is meaningless. Lanczos builds
the Krylov space ``span{u, Cu, …, C^{k−1}u}`` and the eigenvalues of its tridiagonal projection ``T_k`` (Ritz values);
the smallest and the largest converge to λ_min(C) and λ_max(C) together, whichever is larger in magnitude. Ritz values
lie inside the spectrum, so ``bottom ≥ λ_min`` and ``top ≤ λ_max`` always hold; a negative ``bottom`` proves C
indefinite. The Lanczos vectors are fully re-orthogonalised (k ≤ a few dozen vectors), so no ghost copies appear.
The run stops, after at least ``MIN_STEPS`` steps, when the residual bound ``β_k |e_kᵀ y|`` of each extreme Ritz pair
is below ``rtol`` times its own value (floored at 1 % of the largest magnitude), so each end is within that relative
distance of an eigenvalue; or when the Krylov space is exhausted (then they are exact).

On a large training split the products use a seeded subsample of its rows (``influence.spectrum_samples``): the
spectrum only sets the damping's scale and the LiSSA scale, which need a few digits, not the whole split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .args import InfluenceDivergence, negative_curvature
from .curvature import CurvatureOperator

LANCZOS_RTOL = 1e-3
MIN_STEPS = 8  # never stop before this many steps: a Krylov space that small can miss an isolated extreme eigenvalue


@dataclass
class EigenEstimate:
    """Estimates of the curvature's extreme eigenvalues (Ritz values: ``top ≤ λ_max``, ``bottom ≥ λ_min``)."""

    top: float
    bottom: float
    iterations: int
    rows: int | None = None
    converged: bool | None = None
    method: str = "lanczos"

    def absolute_damping(self, damping: float) -> float:
        """λ for a relative ``damping``: ``damping × λ̂_max``."""
        return damping * self.top

    def check(self, damping: float) -> None:
        """Raise :class:`NegativeCurvature` unless ``C + λI`` is positive definite as far as the estimates show."""
        lam = self.absolute_damping(damping)
        if self.top <= 0 or self.bottom + lam <= 0:
            raise negative_curvature(self.bottom, self.top, damping, f"the {self.method} spectrum estimate")

    def to_dict(self, damping: float) -> dict[str, Any]:
        """JSON-able summary for relative ``damping``."""
        lam = self.absolute_damping(damping)
        return {
            "lambda_max_C": self.top,
            "lambda_min_C": self.bottom,
            "lambda_max_A": self.top + lam,
            "lambda_min_A": self.bottom + lam,
            "condition_number_A": (self.top + lam) / (self.bottom + lam) if self.bottom + lam > 0 else None,
            "spectrum_method": self.method,
            "spectrum_iterations": self.iterations,
            "spectrum_rows": self.rows,
            "spectrum_converged": self.converged,
        }


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    iters: int,
    rtol: float = LANCZOS_RTOL,
    progress: bool = False,
) -> EigenEstimate:
    """Smallest and largest Ritz values of the symmetric operator ``matvec`` after at most ``iters`` Lanczos steps."""
    q = start / start.norm()
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    lo = hi = math.nan
    converged = False
    with tqdm(total=iters, desc="Lanczos", disable=not progress, leave=False) as bar:
        for k in range(1, iters + 1):
            w = matvec(q)
            alpha = float(torch.dot(q, w))
            if not math.isfinite(alpha):
                raise InfluenceDivergence(
                    "the curvature product produced a non-finite value: the model's loss or its derivatives are not "
                    "finite at the trained parameters"
                )
            alphas.append(alpha)
            stacked = torch.stack(basis)
            for _ in range(2):  # full re-orthogonalisation, twice is enough ("twice is enough", Kahan/Parlett)
                w = w - stacked.T @ (stacked @ w)
            beta = float(w.norm())
            t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if betas:
                off = torch.tensor(betas, dtype=torch.float64)
                t = t + torch.diag(off, 1) + torch.diag(off, -1)
            evals, evecs = torch.linalg.eigh(t)
            lo, hi = float(evals[0]), float(evals[-1])
            bar.update(1)
            size = max(abs(lo), abs(hi), 1e-300)
            # Residual bound of each extreme Ritz pair, relative to its own value (floored at 1 % of the spectrum's
            # size: a λ_min near 0 need not be resolved below the smallest damping that is ever used).
            ok = all(beta * abs(float(evecs[-1, j])) <= rtol * max(abs(float(evals[j])), 1e-2 * size) for j in (0, -1))
            if beta <= 1e-10 * size or (ok and k >= min(MIN_STEPS, iters)):
                converged = True
                break
            if k == iters or len(basis) >= start.numel():
                converged = len(basis) >= start.numel()
                break
            betas.append(beta)
            q = w / beta
            basis.append(q)
    return EigenEstimate(top=hi, bottom=lo, iterations=len(alphas), converged=converged)


def estimate_spectrum(
    matvec: Callable[..., torch.Tensor],
    train: Any,
    numel: int,
    like: torch.Tensor,
    iters: int = 30,
    max_rows: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> EigenEstimate:
    """λ_max and λ_min of a curvature operator ``matvec(vec, rows)`` over ``train`` (a seeded subsample of at most
    ``max_rows`` rows when the split is larger) by :func:`lanczos` from a seeded start vector."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(numel, generator=gen, dtype=torch.float64).to(like.device, like.dtype)
    rows = train
    if max_rows is not None and len(train) > max_rows:
        rows = train.subset(torch.sort(torch.randperm(len(train), generator=gen)[:max_rows]).values)
    est = lanczos(lambda u: matvec(u, rows), start, iters, progress=progress)
    est.rows = len(rows)
    return est


def estimate_eigs(
    obj: Any,
    train: Any,
    iters: int = 30,
    batch_size: int | None = None,
    seed: int = 0,
    mode: str = "double_backward",
    progress: bool = False,
    curvature: str = "hessian",
    max_rows: int | None = None,
) -> EigenEstimate:
    """λ_max and λ_min of the Hessian (or ``curvature``) of the mean loss over ``train`` by Lanczos."""
    op = CurvatureOperator(obj, train, curvature, mode, batch_size)
    return estimate_spectrum(op, train, obj.numel, obj.theta0, iters, max_rows, seed, progress)

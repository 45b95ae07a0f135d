"""Estimators of ``s = (C + λI)⁻¹ v``: one entry point, :func:`compute_ihvp`, for every method and curvature.

``v = ∇θ L_target``; C the Hessian or the Gauss–Newton matrix of the mean training loss (:mod:`.curvature`); the
damping ``λ = influence.damping × λ_max(C)`` with λ_max from Lanczos (:mod:`.spectrum`; exact for ``exact``).

Costs are reported in ``stats`` as ``hvp_full_equivalents``: the curvature products the estimate needed, in units of
one product over the whole training split (the spectrum's products on a subsample count by their rows).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from scipy import stats as sstats
from torch import nn

from ..metrics import correlation_defined, topk_overlap
from .args import InfluenceArgs, InfluenceDivergence
from .curvature import CurvatureOperator, exact_curvature
from .io import IHVPResult
from .scoring import directional_scores
from .solvers import SolveResult, cg, dense_solve, lissa
from .spectrum import estimate_spectrum
from .task import Rows, SubsetObjective, eval_mode, loss_gradient, split_loss

CURVATURE_WORDS = {
    "hessian": "the Hessian H of the mean training loss",
    "gauss_newton": "the Gauss-Newton matrix G = (2/n) sum_i w_i J_i^T J_i of the mean training loss",
}


def holds(method: str, curvature: str) -> str:
    """What ``hessian_inverse_fast.pt`` holds for ``method`` (stored as ``stats["holds"]``)."""
    if method == "ekfac":
        return ("s = (G_ekfac + lambda I)^-1 v: kronfluence's EK-FAC approximation of the Gauss-Newton matrix "
                "(eigenbasis of the Kronecker factors, eigenvalues corrected on the training split) applied to the "
                "gradient of the target loss, over the weights and biases of the nn.Linear modules inside "
                "influence.params only (other parameters are not in the file and do not contribute to the scores)")
    how = {"exact": "dense eigendecomposition", "cg": "conjugate gradients", "lissa": "LiSSA"}[method]
    return f"s = (C + lambda I)^-1 v by {how}, C = {CURVATURE_WORDS[curvature]}, v = gradient of the target loss"


def exact(
    obj: SubsetObjective, train: Rows, v: torch.Tensor, lam: float, batch_size: int | None = None,
    curvature: str = "hessian",
) -> SolveResult:
    """Dense reference solve of ``(C + λI) x = v`` with absolute damping ``lam`` (use a float64 ``obj``).

    Raises :class:`NegativeCurvature` when ``λ_min(C) + λ ≤ 0`` and ValueError above :data:`MAX_EXACT_PARAMS`.
    """
    return dense_solve(exact_curvature(obj, train, curvature, batch_size), v, lam)


def topk_stability(
    obj: SubsetObjective, estimates: list[torch.Tensor], probe: Rows, k: int, batch_size: int
) -> dict[str, Any] | None:
    """How much the ranking of probe samples changes between the solver's independent repeats.

    Each repeat's estimate scores the ``probe`` rows (the score formula of :func:`score_samples`); for every pair of
    repeats the overlap of the ``k`` most negative (most helpful) is reported as a fraction, with Spearman's rank
    correlation. None with fewer than two repeats.
    """
    if len(estimates) < 2:
        return None
    k = max(1, min(k, len(probe) // 2))
    scores = [directional_scores(obj, e, probe, batch_size) for e in estimates]
    overlaps, spearman = [], []
    for a in range(len(scores)):
        for b in range(a + 1, len(scores)):
            x, y = scores[a].numpy(), scores[b].numpy()
            overlaps.append(topk_overlap(x, y, k))
            if correlation_defined(x, y):
                spearman.append(float(sstats.spearmanr(x, y).statistic))
    return {
        "probe": f"{len(probe)} seeded training rows scored with each repeat's estimate",
        "k": k,
        "overlap_min": min(overlaps),
        "overlap_mean": sum(overlaps) / len(overlaps),
        "spearman_min": min(spearman) if spearman else None,
    }


def _probe_rows(train: Rows, size: int, seed: int) -> Rows:
    if len(train) <= size:
        return train
    gen = torch.Generator().manual_seed(seed + 1)
    return train.subset(torch.sort(torch.randperm(len(train), generator=gen)[:size]).values)


PROBE_ROWS = 256


def compute_ihvp(
    model: nn.Module, train: Rows, target: Rows, args: InfluenceArgs | Mapping[str, Any], progress: bool = True,
    factors_dir: str | os.PathLike[str] | None = None,
) -> IHVPResult:
    """``s = (C + λI)⁻¹ ∇θ L_target`` for the trained ``model`` (see :mod:`molinfluence.influence`).

    ``train`` defines C (the model's training split), ``target`` defines v (validation by default). The model is put
    in eval mode for the computation and restored afterwards; its parameters are not modified. ``factors_dir``
    (``ekfac`` only) keeps kronfluence's fitted factors, named after what they were fitted on, for reuse.
    """
    if not isinstance(args, InfluenceArgs):
        args = InfluenceArgs.from_dict(args)
    start = time.perf_counter()
    other = 0.0  # gradient and probe passes, in full-split units
    with eval_mode(model):
        obj = SubsetObjective(model, args.params, args.torch_dtype)
        obj.check_deterministic(train)
        v = loss_gradient(obj, target, args.chunk_size)
        other += len(target) / len(train)
        vnorm = float(v.norm())
        if not math.isfinite(vnorm):
            raise InfluenceDivergence(f"the gradient of the {target.name} loss is not finite: check the model and labels")
        if vnorm == 0.0:
            raise ValueError(
                f"influence.params selects parameters that the {target.name} loss does not depend on (its gradient is "
                "exactly zero), so every score would be 0; choose other influence.params"
            )
        op = CurvatureOperator(obj, train, args.curvature, args.hvp_mode, args.chunk_size)
        spectrum: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if args.method == "exact":
            matrix = exact_curvature(obj, train, args.curvature, args.chunk_size)
            op.rows += len(train) * obj.numel  # one product per basis vector
            top = float(torch.linalg.eigvalsh(matrix)[-1])
            lam = args.damping * top if top > 0 else 0.0
            result = dense_solve(matrix, v, lam)
            names = obj.names
        elif args.method == "ekfac":
            from .ekfac import ekfac_ihvp  # kronfluence is imported only when EK-FAC is asked for

            result, eigs, names, extra, products = ekfac_ihvp(model, obj, train, v, args, progress, factors_dir)
            lam = eigs.absolute_damping(args.damping)
            spectrum = eigs.to_dict(args.damping)
            op.rows += round(products * len(train))
        else:
            eigs = estimate_spectrum(op, train, obj.numel, obj.theta0, args.spectrum.iters, args.spectrum.samples,
                                     args.seed, progress)
            eigs.check(args.damping)
            lam = eigs.absolute_damping(args.damping)
            spectrum = eigs.to_dict(args.damping)
            v = v.to(obj.device, obj.dtype)
            if args.method == "lissa":
                result = lissa(op, v, lam, eigs, args.lissa, args.seed, progress)
            else:
                result = cg(op, v, lam, args.cg.iters, args.cg.tolerance, eigs.top, args.damping, progress)
            names = obj.names
        stability = None
        if len(result.repeats) > 1:
            probe = _probe_rows(train, PROBE_ROWS, args.seed)
            stability = topk_stability(obj, result.repeats, probe, args.scoring.topk, args.scoring.batch_size)
            other += len(result.repeats) * len(probe) / len(train)
        train_loss = split_loss(obj, train, args.chunk_size)
        target_loss = split_loss(obj, target, args.chunk_size)
    x = result.x
    if not bool(torch.isfinite(x).all()):
        raise InfluenceDivergence(f"the {args.method} solver returned non-finite values; increase influence.damping")
    stats: dict[str, Any] = {
        "method": args.method,
        "curvature": "gauss_newton (EK-FAC)" if args.method == "ekfac" else args.curvature,
        "holds": holds(args.method, args.curvature),
        "params": args.params,
        "target": target.name,
        "n_params": int(x.numel()),
        "n_train": len(train),
        "n_target": len(target),
        "dtype": str(x.dtype).removeprefix("torch."),
        "hvp_mode": args.hvp_mode,
        "chunk_size": args.chunk_size,
        "damping": args.damping,
        "lambda": lam,
        "train_loss": train_loss,
        "target_loss": target_loss,
        "target_gradient_norm": vnorm,
        "norm": float(x.norm()),
        "min": float(x.min()),
        "max": float(x.max()),
        **spectrum,
        **result.stats,
        **extra,
        "topk_stability": stability,
        "hvp_full_equivalents": op.full_equivalents,
        "other_full_equivalents": other,
        "seconds": time.perf_counter() - start,
    }
    flat = obj.unflatten(x) if names == obj.names else _unflatten(x, model, names)
    ihvp = {n: t.detach().to("cpu").clone() for n, t in flat.items()}
    return IHVPResult(ihvp=ihvp, stats=stats, args=args.to_dict())


def _unflatten(x: torch.Tensor, model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    sizes = [params[n].numel() for n in names]
    return {n: t.view(params[n].shape) for n, t in zip(names, x.split(sizes))}


__all__ = ["compute_ihvp", "exact", "holds", "topk_stability"]

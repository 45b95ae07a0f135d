"""The convex reference: the head on frozen features, retrained to convergence with and without each sample."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..batch import Batch, FeatureBatch
from ..influence import InfluenceArgs, InfluenceDivergence, compute_ihvp, score_samples
from ..loss import squared_error
from ..regressor import head_inputs

# Convex solves stop when ‖∇F‖_∞ ≤ _LBFGS_GRAD_TOL × max(1, ‖∇F(center)‖_∞) or a round of L-BFGS no longer reduces
# it (the objective's float64 rounding, about 1e-16 × F, limits how small the gradient can be made: typically
# 1e-8 relative); a solve that ends above _LBFGS_FAIL_TOL has not converged.
_LBFGS_GRAD_TOL = 1e-10
_LBFGS_FAIL_TOL = 1e-6
_LBFGS_MAX_ROUNDS = 20


class FrozenFeatureHead(nn.Module):
    """The regressor with its encoder frozen: a copy of its head applied to cached head inputs (float64).

    It plugs into :mod:`molinfluence.influence` through the same seam as the regressor: ``model(features) -> (B,)``
    on a :class:`~molinfluence.influence.FeatureBatch`, the parameter group ``"head"`` (``head.weight``,
    ``head.bias``, the regressor's names).
    """

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = copy.deepcopy(head).to("cpu", torch.float64)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(-1)

    def influence_param_prefixes(self, spec: str) -> list[str] | None:
        return ["head"] if spec == "head" else None


@dataclass
class ConvexProblem:
    """The damped least-squares objective of the head on frozen features, in float64.

    ``F(θ) = mean((Xθ_w + θ_b − y)²) + Σ_z wᵢ (x_zθ_w + θ_b − y_z)² + (λ/2)‖θ − center‖²`` with θ = (weight, bias)
    flattened in the order of ``head.weight``, ``head.bias``.
    """

    x: torch.Tensor
    y: torch.Tensor
    lam: float
    center: torch.Tensor

    def predict(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x @ theta[:-1] + theta[-1]

    def errors(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-row squared error of the head ``theta`` on features ``x`` with labels ``y`` (the one regression loss)."""
        return squared_error(self.predict(theta, x), y)

    def objective(self, theta: torch.Tensor, extra: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> torch.Tensor:
        value = self.errors(theta, self.x, self.y).mean()
        value = value + 0.5 * self.lam * (theta - self.center).square().sum()
        if extra is not None:
            xz, yz, weight = extra
            value = value + weight * self.errors(theta, xz, yz).sum()
        return value

    def solve(self, start: torch.Tensor, extra: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> tuple[torch.Tensor, float]:
        """Minimise by L-BFGS (strong Wolfe line search) from ``start``; returns (θ*, final relative ‖∇F‖_∞).

        The gradient is measured relative to ``max(1, ‖∇F(center)‖_∞)``; raises :class:`InfluenceDivergence` if the
        solve ends above 1e-6 (see the tolerances at the top of the module).
        """
        with torch.enable_grad():
            def grad_at(t: torch.Tensor) -> torch.Tensor:
                t = t.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.objective(t, extra), t)
                return g

            scale = max(1.0, float(grad_at(self.center).abs().max()))
            theta = start.detach().clone().requires_grad_(True)
            opt = torch.optim.LBFGS(
                [theta], lr=1.0, max_iter=200, history_size=50, tolerance_grad=_LBFGS_GRAD_TOL * scale,
                tolerance_change=0.0, line_search_fn="strong_wolfe",
            )

            def closure() -> torch.Tensor:
                opt.zero_grad()
                value = self.objective(theta, extra)
                value.backward()
                return value

            rel = math.inf
            for _ in range(_LBFGS_MAX_ROUNDS):
                opt.step(closure)
                previous, rel = rel, float(grad_at(theta).abs().max()) / scale
                if rel <= _LBFGS_GRAD_TOL or not rel < previous:
                    break
        if not rel <= _LBFGS_FAIL_TOL:
            raise InfluenceDivergence(
                f"the convex reference (head on frozen features) did not converge: relative gradient {rel:.3g} > "
                f"{_LBFGS_FAIL_TOL:g} after L-BFGS; the damped problem is ill conditioned, increase influence.damping"
            )
        return theta.detach(), rel


def _flat_head(head: nn.Linear) -> torch.Tensor:
    return torch.cat([head.weight.detach().reshape(-1), head.bias.detach().reshape(-1)]).to("cpu", torch.float64)


def _set_head(head: nn.Linear, theta: torch.Tensor) -> None:
    with torch.no_grad():
        d = head.in_features
        head.weight.copy_(theta[:d].view_as(head.weight).to(head.weight.dtype))
        head.bias.copy_(theta[d:].view_as(head.bias).to(head.bias.dtype))


def convex_reference(
    model: nn.Module,
    train: Batch,
    target: Batch,
    samples: Batch,
    influence: InfluenceArgs | Mapping[str, Any],
    seeds: Sequence[int],
    ext_index: Sequence[int] | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The convex setting (module docstring): head-only scores at θ*₀ and the measured effects of adding each sample.

    ``influence`` is the configured influence section; its ``params`` is replaced by ``"head"``. Returns
    ``(effects, scores, stats)``: ``effects`` has one row per (sample, seed) plus one baseline row per seed
    (``ext_index`` -1) with columns ``ext_index``, ``seed``, ``target_loss``; ``scores`` has ``ext_index`` and the
    head-only ``score`` at θ*₀; ``stats`` the damping, both IHVPs' diagnostics and the solver's convergence.
    """
    args = InfluenceArgs.from_dict({**(influence.to_dict() if isinstance(influence, InfluenceArgs) else influence), "params": "head"})
    n = len(train)
    ids = list(range(len(samples))) if ext_index is None else [int(i) for i in ext_index]
    x, x_t, x_s = head_inputs(model, train), head_inputs(model, target), head_inputs(model, samples)
    y, y_t, y_s = (b.labels.to(torch.float64) for b in (train, target, samples))
    frozen = FrozenFeatureHead(model.head)
    rows_train = FeatureBatch(x, y, name="train")
    rows_target = FeatureBatch(x_t, y_t, name=target.name)
    rows_samples = FeatureBatch(x_s, y_s, name=samples.name)

    theta_base = _flat_head(frozen.head)
    at_base = compute_ihvp(frozen, rows_train, rows_target, args, progress=progress)
    lam = float(at_base.stats["lambda"])
    problem = ConvexProblem(x, y, lam, theta_base)
    theta0, _ = problem.solve(theta_base)
    _set_head(frozen.head, theta0)
    at_opt = compute_ihvp(frozen, rows_train, rows_target, args, progress=progress)
    scores = score_samples(frozen, at_opt, rows_samples, batch_size=args.scoring.batch_size)

    def loss_t(theta: torch.Tensor) -> float:
        return float(problem.errors(theta, x_t, y_t).mean())

    shift = float((theta0 - theta_base).norm())
    worst = 0.0
    rows = []
    for seed in tqdm(seeds, desc="convex solves", disable=not progress, leave=False):
        gen = torch.Generator().manual_seed(int(seed))
        offset = torch.randn(theta_base.numel(), generator=gen, dtype=torch.float64)
        start = theta_base + offset * (shift / math.sqrt(theta_base.numel()))
        theta_s, rel = problem.solve(start)
        worst = max(worst, rel)
        rows.append({"ext_index": -1, "seed": int(seed), "target_loss": loss_t(theta_s)})
        for i, ext in enumerate(ids):
            theta_z, rel = problem.solve(start, (x_s[i : i + 1], y_s[i : i + 1], 1.0 / n))
            worst = max(worst, rel)
            rows.append({"ext_index": ext, "seed": int(seed), "target_loss": loss_t(theta_z)})
    keep = ("method", "damping", "lambda", "lambda_max_C", "lambda_min_C", "condition_number_A", "converged",
            "relative_residual", "error_estimate", "norm", "steps", "train_loss", "target_loss")
    stats = {
        "influence_params": "head",
        "n_params": int(theta_base.numel()),
        "lambda": lam,
        "lambda_at_optimum": float(at_opt.stats["lambda"]),
        "head_shift": shift,
        "head_norm": float(theta_base.norm()),
        "train_loss_base": float(problem.errors(theta_base, x, y).mean()),
        "train_loss_optimum": float(problem.errors(theta0, x, y).mean()),
        "target_loss_base": loss_t(theta_base),
        "target_loss_optimum": loss_t(theta0),
        "max_relative_gradient": worst,
        "ihvp": {k: at_opt.stats[k] for k in keep if k in at_opt.stats},
        "ihvp_args": at_opt.args,
    }
    scores_table = pd.DataFrame({"ext_index": ids, "score": scores.numpy()})
    effects = pd.DataFrame(rows, columns=["ext_index", "seed", "target_loss"])
    return effects, scores_table, stats

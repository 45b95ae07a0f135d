"""Does the influence score predict anything? Compare it with the measured effect of actually adding a sample.

Influence functions are exact for a convex model at its optimum and approximate (sometimes badly) for deep networks.
This module measures, for a few external samples z, what adding z to the training data really does to the target loss
and compares that with what the score predicted, for the user's own model and data.

Definitions:

- **n** — the size of the training split. **ℓ(z) = (f(z) − y)²**, **L** the mean of ℓ over a split (as in
  :mod:`molinfluence.influence` and :mod:`molinfluence.training`).
- **Predicted effect.** The score ``I(z) = −vᵀ(C + λI)⁻¹∇θℓ(z)`` is dL_target/dε for the objective
  ``L_train + ε ℓ(z)``. Adding one sample to a mean loss over n samples is ``(n·L_train + ℓ(z)) / (n + 1) =
  n/(n + 1) · (L_train + ℓ(z)/n)``: ε = 1/n (the factor n/(n + 1) scales the whole objective and does not move its
  minimiser). The predicted change of the target loss is therefore **Δ̂(z) = I(z) / n**.
- **Actual effect** for seed s: **Δ(z, s) = L_target(θ_s(z)) − L_target(θ_s)**, where θ_s(z) and θ_s come from the
  same recipe, seed and start, one with z added at weight 1/n and one without (the per-seed *baseline*).
  Negative = adding z helped. Both are measured on the influence target split (validation by default).
- **Noise of the measurement.** The spread over seeds of Δ(z, s) for each z (its sd), the sd over seeds of the
  baseline loss, and the agreement between seeds (Pearson correlation over the samples of Δ(z, s) and Δ(z, s′)):
  no predictor can agree with Δ better than Δ agrees with itself across seeds.

Two settings, the same samples:

- ``full`` — the model as the pipeline fine-tunes it: every parameter, continued from the base model with AdamW
  (``validation.lr``, ``weight_decay``) for a fixed number of ``steps`` of mini-batches (``batch_size``; ``None`` =
  full batch), no early stopping, in train mode (dropout, MoLFormer's feature-map redraws) unless
  ``train_mode: false``. Each step minimises the mini-batch mean loss plus ``ℓ(z)/n``: what adding z to the mean
  over n samples does in expectation over batch orders, seen at every step. z's forward pass runs on a forked RNG,
  so the batch order, dropout masks and feature maps of the run with z are exactly those of its baseline: Δ is the
  effect of z, not of a different shuffle. The predicted effect uses the pipeline's scores
  (``results/influence/scores.csv``, whatever ``influence.params`` says).
- ``convex`` — the reference where influence functions should be near exact: the encoder frozen (its head inputs
  cached once), only the head (a linear least-squares model) trained, on the damped objective
  ``F_ε(θ) = L_train(θ) + ε ℓ(z; θ) + (λ/2)‖θ − θ_base‖²`` with λ the absolute damping that the head IHVP
  (``influence.method``, ``damping`` etc. with ``params: head``) reports, minimised to convergence by L-BFGS in
  float64. Influence functions linearise around the optimum of the objective being perturbed, and the base head is
  not the optimum of F₀ (the base model was early-stopped with every parameter training), so the reference IHVP and
  its scores are computed at θ*₀ = argmin F₀; then ``dL_target(θ*_ε)/dε = I(z)`` exactly and only the O(ε²) term,
  the solver's error and the estimator's error remain. Each seed starts the solves from θ_base plus a seeded random
  offset as long as the baseline's own path ‖θ*₀ − θ_base‖, so the spread over seeds measures how precisely the
  optimisation converged.

Correlations: Pearson (linear agreement of Δ̂ and the mean Δ over seeds) and Spearman (agreement of the rankings —
what a top-k selection needs), each with a seeded percentile bootstrap interval over the samples. The ``scale_ratio``
(least squares through the origin of Δ on Δ̂) says whether the score also has the right size: 1 is exact.

Estimators compared: every entry of ``validation.estimators`` (the influence section with the entry's keys on top, e.g.
Hessian LiSSA on the head, Gauss–Newton LiSSA or CG on all parameters, EK-FAC) scores the same chosen samples on the
base model; each is compared with the same measured effects of the ``full`` setting by Pearson, Spearman and the
overlap of the k most helpful (predicted vs measured), each with its bootstrap interval (:func:`estimator_table`).
Spearman is inflated by the factor 2(f(z) − y) that every estimator shares; Pearson and the top-k overlap separate
them. On CUDA the retraining runs with deterministic algorithms, and each sample job reruns the baseline so that the
noise of a run pair is measured (``noise.pair_noise_max``); on CPU the pair is bit-reproducible.

Nothing here imports snakemake; :mod:`scripts` ``validate_*.py`` are thin CLIs over these functions.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats as sstats
from torch import nn
from tqdm.auto import tqdm

from .config import ConfigError, check_fields, from_section, schema_default
from .influence import Batch, FeatureBatch, InfluenceArgs, InfluenceDivergence, compute_ihvp, score_samples
from .metrics import correlation_defined, topk_overlap
from .training import DeviceSplit, split_mse

__all__ = [
    "ValidationArgs",
    "Recipe",
    "choose_samples",
    "chunk_rows",
    "target_loss",
    "retrain_target_loss",
    "full_effects",
    "FrozenFeatureHead",
    "head_inputs",
    "ConvexProblem",
    "convex_reference",
    "correlation_with_ci",
    "summarize_setting",
    "build_report",
    "DEFAULT_ESTIMATORS",
    "check_estimators",
    "estimator_args",
    "compare_estimators",
    "topk_overlap_with_ci",
    "estimator_table",
    "load_inputs",
]

EVAL_BATCH_SIZE = 64
"""Rows per forward pass when evaluating a split, and per gradient-accumulation chunk of a full-batch step."""

CI_LEVEL = 0.95
# Convex solves stop when ‖∇F‖_∞ ≤ _LBFGS_GRAD_TOL × max(1, ‖∇F(center)‖_∞) or a round of L-BFGS no longer reduces
# it (the objective's float64 rounding, about 1e-16 × F, limits how small the gradient can be made: typically
# 1e-8 relative); a solve that ends above _LBFGS_FAIL_TOL has not converged.
_LBFGS_GRAD_TOL = 1e-10
_LBFGS_FAIL_TOL = 1e-6
_LBFGS_MAX_ROUNDS = 20


# --------------------------------------------------------------------------------------------------------------------
# Options

DEFAULT_ESTIMATORS: list[dict[str, Any]] = schema_default("validation.estimators")
"""``validation.estimators`` by default: what the README's comparison table shows."""

def check_estimators(specs: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rules of ``validation.estimators`` the schema cannot say (it checks the list, the names and the keys):
    names are unique, and each entry's values are valid ``influence`` options (they override the influence section
    for that estimator)."""
    names: set[str] = set()
    out = []
    for i, spec in enumerate(specs):
        where = f"validation.estimators[{i}]"
        if spec["name"] in names:
            raise ConfigError(f"{where}: the name {spec['name']!r} is used twice")
        names.add(spec["name"])
        try:
            estimator_args({}, spec)
        except ValueError as exc:
            raise ConfigError(f"{where} ({spec['name']}): {exc}") from None
        out.append(dict(spec))
    return out


def estimator_args(influence: Mapping[str, Any], spec: Mapping[str, Any]) -> InfluenceArgs:
    """The influence options of one estimator: the influence section with the estimator's keys on top."""
    return InfluenceArgs.from_dict({**influence, **{k: v for k, v in spec.items() if k != "name"}})


@dataclass
class ValidationArgs:
    """Options of the validation stage (``validation:`` in the config; the schema documents each key)."""

    enabled: bool = False
    m: int = 20
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 100
    lr: float = 2e-5
    weight_decay: float = 0.01
    batch_size: int | None = 16
    train_mode: bool = True
    chunk_size: int = 5
    bootstrap: int = 2000
    seed: int = 0
    estimators: list[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_ESTIMATORS))
    topk: int = 5

    def __post_init__(self) -> None:
        self.seeds = list(self.seeds) if isinstance(self.seeds, tuple) else self.seeds
        check_fields(self, {f.name: f"validation.{f.name}" for f in fields(self)})
        self.estimators = check_estimators(self.estimators)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidationArgs:
        """Build from the config section; unknown keys are errors (a typo must not fall back to a default)."""
        return from_section(cls, d, "validation")

    def recipe(self) -> Recipe:
        """The retraining recipe of the ``full`` setting."""
        return Recipe(self.steps, self.lr, self.weight_decay, self.batch_size, self.train_mode)


@dataclass(frozen=True)
class Recipe:
    """How the ``full`` setting continues training: AdamW, ``steps`` mini-batch steps (``batch_size=None``: the whole
    training split every step), train mode (dropout, feature-map redraws) or not; no early stopping."""

    steps: int
    lr: float
    weight_decay: float
    batch_size: int | None
    train_mode: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------------
# Which samples


def choose_samples(scores: pd.DataFrame, m: int, seed: int, source: str = "scores table") -> pd.DataFrame:
    """``m`` rows of ``scores`` spread evenly over the range of its ``score`` column.

    The rows are ordered by score, ties by a permutation of the ``ext_index`` values seeded by ``seed`` (so which of
    several equal scores fills a position depends on the seed only, never on the row order of the file); the chosen positions are the quantile levels
    ``j/(m − 1)``, ``j = 0 … m − 1`` of that order (the lowest and the highest score included), rounded half up.
    Returns the chosen rows in that order with their ``rank`` (0 = most negative) and ``quantile`` added. Raises
    ValueError naming ``source`` for missing columns, non-finite scores or ``m`` larger than the table.
    """
    missing = [c for c in ("ext_index", "smiles", "label", "score") if c not in scores.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; expected ext_index, smiles, label, score")
    values = pd.to_numeric(scores["score"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(f"{source}: the score of row {int(bad[0]) + 1} is not a finite number ({scores['score'].iloc[bad[0]]!r})")
    n = len(scores)
    if m < 3:
        raise ValueError(f"validation.m must be >= 3 (correlations need three points), got {m}")
    if m > n:
        raise ValueError(f"validation.m = {m} is larger than the {n} scored external samples in {source}")
    ext = scores["ext_index"].to_numpy()
    if len(np.unique(ext)) != n:
        raise ValueError(f"{source}: ext_index values are not unique")
    tie_break = np.empty(n, dtype=np.int64)
    tie_break[np.argsort(ext, kind="stable")] = np.random.default_rng(seed).permutation(n)  # keyed by ext_index
    order = np.lexsort((tie_break, values))
    positions = np.floor(np.linspace(0, n - 1, m) + 0.5).astype(int)
    chosen = scores.iloc[order[positions]].reset_index(drop=True).copy()
    chosen["rank"] = positions
    chosen["quantile"] = positions / max(n - 1, 1)
    return chosen


def chunk_rows(m: int, chunk_size: int, chunk: int) -> list[int]:
    """Row numbers (0-based, into the chosen table) handled by job ``chunk``; ValueError if the chunk does not exist."""
    count = math.ceil(m / chunk_size)
    if not 0 <= chunk < count:
        raise ValueError(f"chunk {chunk} does not exist: validation.m = {m} in chunks of {chunk_size} gives {count}")
    return list(range(chunk * chunk_size, min(m, (chunk + 1) * chunk_size)))


# --------------------------------------------------------------------------------------------------------------------
# The full setting: continue training with and without z


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def target_loss(model: nn.Module, target: Batch, batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Mean squared error of ``model`` in eval mode over ``target`` (:func:`molinfluence.training.split_mse`, the
    same computation as the training loop's validation loss); the model's train/eval mode is restored."""
    was_training = model.training
    device = _device_of(model)
    split = DeviceSplit.of(target, device, target.labels)
    try:
        return split_mse(model, split, batch_size)
    finally:
        model.train(was_training)


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def retrain_target_loss(
    model: nn.Module,
    start: Mapping[str, torch.Tensor],
    train: Batch,
    target: Batch,
    recipe: Recipe,
    seed: int,
    extra: Batch | None = None,
    extra_weight: float = 0.0,
) -> float:
    """Load ``start`` into ``model``, train it with ``recipe`` and seed ``seed``, return its target loss (eval mode).

    Each step minimises the mean squared error of a mini-batch of ``train`` plus ``extra_weight × Σ ℓ`` over
    ``extra`` (one sample z with weight 1/n in :func:`full_effects`; with ``extra_weight=0`` its forward and backward
    still run, and change nothing). Batch order (a generator seeded by ``seed``,
    reshuffled every epoch; the whole split in file order for full-batch steps) and the global RNG (dropout, MoLFormer's feature-map redraws; ``torch.manual_seed(seed)``)
    do not depend on ``extra``: its forward pass runs on a forked RNG state, before the batch's, so a run with
    ``extra`` and one without see exactly the same batches and random draws. ``model`` is modified in place.
    """
    model.load_state_dict(start)
    device = _device_of(model)
    torch.manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    model.train(recipe.train_mode)
    n = len(train)
    size = n if recipe.batch_size is None else min(recipe.batch_size, n)
    perm, pos = torch.randperm(n, generator=order_gen), 0
    for step in range(1, recipe.steps + 1):
        if recipe.batch_size is None:
            batch = train  # in file order: shuffling would only change the rounding of the sum
        else:
            if pos >= n:
                perm, pos = torch.randperm(n, generator=order_gen), 0
            batch = train.subset(perm[pos : pos + size])
            pos += size
        optimizer.zero_grad(set_to_none=True)
        if extra is not None:
            with torch.random.fork_rng(devices=_rng_devices(device)):
                pred = model(extra.input_ids.to(device), extra.attention_mask.to(device))
                extra_loss = extra_weight * (pred - extra.labels.to(device)).square().sum()
            extra_loss.backward()
        total = 0.0
        for chunk in batch.chunks(EVAL_BATCH_SIZE) if recipe.batch_size is None else [batch]:
            pred = model(chunk.input_ids.to(device), chunk.attention_mask.to(device))
            loss = (pred - chunk.labels.to(device)).square().sum() / len(batch)
            loss.backward()
            total += float(loss.detach())
        if not math.isfinite(total):
            raise InfluenceDivergence(
                f"validation retraining diverged: non-finite training loss at step {step} (seed {seed}); lower "
                "validation.lr"
            )
        optimizer.step()
    return target_loss(model, target)


def full_effects(
    model: nn.Module,
    train: Batch,
    target: Batch,
    samples: Batch | None,
    recipe: Recipe,
    seeds: Sequence[int],
    ext_index: Sequence[int] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Target loss after retraining with each sample of ``samples`` added at weight 1/n, for every seed.

    ``samples=None`` gives the per-seed baselines (train alone). Returns a table with columns ``ext_index`` (from
    ``ext_index``, or the row number; -1 for a baseline), ``seed`` and ``target_loss``, one row per run. ``model``
    itself is not modified (a working copy is trained).
    """
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    work = copy.deepcopy(model)
    weight = 1.0 / len(train)
    device = _device_of(model)
    jobs: list[tuple[int, int, Batch | None]] = []
    if samples is None:
        jobs = [(-1, s, None) for s in seeds]
    else:
        ids = list(range(len(samples))) if ext_index is None else [int(i) for i in ext_index]
        if len(ids) != len(samples):
            raise ValueError(f"{len(ids)} ext_index values for {len(samples)} samples")
        jobs = [(ids[i], s, samples.subset([i])) for i in range(len(samples)) for s in seeds]
        if device.type == "cuda":
            # The baseline again, in this process: its difference from the baseline job is the pair's own noise.
            jobs += [(PAIR_CHECK, s, None) for s in seeds]
    rows = []
    with _deterministic(device):
        for ext, seed, extra in tqdm(jobs, desc="retraining", disable=not progress, leave=False):
            loss = retrain_target_loss(work, start, train, target, recipe, seed, extra, weight if extra is not None else 0.0)
            rows.append({"ext_index": ext, "seed": int(seed), "target_loss": loss})
    return pd.DataFrame(rows, columns=["ext_index", "seed", "target_loss"])


PAIR_CHECK = -2
"""``ext_index`` of a baseline rerun inside a sample job (CUDA only): it measures the noise of a run pair."""


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """On CUDA, deterministic algorithms for the block (cuBLAS workspace config included), so that a run with a
    sample and its baseline differ by the sample only; on CPU the runs are deterministic already."""
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


# --------------------------------------------------------------------------------------------------------------------
# The convex reference: the head on frozen features


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


@torch.no_grad()
def head_inputs(model: nn.Module, data: Batch, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """What ``model.head`` receives for every row of ``data`` in eval mode (pooled encoder output), float64, CPU.

    Captured with a forward pre-hook on the head, so it is whatever the model's pooling (CLS or mean) gives.
    """
    captured: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    device = _device_of(model)
    try:
        for chunk in data.chunks(batch_size):
            model(chunk.input_ids.to(device), chunk.attention_mask.to(device))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).to("cpu", torch.float64)


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

    def objective(self, theta: torch.Tensor, extra: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> torch.Tensor:
        value = (self.predict(theta, self.x) - self.y).square().mean()
        value = value + 0.5 * self.lam * (theta - self.center).square().sum()
        if extra is not None:
            xz, yz, weight = extra
            value = value + weight * (self.predict(theta, xz) - yz).square().sum()
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
        return float((problem.predict(theta, x_t) - y_t).square().mean())

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
        "train_loss_base": float((problem.predict(theta_base, x) - y).square().mean()),
        "train_loss_optimum": float((problem.predict(theta0, x) - y).square().mean()),
        "target_loss_base": loss_t(theta_base),
        "target_loss_optimum": loss_t(theta0),
        "max_relative_gradient": worst,
        "ihvp": {k: at_opt.stats[k] for k in keep if k in at_opt.stats},
        "ihvp_args": at_opt.args,
    }
    scores_table = pd.DataFrame({"ext_index": ids, "score": scores.numpy()})
    effects = pd.DataFrame(rows, columns=["ext_index", "seed", "target_loss"])
    return effects, scores_table, stats


# --------------------------------------------------------------------------------------------------------------------
# Agreement and noise


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of two (B, m) arrays; NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / denom
    r[~(denom > 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def correlation_with_ci(
    predicted: Sequence[float], actual: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = CI_LEVEL
) -> dict[str, Any]:
    """Pearson and Spearman correlation of ``predicted`` and ``actual`` with seeded percentile bootstrap intervals.

    The bootstrap resamples the samples (pairs) with replacement ``n_boot`` times; resamples in which either variable
    is constant have no correlation and are left out (their count is reported). A correlation that is undefined
    (fewer than 3 points, a constant variable) is ``None``, never NaN.
    """
    x = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"predicted and actual must be 1-D of equal length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("predicted and actual must be finite")
    m = len(x)
    defined = correlation_defined(x, y)
    point = {
        "pearson": float(sstats.pearsonr(x, y).statistic) if defined else math.nan,
        "spearman": float(sstats.spearmanr(x, y).statistic) if defined else math.nan,
    }
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(n_boot, m))
    xb, yb = x[idx], y[idx]
    boot = {
        "pearson": _pearson_rows(xb, yb),
        "spearman": _pearson_rows(sstats.rankdata(xb, axis=1), sstats.rankdata(yb, axis=1)),
    }
    alpha = (1.0 - level) / 2.0
    out: dict[str, Any] = {}
    for name, values in boot.items():
        ok = values[np.isfinite(values)]
        ci = [float(np.quantile(ok, alpha)), float(np.quantile(ok, 1.0 - alpha))] if defined and len(ok) else None
        out[name] = {"estimate": _finite_or_none(point[name]), "ci": ci, "bootstrap_defined": int(len(ok))}
    out["bootstrap"] = {"resamples": int(n_boot), "seed": int(seed), "level": level, "method": "percentile, pairs"}
    return out


def summarize_setting(
    predicted: pd.Series, runs: pd.DataFrame, n_boot: int = 2000, seed: int = 0
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Agreement of the predicted and the measured effects of one setting, and the noise of the measurement.

    ``predicted``: Δ̂ per ``ext_index`` (index). ``runs``: columns ``ext_index``, ``seed``, ``target_loss``, with one
    baseline row per seed (``ext_index`` -1) and one row per (sample, seed). Returns the JSON-able summary and a
    per-sample table (``ext_index``, ``predicted``, ``actual`` = mean Δ over seeds, ``actual_sd``, one ``delta_seed{s}``
    column per seed). Raises ValueError when a sample lacks a seed's run or a seed lacks its baseline.
    """
    base = runs[runs.ext_index == -1].set_index("seed")["target_loss"]
    if base.index.has_duplicates:
        raise ValueError("more than one baseline run for a seed")
    checks = runs[runs.ext_index == PAIR_CHECK]
    pair_noise = float((checks.target_loss - checks.seed.map(base)).abs().max()) if len(checks) else None
    runs = runs[runs.ext_index != PAIR_CHECK]
    with_z = runs[runs.ext_index != -1]
    seeds = sorted(int(s) for s in with_z.seed.unique())
    missing_base = [s for s in seeds if s not in base.index]
    if missing_base:
        raise ValueError(f"no baseline run for seed(s) {missing_base}")
    deltas = with_z.assign(delta=with_z.target_loss - with_z.seed.map(base)).pivot(index="ext_index", columns="seed", values="delta")
    expected = list(predicted.index)
    missing = [e for e in expected if e not in deltas.index] or [e for e in expected if deltas.loc[e].isna().any()]
    if missing:
        raise ValueError(f"sample ext_index {missing[0]} has no retraining run for every seed {seeds}")
    deltas = deltas.loc[expected, seeds]
    d = deltas.to_numpy(dtype=np.float64)
    r = len(seeds)
    actual = d.mean(axis=1)
    sd = d.std(axis=1, ddof=1) if r > 1 else np.zeros(len(d))
    table = pd.DataFrame({"ext_index": expected, "predicted": predicted.to_numpy(dtype=np.float64), "actual": actual,
                          "actual_sd": sd})
    for j, s in enumerate(seeds):
        table[f"delta_seed{s}"] = d[:, j]

    x = table.predicted.to_numpy()
    agreement = correlation_with_ci(x, actual, n_boot, seed)
    denom = float(np.dot(x, x))
    pairs = [(a, b) for a in range(r) for b in range(a + 1, r)]
    pair_r = _pearson_rows(np.stack([d[:, a] for a, _ in pairs]), np.stack([d[:, b] for _, b in pairs])) if pairs else np.array([])
    within = float(np.mean(sd**2)) if r > 1 else math.nan
    standard_error = math.sqrt(within / r) if r > 1 else math.nan
    between = float(np.std(actual, ddof=1))
    noise = {
        "seeds": seeds,
        "delta_sd_median": float(np.median(sd)) if r > 1 else None,
        "delta_sd_max": float(np.max(sd)) if r > 1 else None,
        "delta_standard_error": _finite_or_none(standard_error),
        "actual_sd_across_samples": between,
        "signal_to_noise": _finite_or_none(between / standard_error) if r > 1 and standard_error > 0 else None,
        "seed_agreement_pearson": _finite_or_none(float(np.nanmean(pair_r))) if len(pair_r) and np.isfinite(pair_r).any() else None,
        "baseline_loss_mean": float(base.loc[seeds].mean()),
        "baseline_loss_sd": float(base.loc[seeds].std(ddof=1)) if r > 1 else None,
        # |baseline rerun inside a sample job − baseline job|, CUDA only (None: CPU runs are bit-reproducible)
        "pair_noise_max": pair_noise,
    }
    summary = {
        "m": len(expected),
        "pearson": agreement["pearson"],
        "spearman": agreement["spearman"],
        "bootstrap": agreement["bootstrap"],
        "scale_ratio": _finite_or_none(float(np.dot(x, actual)) / denom) if denom > 0 else None,
        "sign_agreement": float(np.mean(np.sign(x) == np.sign(actual))),
        "predicted_range": [float(x.min()), float(x.max())],
        "actual_range": [float(actual.min()), float(actual.max())],
        "noise": noise,
    }
    return summary, table


def load_inputs(
    model_dir: str, device: str, train_csv: str, target_csv: str, target_name: str, chosen_csv: str, truncation: bool
) -> tuple[nn.Module, Batch, Batch, Batch, pd.DataFrame]:
    """What the convex and estimator jobs start from: the base model on its device, the training, target and chosen
    splits as batches (tokenised as the model was trained), and the chosen table."""
    from .regressor import load_regressor, pick_device

    model, tokenizer = load_regressor(model_dir, device=pick_device(device))

    def batch(table: Any, name: str) -> Batch:
        return Batch.encode(tokenizer, table, model.spec.max_length, truncation, name)

    chosen = pd.read_csv(chosen_csv)
    chosen.attrs["source"] = chosen_csv
    return (model, batch(train_csv, "train"), batch(target_csv, target_name), batch(chosen, "chosen"), chosen)


# --------------------------------------------------------------------------------------------------------------------
# Estimators compared on the same samples against the same retraining

_STAT_KEYS = ("method", "curvature", "params", "n_params", "damping", "lambda", "lambda_max_C", "lambda_min_C",
              "relative_residual", "converged", "hvp_full_equivalents", "topk_stability", "seconds")


def compare_estimators(
    model: nn.Module,
    train: Batch,
    target: Batch,
    samples: Batch,
    influence: Mapping[str, Any],
    estimators: Sequence[Mapping[str, Any]],
    ext_index: Sequence[int],
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score the chosen ``samples`` with every estimator (its keys over the ``influence`` section) on the base model.

    Returns ``(scores, stats)``: one row per (estimator, sample) with ``estimator``, ``ext_index``, ``score``; and
    per estimator its IHVP diagnostics, or ``{"refused": message}`` when the estimator refused (e.g. negative
    curvature of the Hessian): a refusal is a result of the comparison and is reported, not hidden.
    """
    rows, stats = [], {}
    for spec in check_estimators(list(estimators)):
        args = estimator_args(influence, spec)
        try:
            result = compute_ihvp(model, train, target, args, progress=progress)
        except InfluenceDivergence as exc:
            stats[spec["name"]] = {"spec": dict(spec), "refused": str(exc)}
            continue
        scores = score_samples(model, result, samples, batch_size=args.scoring.batch_size)
        rows += [{"estimator": spec["name"], "ext_index": int(e), "score": float(v)} for e, v in zip(ext_index, scores)]
        stats[spec["name"]] = {"spec": dict(spec), **{k: result.stats.get(k) for k in _STAT_KEYS}}
    return pd.DataFrame(rows, columns=["estimator", "ext_index", "score"]), stats


def topk_overlap_with_ci(
    predicted: Sequence[float], actual: Sequence[float], k: int, n_boot: int = 2000, seed: int = 0, level: float = CI_LEVEL
) -> dict[str, Any]:
    """Fraction of the ``k`` most negative predicted effects that are among the ``k`` most negative measured ones
    (the samples a most-helpful selection would pick), with a seeded percentile bootstrap over the samples."""
    x = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    m = len(x)
    k = max(1, min(int(k), m - 1)) if m > 1 else 1
    point = topk_overlap(x, y, k)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(n_boot, m))
    boot = np.array([topk_overlap(x[i], y[i], k) for i in idx])
    alpha = (1.0 - level) / 2.0
    return {"estimate": point, "k": k, "ci": [float(np.quantile(boot, alpha)), float(np.quantile(boot, 1.0 - alpha))]}


def estimator_table(
    chosen: pd.DataFrame,
    n_train: int,
    full_runs: pd.DataFrame,
    scores: pd.DataFrame,
    stats: Mapping[str, Any],
    influence_stats: Mapping[str, Any],
    *,
    k: int = 5,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per estimator (the pipeline's own scores first, as ``pipeline``): agreement of its predicted effect
    (score / n) with the measured effect of the ``full`` setting on the same chosen samples, with bootstrap
    intervals, and what it cost. Refused estimators keep their row with the reason."""
    order = [int(e) for e in chosen["ext_index"]]
    entries = [("pipeline", chosen.set_index("ext_index")["score"], {k_: influence_stats.get(k_) for k_ in _STAT_KEYS})]
    for name, st in stats.items():
        part = scores[scores.estimator == name].set_index("ext_index")["score"]
        entries.append((name, part if len(part) else None, st))
    rows = []
    for name, score, st in entries:
        row: dict[str, Any] = {"estimator": name}
        for key in ("method", "curvature", "params", "n_params", "relative_residual", "hvp_full_equivalents", "seconds"):
            value = st.get(key)
            row[key] = json_cell(value)
        row["refused"] = st.get("refused")
        if score is not None:
            missing = [e for e in order if e not in score.index]
            if missing:
                raise ValueError(f"estimator {name!r} has no score for chosen sample ext_index {missing[0]}")
            predicted = pd.Series(score.loc[order].to_numpy(dtype=np.float64) / n_train, index=order)
            summary, table = summarize_setting(predicted, full_runs, n_boot, seed)
            overlap = topk_overlap_with_ci(table.predicted.to_numpy(), table.actual.to_numpy(), k, n_boot, seed)
            for metric in ("pearson", "spearman"):
                row[metric] = summary[metric]["estimate"]
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = summary[metric]["ci"] or (None, None)
            row["topk_overlap"], row["topk"] = overlap["estimate"], overlap["k"]
            row["topk_ci_low"], row["topk_ci_high"] = overlap["ci"]
            row["scale_ratio"] = summary["scale_ratio"]
        rows.append(row)
    columns = ["estimator", "method", "curvature", "params", "n_params", "pearson", "pearson_ci_low", "pearson_ci_high",
               "spearman", "spearman_ci_low", "spearman_ci_high", "topk_overlap", "topk", "topk_ci_low", "topk_ci_high",
               "scale_ratio", "relative_residual", "hvp_full_equivalents", "seconds", "refused"]
    return pd.DataFrame(rows).reindex(columns=columns)


def json_cell(value: Any) -> Any:
    """A table cell: lists (e.g. params as prefixes) joined, everything else as is."""
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else value


SETTINGS = {
    "full": (
        "every parameter continued from the base model with the validation recipe, with and without z (weight 1/n) "
        "under the same seed; predicted from the pipeline's scores (influence.params as configured)"
    ),
    "convex": (
        "encoder frozen, head only, damped objective L_train + (lambda/2)|theta - theta_base|^2 minimised to "
        "convergence (L-BFGS, float64) with and without z (weight 1/n); predicted from head-only scores at its optimum"
    ),
}


def build_report(
    chosen: pd.DataFrame,
    n_train: int,
    full_runs: pd.DataFrame,
    convex_runs: pd.DataFrame,
    convex_scores: pd.DataFrame,
    convex_stats: Mapping[str, Any],
    *,
    recipe: Recipe,
    influence_stats: Mapping[str, Any],
    target: str = "validation",
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The stage's JSON summary and its per-sample table (both settings; column ``setting``).

    ``chosen`` is the table of :func:`choose_samples` (its ``score`` gives the ``full`` prediction), ``full_runs`` and
    ``convex_runs`` are run tables as :func:`full_effects` / :func:`convex_reference` return them (baselines
    included), ``convex_scores`` the head-only scores, ``influence_stats`` the pipeline's IHVP statistics (what the
    ``full`` scores were computed with). Predictions are ``score / n_train`` (module docstring).
    """
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    order = [int(e) for e in chosen["ext_index"]]
    full_pred = pd.Series(chosen["score"].to_numpy(dtype=np.float64) / n_train, index=order)
    convex_by_ext = convex_scores.set_index("ext_index")["score"]
    missing = [e for e in order if e not in convex_by_ext.index]
    if missing:
        raise ValueError(f"the convex scores lack chosen sample ext_index {missing[0]}")
    convex_pred = pd.Series(convex_by_ext.loc[order].to_numpy(dtype=np.float64) / n_train, index=order)

    settings: dict[str, Any] = {}
    tables = []
    info = chosen[["ext_index", "smiles", "label", "rank", "quantile", "score"]]
    for name, predicted, runs in (("full", full_pred, full_runs), ("convex", convex_pred, convex_runs)):
        summary, table = summarize_setting(predicted, runs, n_boot, seed)
        settings[name] = {"description": SETTINGS[name], **summary}
        table = info.merge(table, on="ext_index", how="right")
        if name == "convex":
            table["score"] = convex_pred.to_numpy() * n_train
        tables.append(table.assign(setting=name))
    keep = ("method", "params", "damping", "lambda", "n_train", "converged", "relative_residual")
    settings["full"]["influence"] = {k: influence_stats[k] for k in keep if k in influence_stats}
    settings["full"]["recipe"] = recipe.to_dict()
    settings["convex"]["influence"] = dict(convex_stats)
    report = {
        "question": "does the influence score predict the measured change of the target loss when a sample is added?",
        "predicted": "score / n_train: the first-order change of the target loss for z added at weight 1/n_train",
        "actual": "mean over seeds of L_target(with z) - L_target(without z), same recipe, seed and start",
        "sign": "negative = adding z lowers the target loss (helps)",
        "target": target,
        "n_train": int(n_train),
        "epsilon": 1.0 / n_train,
        "m": len(order),
        "ext_index": order,
        "settings": settings,
    }
    per_sample = pd.concat(tables, ignore_index=True)
    first = ["setting", "ext_index", "smiles", "label", "rank", "quantile", "score", "predicted", "actual", "actual_sd"]
    per_sample = per_sample[first + [c for c in per_sample.columns if c not in first]]
    return report, per_sample

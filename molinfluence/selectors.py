"""Selectors that rank an external pool with the base model: which molecules are both helpful and believable.

The first-order influence score (:mod:`molinfluence.influence`, the ``most_negative`` strategy) calls a sample helpful
when its loss gradient points along the target gradient. A large *wrong* label makes a large gradient, so on a pool
with corrupted labels the most "helpful" rows are often the corrupted ones (issue 17: 10–43 % clean picks). The
selectors here answer the question with other evidence, or combine it with influence:

- ``residual``: label consistency with the base model, ``|f(x) − y|`` smallest first. Believable, not necessarily
  helpful (a molecule the model already predicts well changes little).
- ``knn_agreement``: agreement of the label with the labels of the ``knn`` nearest training molecules in the model's
  representation (the head's input, cosine similarity), ``|y − mean(y_neighbours)|`` smallest first.
- ``consensus``: both at once, ``sqrt(|f(x) − y| · |y − mean(y_neighbours)|)``: low only when the model and the
  neighbours both agree with the label.
- ``believable_helpful``: influence among the believable rows only. A row is believable when the robust z-score of its
  absolute residual against the target (validation) split's absolute residuals, ``(|r| − median) / (1.4826 MAD)``, is
  at most ``believable_z``; believable rows come first ranked by influence (most negative first), the rest after
  ranked by residual.
- ``knn_influence``: believable **and** helpful by rank: the rank of the kNN disagreement (as ``knn_agreement``) plus
  the rank of the influence score (as ``most_negative``), lowest first — a molecule comes first only when its label
  agrees with its neighbours and adding it is predicted to help (a Borda count of the two orders).
- ``clipped_influence``: the influence score with the residual clipped to the target split's ``clip_quantile``
  quantile of ``|r|``: ``−2 clip(r) (∇f · s)`` — the label replaced by its prediction-consistent part, so an
  implausible label counts no more than a plausible one.
- ``adaptive_greedy`` (Hu et al. 2024, "Most Influential Subset Selection"): ``rounds`` rounds; each picks the next
  ``k/rounds`` rows by influence, adds them to the training objective, moves θ by one damped Gauss–Newton Newton step
  on the enlarged objective (``θ ← θ − (C + λI)⁻¹ ∇L_{train ∪ chosen}``, exact for least squares) and recomputes the
  target gradient, the IHVP and the scores at the new θ.
- ``tracin``: TracIn over the checkpoints of a short real fine-tune from the base model on the training split
  (``tracin_epochs`` epochs of the fine-tune recipe, one run of the training function, AdamW state kept): ``Σ_c lr ⟨∇ℓ(z; θ_c), ∇L_target(θ_c)⟩`` with θ_c the weights at
  the start of each epoch, reported with the influence sign (``−Σ_c lr ⟨…⟩``, negative = adding z lowers the target
  loss along the trajectory).
- ``most_negative``: the pipeline's influence score, lowest first (as :func:`molinfluence.selection.select`).

Every selector is ``SELECTORS[name](ctx, k) -> np.ndarray``: the ``k`` chosen row positions of ``ctx.pool``, most
recommended first; ties are broken by row position. :func:`ranking` gives the same order with each selector's own
score (lower = more recommended), the table the pipeline writes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .batch import Batch, FeatureBatch, Rows
from .influence import (
    IHVPResult,
    InfluenceArgs,
    SubsetObjective,
    compute_ihvp,
    directional_scores,
    eval_mode,
    loss_gradient,
    score_samples,
)
from .metrics import bottom_k

__all__ = [
    "SELECTORS",
    "SelectorOptions",
    "PoolContext",
    "robust_z",
    "adaptive_greedy_order",
    "newton_step",
    "tracin_scores",
    "ranking",
    "ranking_length",
]


@dataclass
class SelectorOptions:
    """The selectors' own knobs (``selection.selectors`` in a config)."""

    believable_z: float = 2.0  # robust z of |residual| above which a label is implausible
    clip_quantile: float = 0.9  # quantile of the target split's |residual| that clipped_influence clips at
    knn: int = 10  # neighbours of knn_agreement
    rounds: int = 4  # rounds of adaptive_greedy
    tracin_epochs: int = 3  # epochs of tracin's short fine-tune

    def __post_init__(self) -> None:
        if not (self.believable_z > 0 and 0 < self.clip_quantile <= 1 and self.knn >= 1 and self.rounds >= 1
                and self.tracin_epochs >= 1):
            raise ValueError(f"selection.selectors: out of range {self}")


@dataclass
class PoolContext:
    """What every selector may use: the base model (evaluated in eval mode, so MoLFormer's feature map is fixed), its
    tokenizer, the train / target (validation) / pool tables (columns ``smiles``, ``label``), the influence options,
    the fine-tune recipe (:class:`molinfluence.training.TrainConfig`, for ``tracin``), a seed and a device.

    ``ihvp`` (optional) is the base model's precomputed IHVP (the pipeline's ``hessian_inverse_fast.pt``); without it
    the first selector that needs influence computes it once. Derived quantities (predictions, scores, features) are
    cached on the context, so several selectors on one context share them. ``encode`` turns a table into the engine's
    rows (default: the tokenizer's :class:`~molinfluence.influence.Batch`; tests pass features of a linear model).
    """

    model: nn.Module
    tokenizer: Any
    train: pd.DataFrame
    target: pd.DataFrame
    pool: pd.DataFrame
    influence: InfluenceArgs | Mapping[str, Any] = field(default_factory=InfluenceArgs)
    finetune: Any = None  # TrainConfig of tracin's short fine-tune
    seed: int = 0
    device: str = "cpu"
    ihvp: IHVPResult | None = None
    options: SelectorOptions = field(default_factory=SelectorOptions)
    progress: bool = False
    encode: Callable[[pd.DataFrame, str], Rows] | None = None  # table -> rows; default: the tokenizer's Batch
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.influence, InfluenceArgs):
            self.influence = InfluenceArgs.from_dict(self.influence)
        for name in ("train", "target", "pool"):
            frame = getattr(self, name)
            missing = {"smiles", "label"} - set(frame.columns)
            if missing:
                raise ValueError(f"PoolContext.{name}: lacks column(s) {sorted(missing)}; has {list(frame.columns)}")
            if len(frame) == 0:
                raise ValueError(f"PoolContext.{name} is empty")
        self.model.to(self.device)

    # -- encoded splits and cached quantities ----------------------------------------------------------------------
    def _cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def max_length(self) -> int:
        spec = getattr(self.model, "spec", None)
        return int(spec.max_length) if spec is not None else int(getattr(self.finetune, "max_length", 202))

    def rows(self, name: str, frame: pd.DataFrame | None = None) -> Rows:
        """The split ``name`` (train, target, pool) encoded as the model was trained."""
        if frame is not None:
            if self.encode is not None:
                return self.encode(frame.reset_index(drop=True), name)
            return Batch.encode(self.tokenizer, frame.reset_index(drop=True), self.max_length, True, name)
        return self._cached(f"rows:{name}", lambda: self.rows(name, getattr(self, name)))

    def predictions(self, name: str) -> np.ndarray:
        """The base model's eval-mode predictions on split ``name`` (float64, row order)."""
        return self._cached(f"pred:{name}", lambda: predict(self.model, self.rows(name)))

    def residuals(self, name: str) -> np.ndarray:
        """``f(x) − y`` of the base model on split ``name``."""
        return self.predictions(name) - getattr(self, name)["label"].to_numpy(dtype=np.float64)

    def base_ihvp(self) -> IHVPResult:
        if self.ihvp is None:
            self.ihvp = compute_ihvp(self.model, self.rows("train"), self.rows("target"), self.influence, self.progress)
        return self.ihvp

    def influence_scores(self) -> np.ndarray:
        """``I(z)`` of every pool row at the base model (negative = expected helpful)."""
        return self._cached(
            "scores",
            lambda: score_samples(self.model, self.base_ihvp(), self.rows("pool"), self.influence.scoring.batch_size)
            .numpy(),
        )

    def features(self, name: str) -> np.ndarray:
        """What the model's head receives for every row of split ``name`` (its learned representation)."""
        from .regressor import head_inputs

        return self._cached(f"feat:{name}", lambda: head_inputs(self.model, self.rows(name)).numpy())


@torch.no_grad()
def predict(model: nn.Module, rows: Rows, batch_size: int = 256) -> np.ndarray:
    """Eval-mode predictions of ``model`` for ``rows`` (float64, CPU, row order)."""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for chunk in rows.chunks(batch_size):
            out.append(model(*(t.to(device) for t in chunk.inputs)).double().cpu())
    return torch.cat(out).numpy()


def robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(values − median(reference)) / (1.4826 MAD(reference))``: how many robust standard deviations above the
    reference's centre (a scale of 0 is replaced by the smallest positive spacing, so the result stays finite)."""
    reference = np.asarray(reference, dtype=np.float64)
    centre = float(np.median(reference))
    scale = 1.4826 * float(np.median(np.abs(reference - centre)))
    if not scale > 0:
        scale = float(np.std(reference)) or 1.0
    return (np.asarray(values, dtype=np.float64) - centre) / scale


def _check_k(ctx: PoolContext, k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) <= len(ctx.pool):
        raise ValueError(f"selection.k = {k!r} must be an integer in [0, {len(ctx.pool)}] (the pool size)")
    return int(k)


# -- label consistency -------------------------------------------------------------------------------------------------


def residual_score(ctx: PoolContext) -> np.ndarray:
    """``|f(x) − y|`` per pool row."""
    return np.abs(ctx.residuals("pool"))


def knn_score(ctx: PoolContext) -> np.ndarray:
    """``|y − mean label of the knn nearest training rows|`` in the model's representation (cosine similarity)."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = x - ctx.features("train").mean(axis=0)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    sim = unit(ctx.features("pool")) @ unit(ctx.features("train")).T
    knn = min(ctx.options.knn, sim.shape[1])
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :knn]
    labels = ctx.train["label"].to_numpy(dtype=np.float64)
    return np.abs(ctx.pool["label"].to_numpy(dtype=np.float64) - labels[nearest].mean(axis=1))


def consensus_score(ctx: PoolContext) -> np.ndarray:
    """``sqrt(|f(x) − y| · |y − mean label of the knn nearest training rows|)``: low only when the label agrees with both
    the model and the molecule's neighbours (the geometric mean of :func:`residual_score` and :func:`knn_score`)."""
    return np.sqrt(residual_score(ctx) * knn_score(ctx))


def believable_mask(ctx: PoolContext) -> np.ndarray:
    """Pool rows whose |residual| is within ``believable_z`` robust standard deviations of the target split's."""
    z = robust_z(np.abs(ctx.residuals("pool")), np.abs(ctx.residuals("target")))
    return z <= ctx.options.believable_z


def believable_helpful_score(ctx: PoolContext) -> np.ndarray:
    """Believable rows first by influence, then the rest by residual: one score, lower = more recommended."""
    influence = ctx.influence_scores()
    believable = believable_mask(ctx)
    return np.where(believable, _ranks(influence), len(influence) + _ranks(np.abs(ctx.residuals("pool")))).astype(np.float64)


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based rank of every value (ties by position)."""
    return np.argsort(np.argsort(np.asarray(values, dtype=np.float64), kind="stable"), kind="stable")


def knn_influence_score(ctx: PoolContext) -> np.ndarray:
    """rank(kNN disagreement) + rank(influence score): low only when the label is believable and the row helpful."""
    return (_ranks(knn_score(ctx)) + _ranks(ctx.influence_scores())).astype(np.float64)


def clipped_influence_score(ctx: PoolContext) -> np.ndarray:
    """``I(z) · clip(r, ±q) / r`` with q the target split's ``clip_quantile`` quantile of |r| (I = −2 r (∇f · s))."""
    r = ctx.residuals("pool")
    q = float(np.quantile(np.abs(ctx.residuals("target")), ctx.options.clip_quantile))
    influence = ctx.influence_scores()
    factor = np.divide(np.clip(r, -q, q), r, out=np.ones_like(r), where=r != 0)
    return influence * factor


# -- adaptive greedy ---------------------------------------------------------------------------------------------------


def concat_rows(a: Rows, b: Rows, name: str = "train+chosen") -> Rows:
    """Rows of ``a`` followed by rows of ``b`` (token batches padded to the wider of the two)."""
    wa, wb = (None if a.weights is None else a.weights), (None if b.weights is None else b.weights)
    if (wa is None) != (wb is None):
        wa = torch.ones(len(a)) if wa is None else wa
        wb = torch.ones(len(b)) if wb is None else wb
    weights = None if wa is None else torch.cat([wa, wb])
    labels = torch.cat([a.labels, b.labels.to(a.labels.dtype)])
    if isinstance(a, FeatureBatch):
        return FeatureBatch(torch.cat([a.features, b.features]), labels, weights, name)
    width = max(a.input_ids.shape[1], b.input_ids.shape[1])

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    pad_id = int(a.input_ids[a.attention_mask == 0][0]) if bool((a.attention_mask == 0).any()) else 0
    ids = torch.cat([pad(a.input_ids, pad_id), pad(b.input_ids, pad_id)])
    mask = torch.cat([pad(a.attention_mask, 0), pad(b.attention_mask, 0)])
    return Batch(ids, mask, labels, weights, name)


def newton_step(model: nn.Module, data: Rows, args: InfluenceArgs, progress: bool = False) -> dict[str, Any]:
    """One damped Gauss–Newton Newton step on the mean loss of ``data``, applied to ``model`` in place:
    ``θ ← θ − (C + λI)⁻¹ ∇L_data`` (the influence engine's IHVP with ``data`` as both training and target split; on
    least squares with ``damping: 0`` it lands on the exact minimiser). Returns the step's diagnostics."""
    step = compute_ihvp(model, data, data, args, progress)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, delta in step.ihvp.items():
            params[name].sub_(delta.to(params[name].device, params[name].dtype))
    return step.stats


def adaptive_greedy_order(
    model: nn.Module,
    train: Rows,
    target: Rows,
    pool: Rows,
    args: InfluenceArgs,
    k: int,
    rounds: int,
    *,
    first_ihvp: IHVPResult | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Adaptive greedy selection (rounds of ``ceil(k / rounds)``): score the pool at θ, take the lowest scores not yet
    chosen, add them to the training objective, Newton-step θ on it, re-score. ``model`` is not modified (a copy is).

    Returns the chosen positions in pick order and each round's scores (at the θ of that round). ``first_ihvp`` is the
    IHVP at the given θ (saves the first solve when the caller has it).
    """
    model = copy.deepcopy(model)
    chosen: list[int] = []
    per_round = -(-k // rounds) if k else 0
    history: list[np.ndarray] = []
    while len(chosen) < k:
        enlarged = train if not chosen else concat_rows(train, pool.subset(chosen))
        ihvp = first_ihvp if (first_ihvp is not None and not chosen) else compute_ihvp(
            model, enlarged, target, args, progress)
        scores = score_samples(model, ihvp, pool, args.scoring.batch_size).numpy()
        history.append(scores)
        free = scores.copy()
        free[chosen] = np.inf
        take = [int(i) for i in bottom_k(free, min(per_round, k - len(chosen)))]
        chosen.extend(take)
        if len(chosen) < k:
            newton_step(model, concat_rows(train, pool.subset(chosen)), args, progress)
    return np.asarray(chosen, dtype=np.int64), history


# -- trajectory-aware ------------------------------------------------------------------------------------------------


def tracin_scores(
    checkpoints: list[tuple[nn.Module, float]], target: Rows, pool: Rows, params: Any = "all", batch_size: int = 64
) -> np.ndarray:
    """``−Σ_c lr_c ⟨∇ℓ(z; θ_c), ∇L_target(θ_c)⟩`` for every pool row (float64): the first-order change of the target
    loss when z takes a gradient step of size ``lr_c`` at each checkpoint (TracIn, Pruthi et al. 2020, with the
    influence sign: negative = helpful). Each checkpoint is a model at θ_c with the learning rate used from there."""
    total = np.zeros(len(pool))
    for model, lr in checkpoints:
        with eval_mode(model):
            obj = SubsetObjective(model, params)
            v = loss_gradient(obj, target)
            # directional_scores gives −2 (f − y)(∇f · v) = −⟨∇ℓ(z), v⟩
            total += float(lr) * directional_scores(obj, v, pool, batch_size).numpy()
    return total


def fine_tune_checkpoints(ctx: PoolContext) -> list[tuple[nn.Module, float]]:
    """The weights at the start of each epoch of one short fine-tune of the base model on the training split (the
    fine-tune recipe with ``tracin_epochs`` epochs and no early stopping, seed ``ctx.seed``): one run of the one
    training function, its AdamW state carried across epochs as the grid's fine-tune does."""
    from .training import TrainConfig, train_regressor

    cfg = ctx.finetune if ctx.finetune is not None else TrainConfig()
    epochs = ctx.options.tracin_epochs
    run = TrainConfig(**{**cfg.to_dict(), "epochs": epochs, "patience": epochs, "seed": ctx.seed, "device": ctx.device})
    checkpoints: list[tuple[nn.Module, float]] = []
    train_regressor(copy.deepcopy(ctx.model), ctx.tokenizer, ctx.train, ctx.target, run,
                    on_epoch=lambda _epoch, model: checkpoints.append((copy.deepcopy(model).eval(), run.lr)),
                    log=lambda _m: None, progress=False)
    return checkpoints


def tracin_score(ctx: PoolContext) -> np.ndarray:
    return ctx._cached("tracin", lambda: tracin_scores(
        fine_tune_checkpoints(ctx), ctx.rows("target"), ctx.rows("pool"), ctx.influence.params,
        ctx.influence.scoring.batch_size))


# -- the registry ------------------------------------------------------------------------------------------------------


def _by_score(score: Callable[[PoolContext], np.ndarray]) -> Callable[[PoolContext, int], np.ndarray]:
    def selector(ctx: PoolContext, k: int) -> np.ndarray:
        return bottom_k(np.asarray(score(ctx), dtype=np.float64), _check_k(ctx, k))

    selector.score = score  # type: ignore[attr-defined]
    return selector


def adaptive_greedy(ctx: PoolContext, k: int) -> np.ndarray:
    k = _check_k(ctx, k)
    key = f"greedy:{k}"
    if key not in ctx._cache:
        ctx._cache[key] = adaptive_greedy_order(
            ctx.model, ctx.rows("train"), ctx.rows("target"), ctx.rows("pool"), ctx.influence, k,
            ctx.options.rounds, first_ihvp=ctx.base_ihvp(), progress=ctx.progress)[0]
    return ctx._cache[key]


SELECTORS: dict[str, Callable[[PoolContext, int], np.ndarray]] = {
    "most_negative": _by_score(PoolContext.influence_scores),
    "residual": _by_score(residual_score),
    "knn_agreement": _by_score(knn_score),
    "consensus": _by_score(consensus_score),
    "believable_helpful": _by_score(believable_helpful_score),
    "knn_influence": _by_score(knn_influence_score),
    "clipped_influence": _by_score(clipped_influence_score),
    "adaptive_greedy": adaptive_greedy,
    "tracin": _by_score(tracin_score),
}
"""name -> selector(ctx, k): the k chosen pool positions, most recommended first."""


def ranking_length(name: str, largest_k: int, pool_size: int) -> int:
    """How many rows the pipeline ranks with selector ``name`` (rule rank_pool): every pool row, except with
    adaptive_greedy, whose picks depend on k: its first ``largest_k`` (selection.k's largest; smaller k are prefixes)."""
    return min(largest_k, pool_size) if name == "adaptive_greedy" else pool_size


def ranking(ctx: PoolContext, name: str, k: int) -> pd.DataFrame:
    """The ``k`` rows ``SELECTORS[name]`` recommends, in order: the pool's columns plus ``rank`` (1 = first),
    ``score`` (the selector's own score, lower = more recommended; for adaptive_greedy the influence score of the
    round that picked the row) and the base model's ``prediction``."""
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; choose one of {sorted(SELECTORS)}")
    chosen = SELECTORS[name](ctx, k)
    score_of = getattr(SELECTORS[name], "score", None)
    if score_of is not None:
        score = score_of(ctx)[chosen]
    else:  # adaptive greedy: the order is the recommendation; the score is the base influence score
        score = ctx.influence_scores()[chosen]
    picked = ctx.pool.iloc[chosen].reset_index(drop=True)
    return picked.assign(rank=np.arange(1, len(chosen) + 1), score=score, prediction=ctx.predictions("pool")[chosen])

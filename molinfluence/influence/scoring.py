"""Scores of external samples: ``I(z) = −sᵀ ∇θ ℓ(z) = −2 w (f(z) − y) (∇θ f(z) · s)``; negative = expected helpful."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import jvp
from tqdm.auto import tqdm

from .args import InfluenceDivergence
from .io import IHVPResult
from .task import Rows, SubsetObjective, eval_mode


def _scoring_objective(model: nn.Module, ihvp: IHVPResult) -> tuple[SubsetObjective, torch.Tensor]:
    """The objective over exactly the IHVP's parameters, and s as a flat vector on the model's device."""
    params = dict(model.named_parameters())
    for name, shape in ihvp.shapes.items():
        if name not in params:
            raise ValueError(f"the IHVP holds parameter {name!r}, which the model does not have: wrong model for this IHVP")
        if list(params[name].shape) != shape:
            raise ValueError(
                f"the IHVP's {name!r} has shape {shape} but the model's has {list(params[name].shape)}: wrong model"
            )
    dtype = next(iter(ihvp.ihvp.values())).dtype
    obj = SubsetObjective(model, ihvp.param_names, dtype)
    return obj, obj.flatten(ihvp.ihvp)


def _check_scores(scores: torch.Tensor, external: Rows) -> torch.Tensor:
    bad = (~torch.isfinite(scores)).nonzero()
    if len(bad):
        raise InfluenceDivergence(
            f"the influence score of {external.name} row {int(bad[0])} is not finite ({float(scores[bad[0]])}); the "
            "model's prediction or its derivative overflowed there. No scores were written."
        )
    return scores


def directional_scores(
    obj: SubsetObjective, s: torch.Tensor, data: Rows, batch_size: int, progress: bool = False
) -> torch.Tensor:
    """``−2 (f(z) − y) (∇θ f(z) · s)`` for every row of ``data`` (float64, CPU, input order), one JVP per batch."""
    scores = torch.empty(len(data), dtype=torch.float64)
    order = torch.argsort(data.lengths(), stable=True)
    for idx in tqdm(order.split(batch_size), desc="scoring", disable=not progress, leave=False):
        chunk = data.subset(idx)
        pred, directional = jvp(lambda t, c=chunk: obj.predict(t, c), (obj.theta0,), (s,))
        residual = pred - obj.labels(chunk)
        scores[idx] = (-2.0 * residual * directional).detach().to("cpu", torch.float64)
    return scores


def score_samples(
    model: nn.Module, ihvp: IHVPResult, external: Rows, batch_size: int = 64, progress: bool = False
) -> torch.Tensor:
    """Scores ``I(z) = −2 (f(z) − y) (∇θ f(z) · s)`` of every row of ``external`` (float64, CPU, input order).

    One ``torch.func.jvp`` per batch gives the predictions and their directional derivatives along s for the whole
    batch in a single forward-mode pass (no per-sample backward). Rows are batched in order of token length so that
    little padding is computed. Negative = adding z is expected to lower the target loss. Raises
    :class:`InfluenceDivergence` rather than return a non-finite score.
    """
    if batch_size < 1:
        raise ValueError(f"influence.score_batch_size must be > 0, got {batch_size}")
    with eval_mode(model):
        obj, s = _scoring_objective(model, ihvp)
        obj.check_deterministic(external)
        scores = directional_scores(obj, s, external, batch_size, progress)
    return _check_scores(scores, external)


"""Reference implementations kept out of the package: slow, obvious loops that the batched production code is checked
against (tests/test_influence.py) and timed against (benchmarks/influence.py)."""

from __future__ import annotations

import torch
from torch import nn

from molinfluence.influence.io import IHVPResult
from molinfluence.influence.scoring import _check_scores, _scoring_objective
from molinfluence.influence.task import Rows, eval_mode


def score_samples_loop(model: nn.Module, ihvp: IHVPResult, external: Rows) -> torch.Tensor:
    """Reference of :func:`molinfluence.influence.score_samples`: one sample at a time, ``−sᵀ∇θ ℓ(z)`` by backward
    autograd (no forward-mode JVP, no batching)."""
    out = []
    with eval_mode(model):
        obj, s = _scoring_objective(model, ihvp)
        for i in range(len(external)):
            chunk = external.subset([i])
            theta = obj.theta0.detach().requires_grad_(True)
            loss = (obj.predict(theta, chunk) - obj.labels(chunk)).square().sum()
            (g,) = torch.autograd.grad(loss, theta)
            out.append(-torch.dot(g, s).detach().to("cpu", torch.float64))
    return _check_scores(torch.stack(out), external)

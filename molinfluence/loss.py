"""The regression loss: one definition for training, influence and validation.

Per sample ``ℓ(z) = (f(z) − y)²``; a split's loss is its mean (or, with per-sample weights, ``(1/n) Σ wᵢ ℓ(zᵢ)``), and
callers reduce the per-sample values as their objective needs. The influence definitions
(:mod:`molinfluence.influence`) and the Gauss–Newton factor 2 in ``G = (2/n) Σ wᵢ JᵢᵀJᵢ`` assume exactly this loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def squared_error(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``(pred − labels)²``; the labels are moved to ``pred``'s device and dtype (a no-op when they
    match), so the loss is computed in the precision of the predictions."""
    return (pred - labels.to(pred.device, pred.dtype)).square()


__all__ = ["squared_error"]

"""The task seam: what the engine needs from a model and its data, and nothing about any particular architecture.

A model supplies

- **predictions**: ``model(*batch.inputs) -> (B,)`` (a :class:`Batch` of token ids passes ``(input_ids,
  attention_mask)``, a :class:`FeatureBatch` passes ``(features,)``);
- **parameter groups** (optional): a method ``influence_param_prefixes(spec) -> list[str] | None`` that resolves
  named groups such as ``"head"`` or ``"last_layers:K"`` to parameter-name prefixes (None: not a group of this
  model, the spec is then read as a prefix). :class:`molinfluence.regressor.MolformerRegressor` knows its encoder
  blocks; the engine knows no parameter names at all.

The loss is the regression loss of :mod:`molinfluence.training`: per sample ``ℓ(z) = w (f(z) − y)²``, on a split the
mean ``L = (1/n) Σ wᵢ ℓᵢ``. :class:`SubsetObjective` turns predictions and loss into functions of a flat vector θ of
the selected parameters (every other parameter and buffer a detached constant), which every curvature product,
solver and score is built on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad

# The split containers live below the engine (molinfluence.batch) so that training and evaluation pass the same ones.
from ..batch import Batch, FeatureBatch, Rows  # noqa: E402  (re-exported: molinfluence.influence.Batch)
from ..loss import squared_error  # noqa: E402


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore each submodule's previous mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# --------------------------------------------------------------------------------------------------------------------
# Parameter subsets


def _prefixes(model: nn.Module, depth: int = 4) -> list[str]:
    """Dotted prefixes (up to ``depth`` components) of the model's parameter names, in model order."""
    seen: dict[str, None] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        for k in range(1, min(depth, len(parts) - 1) + 1):
            seen.setdefault(".".join(parts[:k]), None)
    return list(seen)


def _no_match(model: nn.Module, what: str) -> ValueError:
    valid = _prefixes(model)
    shown = ", ".join(valid[:60]) + (", …" if len(valid) > 60 else "")
    return ValueError(
        f"influence.params: {what}. Use 'all', a parameter group of the model (e.g. 'head', 'last_layers:K') or a "
        f"list of parameter-name prefixes; valid prefixes of this model: {shown}"
    )


def _matches(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def select_params(model: nn.Module, spec: str | Sequence[str]) -> dict[str, nn.Parameter]:
    """The parameters θ that influence is computed for, in the model's parameter order.

    ``spec``: ``"all"``; a group the model names through ``influence_param_prefixes(spec)`` (the regressor's
    ``"head"`` and ``"last_layers:K"``); a single prefix; or a list of prefixes (``"head"`` matches ``head.weight``
    but not ``header.weight``). Unknown prefixes and empty selections raise ValueError naming ``influence.params``
    and listing the valid prefixes.
    """
    named = dict(model.named_parameters())
    if not named:
        raise ValueError("influence.params: the model has no parameters")
    if isinstance(spec, str) and spec == "all":
        return named
    prefixes: list[str] | None = None
    if isinstance(spec, str):
        hook = getattr(model, "influence_param_prefixes", None)
        prefixes = hook(spec) if callable(hook) else None
        if prefixes is None and spec.startswith("last_layers"):
            raise _no_match(model, f"this model defines no parameter group {spec!r}")
    if prefixes is None:
        prefixes = [spec] if isinstance(spec, str) else list(spec)
    if not prefixes:
        raise _no_match(model, "the list of prefixes is empty")
    unknown = [q for q in prefixes if not any(_matches(n, q) for n in named)]
    if unknown:
        raise _no_match(model, f"no parameter matches {unknown}")
    return {n: p for n, p in named.items() if any(_matches(n, q) for q in prefixes)}


class SubsetObjective:
    """The model's predictions and loss as functions of a flat vector ``theta`` of the selected parameters.

    All other parameters (and buffers, when the dtype changes) are detached copies passed to
    ``torch.func.functional_call``, so they are constants for every derivative. The model's own tensors are never
    modified. ``theta0`` is the trained value of θ in ``dtype``.
    """

    def __init__(self, model: nn.Module, params: str | Sequence[str], dtype: torch.dtype | None = None) -> None:
        selected = select_params(model, params)
        first = next(iter(selected.values()))
        self.model = model
        self.dtype = dtype or first.dtype
        self.device = first.device
        self.names = list(selected)
        self.shapes = [tuple(p.shape) for p in selected.values()]
        self.numels = [p.numel() for p in selected.values()]
        self.numel = sum(self.numels)

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(self.dtype) if t.is_floating_point() else t.detach()

        self._base: dict[str, torch.Tensor] = {n: cast(p) for n, p in model.named_parameters()}
        if self.dtype != first.dtype:
            self._base.update({n: cast(b) for n, b in model.named_buffers()})
        self.theta0 = torch.cat([self._base[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat vector → {name: tensor} (views, differentiable)."""
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{name: tensor} → flat vector in this objective's order, dtype and device."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise ValueError(f"missing tensors for parameters {missing[:5]}")
        return torch.cat([tensors[n].reshape(-1).to(self.device, self.dtype) for n in self.names])

    def predict(self, theta: torch.Tensor, chunk: Rows) -> torch.Tensor:
        """Predictions (B,) of the model with θ = ``theta`` on ``chunk``."""
        params = dict(self._base)
        params.update(self.unflatten(theta))
        inputs = tuple(t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device) for t in chunk.inputs)
        out = functional_call(self.model, params, inputs)
        if not isinstance(out, torch.Tensor) or out.shape != (len(chunk),):
            raise ValueError(
                f"the model must return predictions of shape ({len(chunk)},) for a batch of {len(chunk)} rows, got "
                f"{getattr(out, 'shape', type(out).__name__)}"
            )
        return out

    def labels(self, chunk: Rows) -> torch.Tensor:
        return chunk.labels.to(self.device, self.dtype)

    def weights(self, chunk: Rows) -> torch.Tensor | None:
        return None if chunk.weights is None else chunk.weights.to(self.device, self.dtype)

    def loss_sum(self, theta: torch.Tensor, chunk: Rows) -> torch.Tensor:
        """``Σ wᵢ (f(zᵢ) − yᵢ)²`` over ``chunk`` (divide by the split size for the mean loss)."""
        per_sample = squared_error(self.predict(theta, chunk), self.labels(chunk))
        w = self.weights(chunk)
        return (per_sample if w is None else per_sample * w).sum()

    def check_deterministic(self, data: Rows) -> None:
        """Raise ValueError if two evaluations differ (e.g. MoLFormer with ``deterministic_eval=False``)."""
        chunk = data.subset(torch.arange(min(2, len(data))))
        with torch.no_grad():
            a, b = self.predict(self.theta0, chunk), self.predict(self.theta0, chunk)
        if not torch.equal(a, b):
            raise ValueError(
                "the model's predictions change between two evaluations in eval mode, so its loss has no fixed "
                "Hessian; for MoLFormer set config.deterministic_eval = True (load_encoder and load_regressor do)"
            )


def chunk_size(data: Rows, size: int | None) -> int:
    return len(data) if size is None else max(1, int(size))


def split_loss(obj: SubsetObjective, data: Rows, batch_size: int | None = None) -> float:
    """Mean loss ``L`` of the split at θ₀."""
    with torch.no_grad():
        total = sum(float(obj.loss_sum(obj.theta0, c)) for c in data.chunks(chunk_size(data, batch_size)))
    return total / len(data)


def loss_gradient(obj: SubsetObjective, data: Rows, batch_size: int | None = None) -> torch.Tensor:
    """``∇θ L`` of the mean loss over ``data`` at θ₀ (flat), accumulated over chunks of ``batch_size``."""
    total = torch.zeros_like(obj.theta0)
    for chunk in data.chunks(chunk_size(data, batch_size)):
        total += grad(obj.loss_sum)(obj.theta0, chunk)
    return total / len(data)

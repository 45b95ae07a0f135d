"""Influence functions for a trained regressor: inverse-Hessian-vector products (LiSSA, CG, exact) and scores.

Definitions (the README quotes this block):

- **Model.** Any ``nn.Module`` with ``model(input_ids, attention_mask) -> predictions`` of shape ``(B,)`` and named
  parameters (e.g. :class:`molinfluence.regressor.MolformerRegressor`). It is evaluated in eval mode, so dropout is
  off and MoLFormer's random feature map is fixed: the loss is a fixed function of the parameters.
- **θ.** The parameters restricted to a subset, chosen by :func:`select_params` with ``influence.params``:
  ``"all"``, ``"head"``, ``"last_layers:K"`` (the last K encoder blocks ``molformer.encoder.layer.{i}.`` plus the
  final ``molformer.LayerNorm.`` and ``head.``) or a list of parameter-name prefixes. Every other parameter and
  buffer is held constant (``torch.func.functional_call`` with detached tensors).
- **Loss.** Per sample ``ℓ(z) = (f(z) − y)²``; on a split of n samples with optional weights w (default 1)
  ``L = (1/n) Σ wᵢ ℓ(zᵢ)``, the training objective of :mod:`molinfluence.training`.
- **H.** The Hessian of the mean training loss over the whole training split at θ (Gauss–Newton plus residual
  term, no approximation). The solvers return ``s = (H + λI)⁻¹ v``.
- **λ (damping).** ``influence.damping`` is *relative*: ``λ = damping × λ_max(H)`` (power-iteration estimate for
  lissa/cg, the exact eigenvalue for exact); the absolute λ is reported as ``stats["lambda"]``. For a positive
  semi-definite H the default 0.01 bounds the condition number of ``H + λI`` by ``1 + 1/0.01 = 101`` whatever the
  model, label units or parameter subset, so LiSSA converges to 1 % in about ``safety_factor × 101 × ln 100 ≈ 700`` full-batch steps, and
  it suppresses only directions whose curvature is below 1 % of the largest — the nearly flat directions a
  fine-tuned network (more parameters than molecules, not exactly at a minimum) is full of, where an undamped inverse
  is dominated by noise and negative curvature. A relative λ also makes the score *ranking* invariant to rescaling
  the loss (e.g. label units): ``s`` and the scores simply scale by the inverse factor.
- **v.** ``∇θ L`` over the influence *target* split: the validation split by default; the test split only when the
  user asks for it (the workflow warns, because the final metrics are computed on it).
- **Score** of an external sample z (never part of the training split):
  ``I(z) = −vᵀ(H + λI)⁻¹ ∇θ ℓ(z) = −sᵀ ∇θ ℓ(z) = −2 (f(z) − y) (∇θ f(z) · s)``. It is the first-order change of the
  target loss when z is added to the training objective with weight ε, divided by ε (Koh & Liang, 2017): a
  **negative score means adding z is expected to help** (lower target loss). ``s`` is never renormalised, so the
  scores keep their units (target-loss change per unit weight).

Solvers (all use the same H, λ and v):

- ``lissa`` — the stochastic recursion of Agarwal et al. (2017) on ``A = H + λI`` with scale ``σ``::

      h₀ = v,   hⱼ = v + (I − A_Bⱼ / σ) hⱼ₋₁,   s ≈ h_J / σ

  where ``A_Bⱼ`` uses a seeded mini-batch ``Bⱼ`` of the training split (``batch_size`` ≥ n gives the exact,
  deterministic Richardson iteration). The series converges when ``σ > λ_max(A)/2`` and ``λ_min(A) > 0``, at rate
  ``1 − λ_min(A)/σ`` per step; dividing by σ (never multiplying) keeps ``s`` in the units of ``A⁻¹v``.
  ``scale: auto`` uses ``σ = safety_factor × λ̂_max(A)``. Since ``hⱼ − hⱼ₋₁ = v − A_Bⱼ (hⱼ₋₁/σ)`` is the residual
  of the current estimate, the stop rule "relative change ``‖hⱼ − hⱼ₋₁‖ / ‖hⱼ‖`` below ``tolerance`` for
  ``patience`` consecutive steps" bounds the relative error by about ``tolerance × σ / λ_min(A)`` (for full-batch
  HVPs, reported as ``error_estimate``; with mini-batches the change is dominated by sampling noise and the run
  usually stops at ``depth``). ``repeats`` independent runs are averaged; their spread measures that noise.
- ``cg`` — conjugate gradients on ``A`` with full-batch HVPs; stops when ``‖v − A x‖ / ‖v‖ < tolerance``.
- ``exact`` — the dense Hessian (``torch.func`` jacfwd of grad, chunked) and an eigendecomposition, always in
  float64; refused above :data:`MAX_EXACT_PARAMS` entries. It is the reference the iterative solvers are tested
  against.

Safeguards: power iteration estimates ``λ_max(H)`` and, by a shifted power iteration, ``λ_min(H)``. Both are
Rayleigh quotients, so a negative ``λ̂_min(H) + λ`` proves ``A`` indefinite: the damped problem is then not a
minimum and :class:`NegativeCurvature` says which damping would make it well posed (``λ > −λ_min(H)``, suggested
with a factor-2 margin). Power iteration converges slowly towards λ_min(H) when the spectrum is clustered near
zero, so a negative eigenvalue can be missed; LiSSA then diverges slowly along it. LiSSA stops when the iterate
becomes non-finite or its norm passes ``DIVERGENCE_FACTOR × σ‖v‖ / λ̂_min(A)`` (a convergent recursion stays below
``σ‖v‖ / λ_min(A)``) and diagnoses the cause from the curvature ``q = hᵀHh/hᵀh`` of the diverging iterate:
``q + λ ≤ 0`` raises :class:`NegativeCurvature` with the damping that fixes it, otherwise
:class:`InfluenceDivergence` says the scale is too small. It also raises when the averaged estimate's full-batch
residual is no better than that of ``s = 0``. A non-finite score raises too: nothing NaN is ever returned or
written.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from tqdm.auto import tqdm

from .files import atomic_path
from .config import from_section

__all__ = [
    "split_loss",
    "resolve_scale",
    "MAX_EXACT_PARAMS",
    "DIVERGENCE_FACTOR",
    "InfluenceDivergence",
    "NegativeCurvature",
    "InfluenceArgs",
    "Batch",
    "SubsetObjective",
    "EigenEstimate",
    "SolveResult",
    "IHVPResult",
    "select_params",
    "loss_gradient",
    "hvp",
    "exact_hessian",
    "estimate_eigs",
    "lissa",
    "cg",
    "exact",
    "compute_ihvp",
    "save_ihvp",
    "load_ihvp",
    "score_samples",
    "score_samples_loop",
]

MAX_EXACT_PARAMS = 5000
"""Largest parameter subset the dense Hessian is built for (5000² float64 = 200 MB)."""

DIVERGENCE_FACTOR = 10.0
"""LiSSA's iterate may not exceed this multiple of the largest norm a convergent recursion can reach."""

METHODS = ("lissa", "cg", "exact")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
HVP_MODES = ("func", "double_backward")
TARGETS = ("validation", "test")
FORMAT = "molinfluence-ihvp/1"
_EIG_RTOL = 1e-4  # power iteration stops when its Rayleigh quotient changes by less than this (relative to λ̂_max)
_MAX_TRACE_POINTS = 200  # convergence-trace points kept per LiSSA repeat


class InfluenceDivergence(RuntimeError):
    """An inverse-HVP solver or the scoring produced unusable numbers; the message says which option to change."""


class NegativeCurvature(InfluenceDivergence):
    """``H + λI`` is not positive definite: influence functions are not defined at this damping.

    ``lambda_min_H`` is the most negative curvature found (an upper bound on λ_min(H)); ``suggested_damping`` is a
    relative damping that makes the estimated spectrum positive with a factor-2 margin (None when H has no positive
    curvature at all, so no relative damping can help).
    """

    def __init__(
        self, message: str, *, lambda_min_H: float, damping: float, suggested_damping: float | None  # noqa: N803
    ) -> None:
        super().__init__(message)
        self.lambda_min_H = lambda_min_H
        self.damping = damping
        self.suggested_damping = suggested_damping


def _negative_curvature(lam_min_h: float, lam_max_h: float, damping: float, where: str) -> NegativeCurvature:
    """The error for a curvature ``lam_min_h`` of H with ``lam_min_h + damping × lam_max_h ≤ 0``, found by ``where``."""
    if lam_max_h <= 0:
        return NegativeCurvature(
            f"{where} found no positive curvature of the training loss (largest eigenvalue estimate of H is "
            f"{lam_max_h:.4g} ≤ 0): the model is not near a minimum of its training loss for these influence.params, "
            "so influence functions are undefined. Train the model to convergence or choose other influence.params.",
            lambda_min_H=lam_min_h,
            damping=damping,
            suggested_damping=None,
        )
    needed = -lam_min_h / lam_max_h
    suggested = float(f"{2.0 * needed:.2g}")  # two significant digits keep most of the factor-2 margin
    message = (
        f"{where} found curvature {lam_min_h:.4g} of the training-loss Hessian H (λ_max(H) ≈ {lam_max_h:.4g}), so "
        f"H + λI with λ = influence.damping × λ_max(H) = {damping:g} × {lam_max_h:.4g} = {damping * lam_max_h:.4g} "
        "is not positive definite and the damped problem is not a minimum (influence functions, LiSSA and CG assume "
        f"one). Use influence.damping > {needed:.3g} (suggested: {suggested:g}), train the model closer to "
        "convergence, or restrict influence.params (e.g. 'head')."
    )
    return NegativeCurvature(message, lambda_min_H=lam_min_h, damping=damping, suggested_damping=suggested)


# --------------------------------------------------------------------------------------------------------------------
# Arguments


@dataclass
class InfluenceArgs:
    """Options of the influence step (``influence:`` in the config); saved as JSON beside its outputs.

    ``damping`` is relative to λ_max(H) (module docstring). ``tolerance`` means the relative change of the iterate
    for ``lissa`` and the relative residual for ``cg``; ``depth`` caps the steps of both. The default 5e-5 bounds
    LiSSA's error by about ``5e-5 × σ/λ_min(A) ≤ 5e-5 × 1.5 × 101 ≈ 0.8 %`` at the default damping and safety
    factor (full-batch HVPs; mini-batch noise usually keeps the change above it, and the run then stops at ``depth``
    with ``converged: false``). ``hvp_mode`` defaults to ``double_backward``, about 2× faster than ``func`` on CPU for
    MoLFormer (benchmarks/influence.py). ``dtype`` applies to ``lissa``/``cg``; ``exact`` always uses float64.
    ``target`` records which split gave v (the caller picks the split); ``score_batch_size`` is the batch size of
    :func:`score_samples` (64: on the demo model on CPU, batches of 64 score ~9× faster than one sample at a time, 32
    only ~6×).
    """

    method: str = "lissa"
    params: str | list[str] = "all"
    target: str = "validation"
    damping: float = 0.01
    scale: str | float = "auto"
    safety_factor: float = 1.5
    depth: int = 1000
    repeats: int = 2
    batch_size: int = 32
    tolerance: float = 5e-5
    patience: int = 10
    power_iters: int = 30
    seed: int = 0
    dtype: str = "float32"
    hvp_mode: str = "double_backward"
    score_batch_size: int = 64

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid key (``influence.<key>``) and what it must be."""

        def bad(key: str, need: str) -> ValueError:
            return ValueError(f"influence.{key} must be {need}, got {getattr(self, key)!r}")

        def is_int(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        def is_num(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        if self.method not in METHODS:
            raise bad("method", f"one of {list(METHODS)}")
        if isinstance(self.params, str):
            if not self.params:
                raise bad("params", "'all', 'head', 'last_layers:K' or a list of parameter-name prefixes")
            if self.params.startswith("last_layers") and not re.fullmatch(r"last_layers:[1-9][0-9]*", self.params):
                raise bad("params", "of the form 'last_layers:K' with an integer K > 0")
        elif isinstance(self.params, (list, tuple)):
            if not self.params or not all(isinstance(p, str) and p for p in self.params):
                raise bad("params", "a non-empty list of non-empty parameter-name prefixes")
            self.params = list(self.params)
        else:
            raise bad("params", "'all', 'head', 'last_layers:K' or a list of parameter-name prefixes")
        if self.target not in TARGETS:
            raise bad("target", f"one of {list(TARGETS)}")
        if not is_num(self.damping) or self.damping < 0:
            raise bad("damping", "a finite number >= 0")
        if self.scale != "auto" and not (is_num(self.scale) and self.scale > 0):
            raise bad("scale", "'auto' or a number > 0")
        if not is_num(self.safety_factor) or self.safety_factor < 1:
            raise bad("safety_factor", "a number >= 1 (the scale must exceed the largest eigenvalue of H + λI)")
        for key in ("depth", "repeats", "batch_size", "patience", "power_iters", "score_batch_size"):
            value = getattr(self, key)
            if not is_int(value) or value <= 0:
                raise ValueError(f"influence.{key} must be > 0 (an integer), got {value!r}")
        if not is_num(self.tolerance) or self.tolerance <= 0:
            raise bad("tolerance", "a number > 0")
        if not is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an integer >= 0")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"one of {list(DTYPES)}")
        if self.hvp_mode not in HVP_MODES:
            raise bad("hvp_mode", f"one of {list(HVP_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (round-trips through :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InfluenceArgs:
        """Build from a config section; unknown keys are errors (a typo must not fall back to a default)."""
        return from_section(cls, d, "influence")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype the solver works in (float64 for ``exact`` whatever ``dtype`` says)."""
        return torch.float64 if self.method == "exact" else DTYPES[self.dtype]


# --------------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Batch:
    """A split as tensors: token ids and mask (N × T), labels (N,), optional per-sample weights (N,) ≥ 0.

    ``name`` (e.g. ``"train"``) is used in error messages. Tensors stay on the CPU; chunks are moved to the model's
    device when used.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None = None
    name: str = "batch"

    def __post_init__(self) -> None:
        ids, mask, y, w = self.input_ids, self.attention_mask, self.labels, self.weights
        where = f"{self.name} split"
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
            raise ValueError(f"{where}: input_ids must be an integer tensor of shape (N, T)")
        if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
            raise ValueError(f"{where}: attention_mask must have the shape of input_ids {tuple(ids.shape)}")
        n = ids.shape[0]
        if n == 0:
            raise ValueError(f"{where} is empty")
        if not isinstance(y, torch.Tensor) or y.shape != (n,):
            raise ValueError(f"{where}: labels must be a tensor of shape ({n},), got {getattr(y, 'shape', None)}")
        bad = (~torch.isfinite(y.double())).nonzero()
        if len(bad):
            raise ValueError(f"{where}: label of row {int(bad[0])} is not finite ({float(y[bad[0]])})")
        if w is not None:
            if not isinstance(w, torch.Tensor) or w.shape != (n,):
                raise ValueError(f"{where}: weights must be a tensor of shape ({n},)")
            bad = (~(torch.isfinite(w.double()) & (w >= 0))).nonzero()
            if len(bad):
                raise ValueError(f"{where}: weight of row {int(bad[0])} must be finite and >= 0, got {float(w[bad[0]])}")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def subset(self, index: torch.Tensor | Sequence[int]) -> Batch:
        """Rows ``index`` (in that order), trailing all-padding columns dropped."""
        idx = torch.as_tensor(index, dtype=torch.long)
        mask = self.attention_mask.index_select(0, idx)
        used = mask.ne(0).any(dim=0).nonzero()
        width = int(used[-1]) + 1 if len(used) else mask.shape[1]
        return Batch(
            input_ids=self.input_ids.index_select(0, idx)[:, :width],
            attention_mask=mask[:, :width],
            labels=self.labels.index_select(0, idx),
            weights=None if self.weights is None else self.weights.index_select(0, idx),
            name=self.name,
        )

    def chunks(self, size: int) -> Iterator[Batch]:
        """Consecutive chunks of at most ``size`` rows, in order."""
        for start in range(0, len(self), size):
            yield self.subset(torch.arange(start, min(start + size, len(self))))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore each submodule's previous mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# --------------------------------------------------------------------------------------------------------------------
# Parameter subsets and the loss as a function of a flat vector

_LAYER = re.compile(r"^molformer\.encoder\.layer\.(\d+)\.")


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
        f"influence.params: {what}. Use 'all', 'head', 'last_layers:K' or a list of parameter-name prefixes; "
        f"valid prefixes of this model: {shown}"
    )


def _matches(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def select_params(model: nn.Module, spec: str | Sequence[str]) -> dict[str, nn.Parameter]:
    """The parameters θ that influence is computed for, in the model's parameter order.

    ``spec``: ``"all"``; ``"head"``; ``"last_layers:K"`` (the last K blocks ``molformer.encoder.layer.{i}.``, the
    final ``molformer.LayerNorm.`` and ``head.``); a single prefix; or a list of prefixes (``"head"`` matches
    ``head.weight`` but not ``header.weight``). Unknown prefixes and empty selections raise ValueError naming
    ``influence.params`` and listing the valid prefixes.
    """
    named = dict(model.named_parameters())
    if not named:
        raise ValueError("influence.params: the model has no parameters")
    if isinstance(spec, str) and spec == "all":
        return named
    if isinstance(spec, str) and spec.startswith("last_layers"):
        m = re.fullmatch(r"last_layers:([1-9][0-9]*)", spec)
        if not m:
            raise ValueError(f"influence.params must be of the form 'last_layers:K' with K > 0, got {spec!r}")
        k = int(m.group(1))
        layers = sorted({int(mm.group(1)) for n in named if (mm := _LAYER.match(n))})
        if not layers:
            raise _no_match(model, "'last_layers:K' needs parameters named 'molformer.encoder.layer.{i}.*'")
        if k > len(layers):
            raise ValueError(f"influence.params: last_layers:{k} asks for {k} layers but the encoder has {len(layers)}")
        prefixes = [f"molformer.encoder.layer.{i}" for i in layers[-k:]] + ["molformer.LayerNorm", "head"]
        return {n: p for n, p in named.items() if any(_matches(n, q) for q in prefixes)}
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

    def predict(self, theta: torch.Tensor, chunk: Batch) -> torch.Tensor:
        """Predictions (B,) of the model with θ = ``theta`` on ``chunk``."""
        params = dict(self._base)
        params.update(self.unflatten(theta))
        ids = chunk.input_ids.to(self.device)
        mask = chunk.attention_mask.to(self.device)
        out = functional_call(self.model, params, (ids, mask))
        if not isinstance(out, torch.Tensor) or out.shape != (ids.shape[0],):
            raise ValueError(
                f"model(input_ids, attention_mask) must return predictions of shape ({ids.shape[0]},), got "
                f"{getattr(out, 'shape', type(out).__name__)}"
            )
        return out

    def loss_sum(self, theta: torch.Tensor, chunk: Batch) -> torch.Tensor:
        """``Σ wᵢ (f(zᵢ) − yᵢ)²`` over ``chunk`` (divide by the split size for the mean loss)."""
        residual = self.predict(theta, chunk) - chunk.labels.to(self.device, self.dtype)
        per_sample = residual.square()
        if chunk.weights is not None:
            per_sample = per_sample * chunk.weights.to(self.device, self.dtype)
        return per_sample.sum()

    def check_deterministic(self, data: Batch) -> None:
        """Raise ValueError if two evaluations differ (e.g. MoLFormer with ``deterministic_eval=False``)."""
        chunk = data.subset(torch.arange(min(2, len(data))))
        with torch.no_grad():
            a, b = self.predict(self.theta0, chunk), self.predict(self.theta0, chunk)
        if not torch.equal(a, b):
            raise ValueError(
                "the model's predictions change between two evaluations in eval mode, so its loss has no fixed "
                "Hessian; for MoLFormer set config.deterministic_eval = True (load_encoder and load_regressor do)"
            )


def _chunk_size(data: Batch, batch_size: int | None) -> int:
    return len(data) if batch_size is None else max(1, int(batch_size))


def split_loss(obj: SubsetObjective, data: Batch, batch_size: int | None = None) -> float:
    """Mean loss ``L`` of the split at θ₀."""
    with torch.no_grad():
        total = sum(float(obj.loss_sum(obj.theta0, c)) for c in data.chunks(_chunk_size(data, batch_size)))
    return total / len(data)


def loss_gradient(obj: SubsetObjective, data: Batch, batch_size: int | None = None) -> torch.Tensor:
    """``∇θ L`` of the mean loss over ``data`` at θ₀ (flat), accumulated over chunks of ``batch_size``."""
    total = torch.zeros_like(obj.theta0)
    for chunk in data.chunks(_chunk_size(data, batch_size)):
        total += grad(obj.loss_sum)(obj.theta0, chunk)
    return total / len(data)


def _chunk_hvp(obj: SubsetObjective, chunk: Batch, vec: torch.Tensor, mode: str) -> torch.Tensor:
    """``∇²θ (Σ wᵢ ℓᵢ) · vec`` on one chunk."""
    if mode == "func":
        # Forward-over-reverse: the directional derivative of the gradient along vec, one extra forward-mode pass.
        return jvp(lambda t: grad(obj.loss_sum)(t, chunk), (obj.theta0,), (vec,))[1]
    if mode == "double_backward":
        theta = obj.theta0.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(obj.loss_sum(theta, chunk), theta, create_graph=True)
        (hv,) = torch.autograd.grad(g, theta, grad_outputs=vec)
        return hv.detach()
    raise ValueError(f"influence.hvp_mode must be one of {list(HVP_MODES)}, got {mode!r}")


def hvp(
    obj: SubsetObjective, data: Batch, vec: torch.Tensor, mode: str = "func", batch_size: int | None = None
) -> torch.Tensor:
    """``H · vec`` with H the Hessian of the mean loss over ``data`` (chunks of ``batch_size``; exact, not sampled).

    ``mode="func"``: ``torch.func.jvp`` of ``torch.func.grad`` (forward-over-reverse). ``mode="double_backward"``:
    ``autograd.grad`` of the gradient with ``create_graph=True`` (reverse-over-reverse).
    """
    vec = vec.to(obj.device, obj.dtype)
    total = torch.zeros_like(obj.theta0)
    for chunk in data.chunks(_chunk_size(data, batch_size)):
        total += _chunk_hvp(obj, chunk, vec, mode)
    return total / len(data)


def exact_hessian(
    obj: SubsetObjective, data: Batch, batch_size: int | None = None, max_params: int = MAX_EXACT_PARAMS
) -> torch.Tensor:
    """Dense Hessian (n_params × n_params) of the mean loss over ``data``: ``jacfwd(grad)`` written as a ``vmap`` of
    forward-over-reverse HVPs over basis vectors, so that both parameters (chunks of 64) and samples are chunked.

    Not ``torch.func.hessian``: in torch 2.13 its jacfwd-of-jacrev gets the cross terms between a LayerNorm weight and
    the parameters before it wrong (jacrev of jacrev too), while forward-over-reverse agrees with autograd and finite
    differences (see tests/test_influence.py).

    Refuses subsets larger than ``max_params`` entries: choose ``influence.params: head`` or a few prefixes.
    """
    if obj.numel > max_params:
        raise ValueError(
            f"influence.method 'exact' builds the dense Hessian, which is limited to {max_params} parameters but "
            f"influence.params selects {obj.numel}; use method 'lissa' or 'cg', or a smaller influence.params"
        )
    eye = torch.eye(obj.numel, dtype=obj.dtype, device=obj.device)
    hess = torch.zeros(obj.numel, obj.numel, dtype=obj.dtype, device=obj.device)
    for chunk in data.chunks(_chunk_size(data, batch_size)):
        column = lambda e, c=chunk: jvp(lambda t: grad(obj.loss_sum)(t, c), (obj.theta0,), (e,))[1]  # noqa: E731
        hess += vmap(column, chunk_size=64)(eye)
    hess /= len(data)
    return (hess + hess.T) / 2  # remove the rounding asymmetry; H is symmetric by definition


# --------------------------------------------------------------------------------------------------------------------
# Spectrum estimates


@dataclass
class EigenEstimate:
    """Power-iteration estimates of H's extreme eigenvalues.

    Both are Rayleigh quotients ``uᵀHu`` of unit vectors, so ``top ≤ λ_max(H)`` and ``bottom ≥ λ_min(H)``: a negative
    ``bottom`` proves H indefinite.
    """

    top: float
    bottom: float
    iterations: int

    def absolute_damping(self, damping: float) -> float:
        """λ for a relative ``damping``: ``damping × λ̂_max(H)``."""
        return damping * self.top

    def check(self, damping: float) -> None:
        """Raise :class:`NegativeCurvature` unless ``H + λI`` is positive definite as far as the estimates show."""
        lam = self.absolute_damping(damping)
        if self.top <= 0 or self.bottom + lam <= 0:
            raise _negative_curvature(self.bottom, self.top, damping, "power iteration")

    def to_dict(self, damping: float) -> dict[str, Any]:
        """JSON-able summary for relative ``damping``."""
        lam = self.absolute_damping(damping)
        return {
            "lambda_max_H": self.top,
            "lambda_min_H": self.bottom,
            "lambda_max_A": self.top + lam,
            "lambda_min_A": self.bottom + lam,
            "condition_number_A": (self.top + lam) / (self.bottom + lam) if self.bottom + lam > 0 else None,
            "power_iterations": self.iterations,
        }


def _power(
    matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, iters: int, rtol: float | None, bar: tqdm
) -> tuple[float, int]:
    """Power iteration from ``start``; returns (largest Rayleigh quotient seen, iterations used).

    With ``rtol`` it stops once the quotient changes by less than ``rtol`` times its size between two iterations.
    """
    u = start / start.norm()
    best, previous, used = -math.inf, None, 0
    for used in range(1, iters + 1):
        w = matvec(u)
        rho = float(torch.dot(u, w))
        bar.update(1)
        if not math.isfinite(rho):
            return rho, used
        best = max(best, rho)
        norm = float(w.norm())
        if norm == 0.0:
            break
        u = w / norm
        if rtol is not None and previous is not None and abs(rho - previous) <= rtol * abs(rho):
            break
        previous = rho
    return best, used


def estimate_eigs(
    obj: SubsetObjective,
    train: Batch,
    iters: int = 30,
    batch_size: int | None = None,
    seed: int = 0,
    mode: str = "double_backward",
    progress: bool = False,
) -> EigenEstimate:
    """λ_max(H) by power iteration and λ_min(H) by power iteration on ``λ̂_max I − H`` (full-batch HVPs).

    The first run stops early once its Rayleigh quotient is stable to 1e-4; the shifted run, which converges slowly
    when the spectrum is clustered near zero, always uses all ``iters``. Start vectors are seeded. When ``λ̂_max ≤ 0``
    the shifted run is skipped (H is then already shown not positive semi-definite).
    """
    gen = torch.Generator().manual_seed(seed)
    starts = [torch.randn(obj.numel, generator=gen, dtype=torch.float64).to(obj.device, obj.dtype) for _ in range(2)]

    def matvec(u: torch.Tensor) -> torch.Tensor:
        return hvp(obj, train, u, mode, batch_size)

    with tqdm(total=2 * iters, desc="power iteration", disable=not progress, leave=False) as bar:
        top, used_top = _power(matvec, starts[0], iters, _EIG_RTOL, bar)
        if not math.isfinite(top):
            raise InfluenceDivergence(
                "power iteration on H produced a non-finite value: the model's loss or its derivatives are not finite "
                "at the trained parameters"
            )
        if top <= 0:
            return EigenEstimate(top=top, bottom=top, iterations=used_top)
        shifted, used_bottom = _power(lambda u: top * u - matvec(u), starts[1], iters, None, bar)
    # Each shifted quotient is uᵀ(μI − H)u = μ − uᵀHu, so the smallest uᵀHu seen is μ − max(shifted).
    return EigenEstimate(top=top, bottom=top - shifted, iterations=used_top + used_bottom)


# --------------------------------------------------------------------------------------------------------------------
# Solvers


@dataclass
class SolveResult:
    """A solver's estimate of ``(H + λI)⁻¹ v`` (flat) and its JSON-able diagnostics."""

    x: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


def _relative_residual(
    obj: SubsetObjective, train: Batch, v: torch.Tensor, x: torch.Tensor, lam: float, mode: str, batch_size: int | None
) -> float:
    """``‖v − (H + λI) x‖ / ‖v‖`` with a full-batch HVP (1 means no better than x = 0)."""
    residual = v - hvp(obj, train, x, mode, batch_size) - lam * x
    return float(residual.norm() / v.norm())


def resolve_scale(args: InfluenceArgs, eigs: EigenEstimate, lam: float) -> float:
    """LiSSA's σ: ``safety_factor × λ̂_max(H + λI)`` for ``scale: auto``, else the given number."""
    return args.safety_factor * (eigs.top + lam) if args.scale == "auto" else float(args.scale)


def _lissa_divergence(
    obj: SubsetObjective,
    train: Batch,
    h: torch.Tensor,
    lam: float,
    scale: float,
    eigs: EigenEstimate,
    args: InfluenceArgs,
    step: int,
    rep: int,
    norm: float,
    bound: float,
) -> InfluenceDivergence:
    """Diagnose a diverging recursion from the curvature ``q = hᵀHh / hᵀh`` of its last finite iterate ``h``.

    A diverging iterate aligns with the eigenvector that makes ``|1 − (q + λ)/σ| > 1``: ``q + λ ≤ 0`` means H + λI
    has negative curvature that power iteration missed (its λ_min estimate is only an upper bound), ``q + λ > 2σ``
    means the scale is too small.
    """
    q = float(torch.dot(h, hvp(obj, train, h, args.hvp_mode, args.batch_size)) / torch.dot(h, h))
    what = "became non-finite" if not math.isfinite(norm) else f"reached ‖h‖ = {norm:.4g} > {bound:.4g}"
    if math.isfinite(q) and q + lam <= 0:
        return _negative_curvature(q, eigs.top, lam / eigs.top, f"LiSSA (diverged at step {step}; its iterate)")
    return InfluenceDivergence(
        f"LiSSA diverged at step {step} of repeat {rep + 1}: the iterate {what}. The recursion converges only when "
        f"the scale σ = {scale:.4g} exceeds λ_max(H + λI)/2 (power-iteration estimate λ_max ≈ {eigs.top + lam:.4g}; "
        f"the diverging direction has curvature {q + lam:.4g}; mini-batch Hessians can be larger) and H + λI is "
        "positive definite. Use influence.scale: auto or a larger influence.scale / influence.safety_factor, a larger "
        "influence.batch_size, or a larger influence.damping."
    )


def lissa(
    obj: SubsetObjective,
    train: Batch,
    v: torch.Tensor,
    lam: float,
    eigs: EigenEstimate,
    args: InfluenceArgs,
    progress: bool = False,
) -> SolveResult:
    """LiSSA for ``(H + λI)⁻¹ v`` with absolute damping ``lam`` (recursion in the module docstring).

    ``eigs`` supplies λ̂_max for ``scale: auto`` and λ̂_min for the divergence bound; an estimate that shows
    ``H + λI`` indefinite raises :class:`NegativeCurvature` before any step. Mini-batches of ``args.batch_size`` are
    drawn without replacement from a permutation of the training split (seeded by ``args.seed``, reshuffled when
    exhausted); ``batch_size ≥ n`` uses the full split every step. Uses ``depth``, ``repeats``, ``tolerance``,
    ``patience``, ``hvp_mode`` and ``scale``/``safety_factor`` from ``args``.
    """
    if eigs.top <= 0 or eigs.bottom + lam <= 0:
        raise _negative_curvature(eigs.bottom, eigs.top, lam / eigs.top if eigs.top > 0 else 0.0, "power iteration")
    scale = resolve_scale(args, eigs, lam)
    v = v.to(obj.device, obj.dtype)
    floor = min(x for x in (lam, eigs.bottom + lam) if x > 0)  # a lower bound on λ_min(H + λI) as far as we know
    bound = DIVERGENCE_FACTOR * scale * float(v.norm()) / floor
    n, full = len(train), args.batch_size >= len(train)
    gen = torch.Generator().manual_seed(args.seed)
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
                    batch = train
                else:
                    if pos + args.batch_size > n:
                        perm, pos = torch.randperm(n, generator=gen), 0
                    batch = train.subset(perm[pos : pos + args.batch_size])
                    pos += args.batch_size
                h_new = v + h - (hvp(obj, batch, h, args.hvp_mode, args.batch_size) + lam * h) / scale
                norm = float(h_new.norm())
                if not math.isfinite(norm) or norm > bound:
                    raise _lissa_divergence(obj, train, h, lam, scale, eigs, args, step, rep, norm, bound)
                rel = float((h_new - h).norm()) / norm
                h = h_new
                calm = calm + 1 if rel < args.tolerance else 0
                bar.update(1)
                if step % log_every == 0:
                    trace.append([step, rel])
                    bar.set_postfix(repeat=rep + 1, rel_change=f"{rel:.2e}")
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
    residual = _relative_residual(obj, train, v, x, lam, args.hvp_mode, args.batch_size)
    if not math.isfinite(residual) or residual >= 1.0:
        raise InfluenceDivergence(
            f"LiSSA's estimate has full-batch relative residual ‖v − (H + λI)s‖/‖v‖ = {residual:.3g} ≥ 1, no better "
            f"than s = 0 (σ = {scale:.4g}, λ̂_max(H + λI) = {eigs.top + lam:.4g}): increase influence.scale or "
            "influence.safety_factor, influence.batch_size, influence.repeats or influence.damping."
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
    obj: SubsetObjective, train: Batch, v: torch.Tensor, lam: float, args: InfluenceArgs, progress: bool = False
) -> SolveResult:
    """Conjugate gradients on ``(H + λI) x = v`` (absolute damping ``lam``) with full-batch HVPs.

    Stops when the recursive relative residual drops below ``args.tolerance`` (at most ``args.depth`` iterations;
    HVPs in chunks of ``args.batch_size``). A direction ``p`` with ``pᵀ(H + λI)p ≤ 0`` proves the problem
    indefinite: :class:`NegativeCurvature`.
    """
    v = v.to(obj.device, obj.dtype)
    vnorm = float(v.norm())
    x = torch.zeros_like(v)
    r = v.clone()
    p = r.clone()
    rs = float(torch.dot(r, r))
    rel, converged, k = 1.0, False, 0
    trace: list[list[float]] = []
    for k in tqdm(range(1, args.depth + 1), desc="CG", disable=not progress, leave=False):
        hp = hvp(obj, train, p, args.hvp_mode, args.batch_size)
        php, pp = float(torch.dot(p, hp)), float(torch.dot(p, p))
        if not math.isfinite(php):
            raise InfluenceDivergence(f"CG met a non-finite curvature at iteration {k}: the loss derivatives are not finite")
        if php + lam * pp <= 0:
            # compute_ihvp passes λ = damping × λ̂_max(H); otherwise v's Rayleigh quotient is a lower bound on λ_max(H).
            if args.damping > 0 and lam > 0:
                top = lam / args.damping
            else:
                top = float(torch.dot(v, hvp(obj, train, v, args.hvp_mode, args.batch_size))) / vnorm**2
            raise _negative_curvature(php / pp, top, args.damping, f"conjugate gradient (iteration {k})")
        alpha = rs / (php + lam * pp)
        x = x + alpha * p
        r = r - alpha * (hp + lam * p)
        rs_new = float(torch.dot(r, r))
        rel = math.sqrt(rs_new) / vnorm
        trace.append([k, rel])
        if rel < args.tolerance:
            converged = True
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    residual = _relative_residual(obj, train, v, x, lam, args.hvp_mode, args.batch_size)
    if not math.isfinite(residual) or residual >= 1.0:
        raise InfluenceDivergence(f"CG's estimate has relative residual {residual:.3g} ≥ 1; increase influence.damping")
    return SolveResult(
        x=x,
        stats={
            "steps": [k],
            "converged": converged,
            "relative_residual": residual,
            "convergence_trace": [trace[:: max(1, len(trace) // _MAX_TRACE_POINTS)]],
        },
    )


def _dense_solve(hess: torch.Tensor, v: torch.Tensor, lam: float) -> SolveResult:
    """``(H + λI)⁻¹ v`` through the eigendecomposition of the dense ``hess`` (absolute damping ``lam``)."""
    evals, evecs = torch.linalg.eigh(hess)
    lam_min, lam_max = float(evals[0]), float(evals[-1])
    if lam_max <= 0 or lam_min + lam <= 0:
        raise _negative_curvature(lam_min, lam_max, lam / lam_max if lam_max > 0 else 0.0, "the exact eigendecomposition")
    v = v.to(hess.device, hess.dtype)
    x = evecs @ ((evecs.T @ v) / (evals + lam))
    return SolveResult(
        x=x,
        stats={
            "lambda_max_H": lam_max,
            "lambda_min_H": lam_min,
            "lambda_max_A": lam_max + lam,
            "lambda_min_A": lam_min + lam,
            "condition_number_A": (lam_max + lam) / (lam_min + lam),
            "relative_residual": float((v - hess @ x - lam * x).norm() / v.norm()),
            "steps": [1],
            "converged": True,
        },
    )


def exact(obj: SubsetObjective, train: Batch, v: torch.Tensor, lam: float, batch_size: int | None = None) -> SolveResult:
    """Dense reference solve of ``(H + λI) x = v`` with absolute damping ``lam`` (use a float64 ``obj``).

    Raises :class:`NegativeCurvature` when ``λ_min(H) + λ ≤ 0`` and ValueError above :data:`MAX_EXACT_PARAMS`.
    """
    return _dense_solve(exact_hessian(obj, train, batch_size), v, lam)


# --------------------------------------------------------------------------------------------------------------------
# The IHVP as a result and a file


@dataclass
class IHVPResult:
    """``s = (H + λI)⁻¹ v`` per parameter (CPU tensors, model order), solver diagnostics and the arguments used."""

    ihvp: dict[str, torch.Tensor]
    stats: dict[str, Any]
    args: dict[str, Any]

    @property
    def param_names(self) -> list[str]:
        return list(self.ihvp)

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {n: list(t.shape) for n, t in self.ihvp.items()}


def compute_ihvp(
    model: nn.Module, train: Batch, target: Batch, args: InfluenceArgs | Mapping[str, Any], progress: bool = True
) -> IHVPResult:
    """``s = (H + λI)⁻¹ ∇θ L_target`` for the trained ``model`` (see the module docstring for every symbol).

    ``train`` defines H (the model's training split), ``target`` defines v (validation by default). The absolute
    damping is ``λ = args.damping × λ_max(H)`` (power-iteration estimate for lissa/cg, exact for exact). The model is
    put in eval mode for the computation and restored afterwards; its parameters are not modified.
    """
    if not isinstance(args, InfluenceArgs):
        args = InfluenceArgs.from_dict(args)
    args.validate()
    start = time.perf_counter()
    with _eval_mode(model):
        obj = SubsetObjective(model, args.params, args.torch_dtype)
        obj.check_deterministic(train)
        v = loss_gradient(obj, target, args.batch_size)
        vnorm = float(v.norm())
        if not math.isfinite(vnorm):
            raise InfluenceDivergence(f"the gradient of the {target.name} loss is not finite: check the model and labels")
        if vnorm == 0.0:
            raise ValueError(
                f"influence.params selects parameters that the {target.name} loss does not depend on (its gradient is "
                "exactly zero), so every score would be 0; choose other influence.params"
            )
        if args.method == "exact":
            hess = exact_hessian(obj, train, args.batch_size)
            top = float(torch.linalg.eigvalsh(hess)[-1])
            lam = args.damping * top if top > 0 else 0.0
            result = _dense_solve(hess, v, lam)
            spectrum: dict[str, Any] = {}
        else:
            eigs = estimate_eigs(obj, train, args.power_iters, args.batch_size, args.seed, args.hvp_mode, progress)
            eigs.check(args.damping)
            lam = eigs.absolute_damping(args.damping)
            spectrum = eigs.to_dict(args.damping)
            if args.method == "lissa":
                result = lissa(obj, train, v, lam, eigs, args, progress)
            else:
                result = cg(obj, train, v, lam, args, progress)
        train_loss, target_loss = split_loss(obj, train, args.batch_size), split_loss(obj, target, args.batch_size)
    x = result.x
    if not bool(torch.isfinite(x).all()):
        raise InfluenceDivergence(f"the {args.method} solver returned non-finite values; increase influence.damping")
    stats: dict[str, Any] = {
        "method": args.method,
        "params": args.params,
        "target": args.target,
        "n_params": obj.numel,
        "n_train": len(train),
        "n_target": len(target),
        "dtype": str(obj.dtype).removeprefix("torch."),
        "hvp_mode": args.hvp_mode,
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
        "seconds": time.perf_counter() - start,
    }
    ihvp = {n: t.detach().to("cpu").clone() for n, t in obj.unflatten(x).items()}
    return IHVPResult(ihvp=ihvp, stats=stats, args=args.to_dict())


def save_ihvp(result: IHVPResult, path: str | Path) -> Path:
    """Write ``result`` as a torch file of tensors and plain containers (``torch.load(weights_only=True)``), atomically."""
    payload = {
        "format": FORMAT,
        "param_names": result.param_names,
        "shapes": [list(t.shape) for t in result.ihvp.values()],
        "ihvp": {n: t.detach().to("cpu").contiguous() for n, t in result.ihvp.items()},
        "stats": result.stats,
        "args": result.args,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_ihvp(path: str | Path) -> IHVPResult:
    """Read a file written by :func:`save_ihvp` (no pickle code runs); ValueError naming the file if it is not one."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not an IHVP file"
        raise ValueError(f"{path}: not a readable IHVP file ({str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an IHVP file of format {FORMAT!r}; recompute it with compute_ihvp/save_ihvp")
    ihvp, names, shapes = payload.get("ihvp"), payload.get("param_names"), payload.get("shapes")
    if not isinstance(ihvp, dict) or names != list(ihvp) or not isinstance(shapes, list) or len(shapes) != len(names):
        raise ValueError(f"{path}: the parameter names, shapes and tensors of the IHVP file do not match")
    for name, shape in zip(names, shapes):
        t = ihvp[name]
        if not isinstance(t, torch.Tensor) or list(t.shape) != list(shape) or not t.is_floating_point():
            raise ValueError(f"{path}: tensor {name!r} does not have the recorded shape {shape}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: tensor {name!r} holds non-finite values")
    return IHVPResult(ihvp=dict(ihvp), stats=dict(payload.get("stats") or {}), args=dict(payload.get("args") or {}))


# --------------------------------------------------------------------------------------------------------------------
# Scoring external samples


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


def _check_scores(scores: torch.Tensor, external: Batch) -> torch.Tensor:
    bad = (~torch.isfinite(scores)).nonzero()
    if len(bad):
        raise InfluenceDivergence(
            f"the influence score of {external.name} row {int(bad[0])} is not finite ({float(scores[bad[0]])}); the "
            "model's prediction or its derivative overflowed there. No scores were written."
        )
    return scores


def score_samples(
    model: nn.Module, ihvp: IHVPResult, external: Batch, batch_size: int = 64, progress: bool = False
) -> torch.Tensor:
    """Scores ``I(z) = −2 (f(z) − y) (∇θ f(z) · s)`` of every row of ``external`` (float64, CPU, input order).

    One ``torch.func.jvp`` per batch gives the predictions and their directional derivatives along s for the whole
    batch in a single forward-mode pass (no per-sample backward). Rows are batched in order of token length so that
    little padding is computed. Negative = adding z is expected to lower the target loss. Raises
    :class:`InfluenceDivergence` rather than return a non-finite score.
    """
    if batch_size < 1:
        raise ValueError(f"influence.score_batch_size must be > 0, got {batch_size}")
    scores = torch.empty(len(external), dtype=torch.float64)
    order = torch.argsort(external.attention_mask.ne(0).sum(dim=1), stable=True)
    with _eval_mode(model):
        obj, s = _scoring_objective(model, ihvp)
        obj.check_deterministic(external)
        batches = order.split(batch_size)
        for idx in tqdm(batches, desc="scoring", disable=not progress, leave=False):
            chunk = external.subset(idx)
            pred, directional = jvp(lambda t, c=chunk: obj.predict(t, c), (obj.theta0,), (s,))
            residual = pred - chunk.labels.to(obj.device, obj.dtype)
            scores[idx] = (-2.0 * residual * directional).detach().to("cpu", torch.float64)
    return _check_scores(scores, external)


def score_samples_loop(model: nn.Module, ihvp: IHVPResult, external: Batch, progress: bool = False) -> torch.Tensor:
    """Reference implementation of :func:`score_samples`: one sample at a time, ``−sᵀ∇θ ℓ(z)`` by backward autograd."""
    out = []
    with _eval_mode(model):
        obj, s = _scoring_objective(model, ihvp)
        for i in tqdm(range(len(external)), desc="scoring (loop)", disable=not progress, leave=False):
            chunk = external.subset([i])
            theta = obj.theta0.detach().requires_grad_(True)
            loss = (obj.predict(theta, chunk) - chunk.labels.to(obj.device, obj.dtype)).square().sum()
            (g,) = torch.autograd.grad(loss, theta)
            out.append(-torch.dot(g, s).detach().to("cpu", torch.float64))
    return _check_scores(torch.stack(out), external)

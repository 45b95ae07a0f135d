"""Curvature operators of the mean training loss as matrix–vector products, and their dense forms for references.

- ``hessian``: ``H = ∇²θ L`` (Gauss–Newton term plus the residual term ``(2/n) Σ wᵢ (fᵢ − yᵢ) ∇²fᵢ``, which makes
  H indefinite away from a minimum).
- ``gauss_newton``: ``G = (2/n) Σ wᵢ Jᵢᵀ Jᵢ`` with ``Jᵢ = ∂f(zᵢ)/∂θ`` — H without the residual term, positive
  semi-definite by construction. ``G·v`` for a whole chunk without a per-sample loop: a JVP of the predictions gives
  ``J v`` (B values; by forward mode, or by reverse-over-reverse with ``hvp_mode: double_backward``), a VJP with the
  cotangent ``2 w ⊙ J v`` gives ``Jᵀ(2 w ⊙ J v)``.

All products are exact over the rows given (chunks of ``chunk_size`` rows bound the memory, not the result).
:class:`CurvatureOperator` fixes the split, the kind and the chunking, and counts the rows it has processed so that a
solver's cost can be reported in full-split product equivalents.
"""

from __future__ import annotations

import torch
from torch.func import grad, jvp, vjp, vmap

from .args import CURVATURES, HVP_MODES, MAX_EXACT_PARAMS
from .task import Rows, SubsetObjective, chunk_size


def _chunk_hvp(obj: SubsetObjective, chunk: Rows, vec: torch.Tensor, mode: str) -> torch.Tensor:
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


def _chunk_gnvp(obj: SubsetObjective, chunk: Rows, vec: torch.Tensor, mode: str = "double_backward") -> torch.Tensor:
    """``Σ 2 wᵢ Jᵢᵀ (Jᵢ · vec)`` on one chunk: ``J · vec`` for all rows at once, then one VJP.

    ``mode="func"``: ``J · vec`` by a forward-mode JVP (``torch.func.jvp``), then ``torch.func.vjp``.
    ``mode="double_backward"``: reverse mode only, on one forward graph: ``g(u) = Jᵀu`` with ``create_graph``, whose
    derivative along ``vec`` with respect to ``u`` is ``J · vec``; then ``Jᵀ(2w ⊙ J vec)`` by a backward pass through
    the same graph (1.4× faster than ``func`` on CPU for the demo's model: no forward-mode decompositions).
    """
    if mode == "func":

        def f(t: torch.Tensor) -> torch.Tensor:
            return obj.predict(t, chunk)

        _, jv = jvp(f, (obj.theta0,), (vec,))
        _, vjp_fn = vjp(f, obj.theta0)
        pullback = lambda c: vjp_fn(c)[0]  # noqa: E731
    elif mode == "double_backward":
        theta = obj.theta0.detach().requires_grad_(True)
        pred = obj.predict(theta, chunk)
        u = torch.zeros_like(pred, requires_grad=True)
        (jt_u,) = torch.autograd.grad(pred, theta, grad_outputs=u, create_graph=True)
        (jv,) = torch.autograd.grad(jt_u, u, grad_outputs=vec)
        pullback = lambda c: torch.autograd.grad(pred, theta, grad_outputs=c)[0]  # noqa: E731
    else:
        raise ValueError(f"influence.hvp_mode must be one of {list(HVP_MODES)}, got {mode!r}")
    w = obj.weights(chunk)
    cotangent = 2.0 * jv if w is None else 2.0 * w * jv
    return pullback(cotangent.detach()).detach()


def _chunk_product(obj: SubsetObjective, chunk: Rows, vec: torch.Tensor, curvature: str, mode: str) -> torch.Tensor:
    if curvature == "hessian":
        return _chunk_hvp(obj, chunk, vec, mode)
    if curvature == "gauss_newton":
        return _chunk_gnvp(obj, chunk, vec, mode)
    raise ValueError(f"influence.curvature must be one of {list(CURVATURES)}, got {curvature!r}")


def curvature_product(
    obj: SubsetObjective,
    data: Rows,
    vec: torch.Tensor,
    curvature: str = "hessian",
    mode: str = "func",
    batch_size: int | None = None,
) -> torch.Tensor:
    """``C · vec`` for C the Hessian or the Gauss–Newton matrix of the mean loss over ``data`` (chunks of
    ``batch_size`` rows; exact, not sampled)."""
    vec = vec.to(obj.device, obj.dtype)
    total = torch.zeros_like(obj.theta0)
    for chunk in data.chunks(chunk_size(data, batch_size)):
        total += _chunk_product(obj, chunk, vec, curvature, mode)
    return total / len(data)


def hvp(
    obj: SubsetObjective, data: Rows, vec: torch.Tensor, mode: str = "func", batch_size: int | None = None
) -> torch.Tensor:
    """``H · vec`` with H the Hessian of the mean loss over ``data`` (chunks of ``batch_size``; exact, not sampled).

    ``mode="func"``: ``torch.func.jvp`` of ``torch.func.grad`` (forward-over-reverse). ``mode="double_backward"``:
    ``autograd.grad`` of the gradient with ``create_graph=True`` (reverse-over-reverse).
    """
    return curvature_product(obj, data, vec, "hessian", mode, batch_size)


def gnvp(
    obj: SubsetObjective, data: Rows, vec: torch.Tensor, batch_size: int | None = None, mode: str = "double_backward"
) -> torch.Tensor:
    """``G · vec`` with ``G = (2/n) Σ wᵢ JᵢᵀJᵢ`` over ``data`` (``J · vec`` then a VJP per chunk of ``batch_size``
    rows; ``mode`` as for :func:`hvp`, see ``_chunk_gnvp``)."""
    return curvature_product(obj, data, vec, "gauss_newton", mode, batch_size)


class CurvatureOperator:
    """``v ↦ C v`` on a fixed split (or on a given subset of its rows), counting the rows processed.

    ``full_equivalents`` is the cost so far in units of one product over the whole split.
    """

    def __init__(self, obj: SubsetObjective, data: Rows, curvature: str, mode: str, batch_size: int | None) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"influence.curvature must be one of {list(CURVATURES)}, got {curvature!r}")
        self.obj, self.data, self.curvature, self.mode, self.batch_size = obj, data, curvature, mode, batch_size
        self.rows = 0

    def __call__(self, vec: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        data = self.data if rows is None else rows
        self.rows += len(data)
        return curvature_product(self.obj, data, vec, self.curvature, self.mode, self.batch_size)

    @property
    def full_equivalents(self) -> float:
        return self.rows / len(self.data)


def _refuse_large(obj: SubsetObjective, max_params: int) -> None:
    if obj.numel > max_params:
        raise ValueError(
            f"influence.method 'exact' builds the dense curvature matrix, which is limited to {max_params} parameters "
            f"but influence.params selects {obj.numel}; use method 'cg' or 'lissa', or a smaller influence.params"
        )


def exact_hessian(
    obj: SubsetObjective, data: Rows, batch_size: int | None = None, max_params: int = MAX_EXACT_PARAMS
) -> torch.Tensor:
    """Dense Hessian (n_params × n_params) of the mean loss over ``data``: ``jacfwd(grad)`` written as a ``vmap`` of
    forward-over-reverse HVPs over basis vectors, so that both parameters (chunks of 64) and samples are chunked.

    Not ``torch.func.hessian``: in torch 2.13 its jacfwd-of-jacrev gets the cross terms between a LayerNorm weight and
    the parameters before it wrong (jacrev of jacrev too), while forward-over-reverse agrees with autograd and finite
    differences (see tests/test_influence.py).

    Refuses subsets larger than ``max_params`` entries: choose ``influence.params: head`` or a few prefixes.
    """
    _refuse_large(obj, max_params)
    eye = torch.eye(obj.numel, dtype=obj.dtype, device=obj.device)
    hess = torch.zeros(obj.numel, obj.numel, dtype=obj.dtype, device=obj.device)
    for chunk in data.chunks(chunk_size(data, batch_size)):
        column = lambda e, c=chunk: jvp(lambda t: grad(obj.loss_sum)(t, c), (obj.theta0,), (e,))[1]  # noqa: E731
        hess += vmap(column, chunk_size=64)(eye)
    hess /= len(data)
    return (hess + hess.T) / 2  # remove the rounding asymmetry; H is symmetric by definition


def exact_gauss_newton(
    obj: SubsetObjective, data: Rows, batch_size: int | None = None, max_params: int = MAX_EXACT_PARAMS
) -> torch.Tensor:
    """Dense ``G = (2/n) Σ wᵢ JᵢᵀJᵢ`` from the Jacobian of the predictions (forward mode over basis vectors)."""
    _refuse_large(obj, max_params)
    eye = torch.eye(obj.numel, dtype=obj.dtype, device=obj.device)
    gn = torch.zeros(obj.numel, obj.numel, dtype=obj.dtype, device=obj.device)
    for chunk in data.chunks(chunk_size(data, batch_size)):
        column = lambda e, c=chunk: jvp(lambda t: obj.predict(t, c), (obj.theta0,), (e,))[1]  # noqa: E731
        jac_t = vmap(column, chunk_size=64)(eye)  # (P, B): column b is J_b
        w = obj.weights(chunk)
        gn += 2.0 * (jac_t if w is None else jac_t * w) @ jac_t.T
    gn /= len(data)
    return (gn + gn.T) / 2


def exact_curvature(
    obj: SubsetObjective, data: Rows, curvature: str, batch_size: int | None = None, max_params: int = MAX_EXACT_PARAMS
) -> torch.Tensor:
    """The dense C (``hessian`` or ``gauss_newton``)."""
    if curvature == "hessian":
        return exact_hessian(obj, data, batch_size, max_params)
    if curvature == "gauss_newton":
        return exact_gauss_newton(obj, data, batch_size, max_params)
    raise ValueError(f"influence.curvature must be one of {list(CURVATURES)}, got {curvature!r}")

"""Influence functions for a trained regressor: curvature operators, spectrum, inverse-curvature-vector products
(CG, LiSSA, exact, EK-FAC through kronfluence) and scores.

Definitions (docs/influence.md states them for users):

- **Model.** Any ``nn.Module`` that maps a batch's inputs to predictions of shape ``(B,)`` (:mod:`.task`, the seam:
  the model supplies predictions and, optionally, named parameter groups; the loss is the regression loss). It is
  evaluated in eval mode, so dropout is off and MoLFormer's random feature map is fixed.
- **θ.** The parameters restricted to a subset chosen with ``influence.params``: ``"all"``, a group the model names
  (the regressor's ``"head"`` and ``"last_layers:K"``) or a list of parameter-name prefixes. Everything else is
  held constant.
- **Loss.** Per sample ``ℓ(z) = (f(z) − y)²``; on a split of n samples with optional weights w
  ``L = (1/n) Σ wᵢ ℓ(zᵢ)``, the training objective of :mod:`molinfluence.training`.
- **C (curvature).** ``influence.curvature``: ``gauss_newton`` (default) ``G = (2/n) Σ wᵢ JᵢᵀJᵢ``, ``Jᵢ = ∂f(zᵢ)/∂θ``,
  positive semi-definite; or ``hessian``, the full Hessian H of the mean training loss (G plus a residual term that
  makes it indefinite away from a minimum). The solvers return ``s = (C + λI)⁻¹ v``.
- **λ (damping).** ``influence.damping`` is relative: ``λ = damping × λ_max(C)`` (Lanczos estimate, exact for
  ``exact``); the absolute λ is ``stats["lambda"]``. 0.01 bounds the condition number of ``C + λI`` by 101 for a
  positive semi-definite C and makes the score ranking invariant to rescaling the loss.
- **v.** ``∇θ L`` over the influence *target* split (validation by default).
- **Score** of an external sample z: ``I(z) = −vᵀ(C + λI)⁻¹ ∇θ ℓ(z) = −sᵀ ∇θ ℓ(z) = −2 (f(z) − y) (∇θ f(z) · s)``,
  the first-order change of the target loss when z is added to the training objective with weight ε, divided by ε
  (Koh & Liang, 2017): a **negative score means adding z is expected to help**. ``s`` is never renormalised.

Modules: :mod:`.task` (the seam, batches, parameter subsets), :mod:`.curvature` (H·v and G·v), :mod:`.spectrum`
(Lanczos), :mod:`.solvers` (CG, LiSSA, dense), :mod:`.estimators` (:func:`compute_ihvp`), :mod:`.ekfac`
(kronfluence), :mod:`.scoring`, :mod:`.io` (the ``.pt`` file).
"""

from .args import (
    DIVERGENCE_FACTOR,
    MAX_EXACT_PARAMS,
    METHODS,
    CURVATURES,
    CGArgs,
    InfluenceArgs,
    InfluenceDivergence,
    LissaArgs,
    NegativeCurvature,
    ScoringArgs,
    SpectrumArgs,
)
from .curvature import (
    CurvatureOperator,
    curvature_product,
    exact_curvature,
    exact_gauss_newton,
    exact_hessian,
    gnvp,
    hvp,
)
from .estimators import compute_ihvp, exact, holds, topk_stability
from .io import FORMAT, IHVPResult, load_ihvp, save_ihvp
from .scoring import directional_scores, score_samples
from .solvers import SolveResult, cg, dense_solve, lissa, relative_residual, resolve_scale
from .spectrum import EigenEstimate, estimate_eigs, estimate_spectrum, lanczos
from .task import Batch, FeatureBatch, SubsetObjective, eval_mode, loss_gradient, select_params, split_loss

__all__ = [
    "split_loss",
    "resolve_scale",
    "MAX_EXACT_PARAMS",
    "DIVERGENCE_FACTOR",
    "METHODS",
    "CURVATURES",
    "InfluenceDivergence",
    "NegativeCurvature",
    "InfluenceArgs",
    "SpectrumArgs",
    "CGArgs",
    "LissaArgs",
    "ScoringArgs",
    "Batch",
    "FeatureBatch",
    "SubsetObjective",
    "EigenEstimate",
    "SolveResult",
    "IHVPResult",
    "FORMAT",
    "CurvatureOperator",
    "select_params",
    "eval_mode",
    "loss_gradient",
    "hvp",
    "gnvp",
    "curvature_product",
    "exact_hessian",
    "exact_gauss_newton",
    "exact_curvature",
    "lanczos",
    "estimate_spectrum",
    "estimate_eigs",
    "lissa",
    "cg",
    "dense_solve",
    "relative_residual",
    "exact",
    "holds",
    "topk_stability",
    "compute_ihvp",
    "save_ihvp",
    "load_ihvp",
    "directional_scores",
    "score_samples",
]

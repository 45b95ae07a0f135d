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

from .args import Recipe, ValidationArgs
from .choose import choose_samples, chunk_rows
from .convex import ConvexProblem, FrozenFeatureHead, convex_reference, head_inputs
from .estimators import (
    DEFAULT_ESTIMATORS,
    check_estimators,
    compare_estimators,
    estimator_args,
    estimator_table,
    json_cell,
)
from .report import SETTINGS, build_report
from .retrain import full_effects, recipe_config, retrain_target_loss, target_loss
from .stats import CI_LEVEL, PAIR_CHECK, _pearson_rows, correlation_with_ci, summarize_setting, topk_overlap_with_ci

__all__ = [
    "CI_LEVEL",
    "PAIR_CHECK",
    "SETTINGS",
    "json_cell",
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
    "recipe_config",
]

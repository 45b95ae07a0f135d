"""The ``full`` setting: continue training the whole model with and without a sample, per seed."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..batch import Batch
from ..influence import InfluenceDivergence
from ..training import Extra, TrainConfig, TrainingDivergence, fit, split_mse
from .args import Recipe
from .stats import PAIR_CHECK

EVAL_BATCH_SIZE = 64
"""Rows per forward pass when evaluating a split, and per gradient-accumulation chunk of a full-batch step."""


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def target_loss(model: nn.Module, target: Batch, batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Mean squared error of ``model`` in eval mode over ``target`` (:func:`molinfluence.training.split_mse`, the
    same computation as the training loop's validation loss); the model's train/eval mode is restored."""
    was_training = model.training
    try:
        return split_mse(model, target.to(_device_of(model)), batch_size)
    finally:
        model.train(was_training)


def recipe_config(recipe: Recipe, seed: int, device: torch.device) -> TrainConfig:
    """The training function's options for the ``full`` setting's recipe: AdamW with ``validation.lr`` and
    ``weight_decay``, ``batch_size`` (unused for full-batch steps), seed ``seed``, on ``device``."""
    return TrainConfig(lr=recipe.lr, weight_decay=recipe.weight_decay, batch_size=recipe.batch_size or 1, seed=int(seed),
                       device=str(device))


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

    The training is the pipeline's own (:func:`molinfluence.training.fit` with a fixed number of steps, no early
    stopping): AdamW, length-bucketed batches seeded by ``(seed, pass)``, MoLFormer's feature maps drawn by
    :class:`~molinfluence.training.FeatureDraws`, dropout from the global RNG seeded by ``seed``; with
    ``batch_size=None`` every step is the whole split in file order (forward and backward in chunks of
    :data:`EVAL_BATCH_SIZE` rows). Each step minimises the mini-batch mean loss plus ``extra_weight × Σ ℓ`` over
    ``extra`` (one sample z with weight 1/n in :func:`full_effects`; with ``extra_weight=0`` its forward and backward
    still run, and change nothing): :class:`~molinfluence.training.Extra`, whose forward pass runs on a forked RNG with
    the step's own feature projections, so a run with ``extra`` and one without see exactly the same batches, dropout
    masks and feature draws. ``model`` is modified in place.
    """
    model.load_state_dict(start)
    device = _device_of(model)
    cfg = recipe_config(recipe, seed, device)
    try:
        fit(model, train, cfg, steps=recipe.steps, full_batch=recipe.batch_size is None, train_mode=recipe.train_mode,
            extra=None if extra is None else Extra(extra, float(extra_weight)), chunk=EVAL_BATCH_SIZE, progress=False,
            log=lambda _: None)
    except TrainingDivergence as exc:
        where = str(exc).split(": lower")[0]
        raise InfluenceDivergence(f"validation retraining diverged: {where} (seed {seed}); lower validation.lr") from None
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

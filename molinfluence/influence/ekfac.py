"""EK-FAC through kronfluence's public API (Grosse et al., 2023; George et al., 2018): the factors are kronfluence's;
only their one product with v is written here (below, "Why s is not computed by kronfluence itself").

- **Task.** :class:`RegressionTask` tells kronfluence the training loss ``Σ (f(z) − y)²`` of a batch (for the
  Fisher, ``sample=True``, a pseudo-loss ``√2 Σ f(z)`` whose per-sample gradients have outer product ``2 JᵢᵀJᵢ``
  exactly: the true Fisher of this loss, which is the Gauss–Newton matrix G of :mod:`.curvature`, without sampling
  noise), the
  measurement (the summed loss of a target batch; the mean over the target split is v) and which modules to track:
  the ``nn.Linear`` modules whose weight lies in ``influence.params`` (EK-FAC covers Linear and Conv2d layers only).
- **Factors** are fitted on the training split through kronfluence's public API (``Analyzer.fit_all_factors``:
  covariances, eigendecomposition, eigenvalue correction) under a name that digests the model, the split and the
  modules (:func:`factors_name`); with a ``factors_dir`` (the workflow: ``results/influence/ekfac_factors/``) they are
  kept there and a rerun on the same model and split reuses them (``ekfac_factors_reused`` in the stats).
- **Why s is not computed by kronfluence itself.** The pipeline needs the vector ``s = (G_ekfac + λI)⁻¹ v`` (one file
  scored by the same code for every method, the score of any sample without refitting). kronfluence's public API
  returns factors (``load_all_factors``) and scores (``compute_pairwise_scores`` / ``compute_self_scores``: inner
  products of a preconditioned query gradient with training gradients); the preconditioned gradient itself is only
  held inside the score computation and never returned. So :func:`ekfac_precondition` applies
  ``Q_G ((Q_Gᵀ V Q_A) / (Λ + λ)) Q_Aᵀ`` to v module by module from the public factors (the named tensors of
  ``kronfluence.utils.constants``), and the tests check it against ``compute_pairwise_scores`` on the same factors:
  no private name (``FactorConfig.CONFIGS``, ``prepare``, ``precondition_gradient``) is used, so any kronfluence 1.x
  with this factor layout works. ``s`` covers those modules' weights and biases and goes into the same file and the
  same scoring as every method.
- **λ** is ``influence.damping × λ_max(G)`` over the covered parameters (Lanczos on a subsample, as for CG/LiSSA),
  added to the corrected eigenvalues (kronfluence's absolute ``damping_factor``, which the tests pass to its scores). ``relative_residual`` measures EK-FAC's approximation: it is
  ``‖v − (G + λI)s‖/‖v‖`` with the exact Gauss–Newton product (one full-split product).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..loss import squared_error
from .args import InfluenceArgs
from .curvature import CurvatureOperator
from .solvers import SolveResult, relative_residual
from .spectrum import EigenEstimate, estimate_spectrum
from .task import Batch, Rows, SubsetObjective

try:  # kronfluence is installed with --no-deps (README, "Install"); without it only method ekfac is unavailable
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.task import Task
    from kronfluence.utils.constants import (
        ACTIVATION_EIGENVECTORS_NAME,
        GRADIENT_EIGENVECTORS_NAME,
        LAMBDA_MATRIX_NAME,
        NUM_LAMBDA_PROCESSED,
    )
except ImportError as exc:  # pragma: no cover - exercised only without kronfluence
    _IMPORT_ERROR: ImportError | None = exc
    Task = object  # type: ignore[assignment,misc]
else:
    _IMPORT_ERROR = None


class _RowsDataset(Dataset):
    """The rows of a split as (inputs, label) pairs for kronfluence's DataLoader."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return tuple(t[i] for t in self.rows.inputs), self.rows.labels[i]


class RegressionTask(Task):  # type: ignore[misc,valid-type]
    """kronfluence's Task for the squared-error regression of :mod:`molinfluence.training` (module docstring)."""

    def __init__(self, modules: list[str], masked: bool) -> None:
        self.modules = modules
        self.masked = masked

    def _loss(self, batch: Any, model: nn.Module, sample: bool) -> torch.Tensor:
        inputs, labels = batch
        pred = model(*inputs)
        if sample:
            # The true Fisher of ℓ = (f − y)² draws y ~ N(f, ½): its per-sample gradient 2(f − y)∇f has second moment
            # 4 · ½ · ∇f∇fᵀ = 2 JᵀJ. The pseudo-loss √2 f has per-sample gradient √2 ∇f with exactly that outer
            # product: the same Fisher (= G) without Monte-Carlo noise, and deterministic.
            return math.sqrt(2.0) * pred.sum()
        return squared_error(pred, labels).sum()

    def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
        return self._loss(batch, model, sample)

    def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
        return self._loss(batch, model, False)

    def get_influence_tracked_modules(self) -> list[str]:
        return self.modules

    def get_attention_mask(self, batch: Any) -> torch.Tensor | None:
        return batch[0][1] if self.masked else None


def _version() -> str:
    from importlib.metadata import version

    return version("kronfluence")


def _linear_modules(model: nn.Module, selected: list[str]) -> list[str]:
    chosen = set(selected)
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and f"{name}.weight" in chosen]


def factors_name(model: nn.Module, train: Rows, modules: list[str]) -> str:
    """The name EK-FAC factors are saved under: a digest of everything they depend on (the model's parameters and
    buffers, the training rows and weights, the tracked modules, kronfluence's version), so a name is reused only for
    the same fit and a changed model or split never picks up stale factors."""
    digest = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    for t in (*train.inputs, train.labels, train.weights):
        if t is not None:
            digest.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    digest.update(json.dumps([modules, _version()]).encode())
    return f"ekfac_{digest.hexdigest()[:16]}"


def ekfac_precondition(gradient: torch.Tensor, factors: dict[str, torch.Tensor], lam: float) -> torch.Tensor:
    """``(G_ekfac + λI)⁻¹`` applied to one module's gradient matrix (out × in, bias as the last column) from the
    factors kronfluence fitted and :meth:`Analyzer.load_all_factors` returns: ``Q_G ((Q_Gᵀ X Q_A) / (Λ + λ)) Q_Aᵀ``
    with the eigenvectors Q_A, Q_G of the activation and gradient covariances and the corrected eigenvalues
    Λ = ``lambda_matrix`` / ``num_lambda_processed`` (George et al., 2018), in float64.

    kronfluence's public API returns factors and scores, never a preconditioned vector (module docstring), so this
    one product is written here; ``tests/test_influence.py`` checks it against kronfluence's own public
    ``compute_pairwise_scores`` on the same factors and damping.
    """
    q_a = factors[ACTIVATION_EIGENVECTORS_NAME].to(gradient.device, torch.float64)
    q_g = factors[GRADIENT_EIGENVECTORS_NAME].to(gradient.device, torch.float64)
    eig = factors[LAMBDA_MATRIX_NAME].to(gradient.device, torch.float64) / factors[NUM_LAMBDA_PROCESSED].to(
        gradient.device, torch.float64)
    rotated = q_g.t() @ gradient.to(torch.float64) @ q_a
    return q_g @ (rotated / (eig + lam)) @ q_a.t()


def ekfac_ihvp(
    model: nn.Module, obj: SubsetObjective, train: Rows, v: torch.Tensor, args: InfluenceArgs, progress: bool = False,
    factors_dir: str | os.PathLike[str] | None = None,
) -> tuple[SolveResult, EigenEstimate, list[str], dict[str, Any], float]:
    """``s = (G_ekfac + λI)⁻¹ v`` over the Linear modules in ``obj``'s parameters.

    The factors are fitted through kronfluence's public ``Analyzer.fit_all_factors`` under :func:`factors_name` in
    ``factors_dir`` (kept and reused there; a temporary folder, discarded, when None).

    Returns the solve (flat s in the order of the returned parameter names), the Lanczos estimate of G's spectrum
    over those parameters (which sets λ), the parameter names, extra statistics, and the exact products used in
    full-split units.
    """
    if _IMPORT_ERROR is not None:
        raise RuntimeError(
            "influence.method 'ekfac' needs the kronfluence package: pip install --no-deps 'kronfluence>=1.0.1,<2' "
            f"(its other dependencies come with molinfluence) ({_IMPORT_ERROR})"
        )
    modules = _linear_modules(model, obj.names)
    if not modules:
        raise ValueError(
            "influence.method 'ekfac' covers nn.Linear modules only, and influence.params selects none of their "
            "weights; choose influence.params that include Linear layers (e.g. 'all' or 'head')"
        )
    params = dict(model.named_parameters())
    names = [n for m in modules for n in (f"{m}.weight", f"{m}.bias") if n in params]
    lin = SubsetObjective(model, names, obj.dtype)
    grads = obj.unflatten(v)
    v_lin = torch.cat([(grads[n] if n in grads else torch.zeros_like(params[n], dtype=obj.dtype)).reshape(-1)
                       for n in names]).to(lin.device, lin.dtype)
    op = CurvatureOperator(lin, train, "gauss_newton", args.hvp_mode, args.chunk_size)
    eigs = estimate_spectrum(op, train, lin.numel, lin.theta0, args.spectrum.iters, args.spectrum.samples, args.seed,
                             progress)
    eigs.check(args.damping)
    lam = eigs.absolute_damping(args.damping)

    start = time.perf_counter()
    device = obj.device
    work = copy.deepcopy(model).to(device, torch.float32).eval()
    task = RegressionTask(modules, masked=isinstance(train, Batch))
    work = prepare_model(work, task)
    name = factors_name(work, train, modules)
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"kronfluence\.")  # its torch.cuda.amp use
        out = factors_dir if factors_dir is not None else stack.enter_context(
            tempfile.TemporaryDirectory(prefix="molinfluence-ekfac-"))
        analyzer = Analyzer("ihvp", work, task, cpu=device.type != "cuda", log_level=logging.WARNING,
                            disable_tqdm=not progress, output_dir=str(out))
        reused = analyzer.load_factor_args(name) is not None
        # Public API: fits the covariances, their eigendecomposition and the eigenvalue correction, each stage skipped
        # when its files already exist under this name (a rerun on the same model and split reuses them).
        analyzer.fit_all_factors(name, _RowsDataset(train), per_device_batch_size=args.chunk_size,
                                 factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=False)
        factors = analyzer.load_all_factors(name)
    fit_seconds = time.perf_counter() - start

    parts = lin.unflatten(v_lin)
    pieces = []
    for m in modules:
        bias = f"{m}.bias" in names
        w = parts[f"{m}.weight"]
        grads_matrix = torch.cat([w, parts[f"{m}.bias"][:, None]], dim=1) if bias else w  # kronfluence's layout
        pre = ekfac_precondition(grads_matrix, {key: per_module[m] for key, per_module in factors.items()
                                                if m in per_module}, lam).to(lin.dtype)
        pieces += [pre[:, :-1].reshape(-1), pre[:, -1]] if bias else [pre.reshape(-1)]
    x = torch.cat(pieces)
    residual = relative_residual(op, v_lin, x, lam)
    result = SolveResult(x=x, repeats=[x], stats={"steps": [0], "converged": True, "relative_residual": residual})
    extra = {
        "ekfac_modules": modules,
        "ekfac_params": int(lin.numel),
        "selected_params": int(obj.numel),
        "ekfac_fit_seconds": fit_seconds,
        "ekfac_factors": name if factors_dir is not None else None,
        "ekfac_factors_reused": reused,
        "kronfluence_version": _version(),
    }
    return result, eigs, names, extra, op.full_equivalents

"""EK-FAC through kronfluence (Grosse et al., 2023; George et al., 2018): the factors and the preconditioning are
kronfluence's, nothing of EK-FAC is re-implemented here.

- **Task.** :class:`RegressionTask` tells kronfluence the training loss ``Σ (f(z) − y)²`` of a batch (for the
  Fisher, ``sample=True``, a pseudo-loss ``√2 Σ f(z)`` whose per-sample gradients have outer product ``2 JᵢᵀJᵢ``
  exactly: the true Fisher of this loss, which is the Gauss–Newton matrix G of :mod:`.curvature`, without sampling
  noise), the
  measurement (the summed loss of a target batch; the mean over the target split is v) and which modules to track:
  the ``nn.Linear`` modules whose weight lies in ``influence.params`` (EK-FAC covers Linear and Conv2d layers only).
- **Factors** are fitted on the training split (covariances, eigendecomposition, eigenvalue correction), then
  kronfluence's own EK-FAC ``precondition_gradient`` applies ``(G_ekfac + λI)⁻¹`` to v module by module; the result is
  ``s`` over those modules' weights and biases and goes into the same file and the same scoring as every method.
- **λ** is ``influence.damping × λ_max(G)`` over the covered parameters (Lanczos on a subsample, as for CG/LiSSA),
  passed as kronfluence's absolute ``damping_factor``. ``relative_residual`` measures EK-FAC's approximation: it is
  ``‖v − (G + λI)s‖/‖v‖`` with the exact Gauss–Newton product (one full-split product).
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .args import InfluenceArgs
from .curvature import CurvatureOperator
from .solvers import SolveResult, relative_residual
from .spectrum import EigenEstimate, estimate_spectrum
from ..loss import squared_error
from .task import Batch, Rows, SubsetObjective

try:  # kronfluence is installed with --no-deps (README, "Install"); without it only method ekfac is unavailable
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.factor.config import FactorConfig
    from kronfluence.task import Task
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


def ekfac_ihvp(
    model: nn.Module, obj: SubsetObjective, train: Rows, v: torch.Tensor, args: InfluenceArgs, progress: bool = False
) -> tuple[SolveResult, EigenEstimate, list[str], dict[str, Any], float]:
    """``s = (G_ekfac + λI)⁻¹ v`` over the Linear modules in ``obj``'s parameters.

    Returns the solve (flat s in the order of the returned parameter names), the Lanczos estimate of G's spectrum
    over those parameters (which sets λ), the parameter names, extra statistics, and the exact products used in
    full-split units.
    """
    if _IMPORT_ERROR is not None:
        raise RuntimeError(
            "influence.method 'ekfac' needs the kronfluence package: pip install --no-deps kronfluence==1.0.1 "
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
    with tempfile.TemporaryDirectory(prefix="molinfluence-ekfac-") as out, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"kronfluence\.")  # its torch.cuda.amp use
        analyzer = Analyzer("ihvp", work, task, cpu=device.type != "cuda", log_level=logging.WARNING,
                            disable_tqdm=not progress, output_dir=out)
        factor_args = FactorArguments(strategy="ekfac")
        analyzer.fit_all_factors("ekfac", _RowsDataset(train), per_device_batch_size=args.chunk_size,
                                 factor_args=factor_args, overwrite_output_dir=True)
        factors = analyzer.load_all_factors("ekfac")
    fit_seconds = time.perf_counter() - start

    config = FactorConfig.CONFIGS["ekfac"]
    score_args = ScoreArguments(damping_factor=lam, precondition_dtype=torch.float64)
    pieces = []
    for m in modules:
        storage = {key: per_module[m] for key, per_module in factors.items() if m in per_module}
        config.prepare(storage, score_args, device)
        parts = lin.unflatten(v_lin)
        bias = f"{m}.bias" in names
        w = parts[f"{m}.weight"]
        grads_matrix = torch.cat([w, parts[f"{m}.bias"][:, None]], dim=1) if bias else w  # kronfluence's layout
        pre = config.precondition_gradient(grads_matrix.to(torch.float64), storage).to(lin.dtype)
        pieces += [pre[:, :-1].reshape(-1), pre[:, -1]] if bias else [pre.reshape(-1)]
    x = torch.cat(pieces)
    residual = relative_residual(op, v_lin, x, lam)
    result = SolveResult(x=x, repeats=[x], stats={"steps": [0], "converged": True, "relative_residual": residual})
    extra = {
        "ekfac_modules": modules,
        "ekfac_params": int(lin.numel),
        "selected_params": int(obj.numel),
        "ekfac_fit_seconds": fit_seconds,
        "kronfluence_version": _version(),
    }
    return result, eigs, names, extra, op.full_equivalents

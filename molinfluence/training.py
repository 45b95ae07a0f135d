"""Fine-tuning a :class:`MolformerRegressor` with early stopping, and evaluating it.

The recipe is the original report's: AdamW (lr 2e-5, weight decay 0.01), mean-squared-error loss, a fixed number of
epochs with early stopping on the **validation** loss (patience 2) and the best weights restored at the end. The test
split is never looked at during training: :func:`train_regressor` does not even receive it.

One function trains for every stage (:func:`fit`): base training and the fine-tuning grid (epochs with early stopping
on the validation split, :func:`train_regressor` encodes the tables and calls it), and the validation stage's
retraining (a fixed number of steps, optionally with an extra sample added to every step at an absolute weight on a
forked RNG, :class:`Extra`). Its pieces: :func:`check_weights` and :func:`encode_splits` (argument checks and the one
encoding), :class:`Checkpoint` (resume, written through :func:`molinfluence.files.atomic_path`), :func:`run_epoch`
(one pass over length-bucketed batches), :class:`EarlyStopping`, and :func:`run_identity` (what a run is: code hash,
recipe and inputs; the resume checkpoint and the grid's cache entries are both keyed by it).

Determinism: every epoch's batches come from a generator seeded by ``(seed, epoch)`` (:func:`length_batches`), the
MoLFormer feature-map redraws of every training forward from a dedicated CPU generator also seeded by ``(seed,
epoch)``, and the global RNG (dropout) is seeded once and saved with each resume checkpoint, so a run that was killed
and resumed from its last completed epoch gives the same weights as an uninterrupted run on CPU.

Speed (the step is bound by per-step overhead, not arithmetic, for MoLFormer-sized models at batch 16): each batch is
padded to its own longest molecule (length-bucketed batches), the encoded splits are moved to the device once, the
step never synchronises with the host (losses stay on the device and are read, and checked for finiteness, every
:data:`CHECK_EVERY_STEPS` steps and at the end of each epoch), AdamW is fused on CUDA and ``foreach`` elsewhere, and
all layers' feature projections for a step are drawn in one batched QR on the CPU (prefetched by a worker thread and
copied asynchronously on CUDA) instead of twelve QRs on the device. ``train.precision: bf16`` runs the training
forward under bfloat16 autocast with float32 master weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .batch import Batch, encode_split
from .config import check_fields, from_section
from .files import atomic_path, code_hash
from .loss import squared_error
from .metrics import regression_metrics
from .molformer import draw_orthogonal_feature_stack
from .regressor import MolformerRegressor, pick_device


class TrainingDivergence(RuntimeError):
    """The training loss became NaN or infinite."""


CHECK_EVERY_STEPS = 100
"""Steps between reads of the training loss (finiteness check, progress line); the step itself never reads it."""
BUCKET_CHUNK_BATCHES = 50
"""Length bucketing sorts the shuffled split by length within chunks of at most this many batches, and of at most an
eighth of the epoch's batches (see :func:`length_batches`)."""
EVAL_BATCH_SIZE = {"cuda": 256, "cpu": 64}
"""``train.eval_batch_size: auto`` by device type (evaluation has no backward pass and batches sorted by length)."""


@dataclass
class TrainConfig:
    """Training recipe (``train:`` / ``finetune:`` in the config)."""

    lr: float = 2e-5
    weight_decay: float = 0.01
    epochs: int = 5
    batch_size: int = 16
    eval_batch_size: int | str = "auto"
    patience: int = 2
    seed: int = 0
    max_length: int = 202
    truncation: bool = True
    grad_clip: float | None = None
    device: str = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_fields(self, TRAIN_KEYS)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        return from_section(cls, d, "train")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def eval_batch_size_for(self, device: torch.device | str) -> int:
        """The evaluation batch size: the configured one, or with ``auto`` 256 on CUDA and 64 elsewhere."""
        if self.eval_batch_size != "auto":
            return int(self.eval_batch_size)
        return EVAL_BATCH_SIZE.get(torch.device(device).type, EVAL_BATCH_SIZE["cpu"])


TRAIN_KEYS = {f.name: f"train.{f.name}" for f in fields(TrainConfig)} | {
    "max_length": "model.max_length",
    "truncation": "model.truncation",
}
"""Where each TrainConfig field lives in the config (the schema holds its type, range and default)."""


@dataclass
class TrainResult:
    history: pd.DataFrame  # epoch, train_loss, val_loss, is_best, seconds
    best_epoch: int
    best_val_loss: float
    stopped_early: bool


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def length_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, chunk_batches: int = BUCKET_CHUNK_BATCHES
) -> list[torch.Tensor]:
    """Seeded, length-bucketed mini-batches: shuffle with ``generator``, sort each chunk of ``chunk_batches`` batches
    by length (longest first; ties keep the shuffled order), cut it into batches, shuffle the batch order.

    Every row is in exactly one batch; all batches are full except possibly one. Padding each batch to its own longest
    molecule then wastes little compute, while the content of the batches still changes from epoch to epoch: a chunk
    is never more than an eighth of the split (a small split sorted as one chunk would be cut into nearly the same
    batches every epoch, which measurably hurt the demo's test RMSE), so small splits are simply shuffled.
    """
    n = len(lengths)
    perm = torch.randperm(n, generator=generator)
    lens = torch.as_tensor(list(lengths), dtype=torch.long)
    batches: list[torch.Tensor] = []
    chunk = batch_size * max(1, min(chunk_batches, math.ceil(n / batch_size) // 8))
    for start in range(0, n, chunk):
        part = perm[start : start + chunk]
        part = part[torch.sort(lens[part], descending=True, stable=True).indices]
        batches.extend(part.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def eval_predictions(model: torch.nn.Module, split: Batch, batch_size: int) -> torch.Tensor:
    """Eval-mode predictions for every row of ``split`` (a :class:`Batch` on the model's device) in its order, as a
    float32 device tensor; the rows are batched by length (each batch padded to its own longest molecule, which does
    not change a molecule's prediction)."""
    model.eval()
    n = len(split)
    lengths = split.token_counts()
    order = sorted(range(n), key=lengths.__getitem__, reverse=True)
    order_dev = torch.tensor(order, device=split.input_ids.device)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            ids, mask = split.gather(order_dev[start : start + batch_size], lengths[order[start]])
            out.append(model(ids, mask).float())
        return out[0].new_empty(n).index_copy_(0, order_dev, torch.cat(out))


def evaluate(model: MolformerRegressor, tokenizer: Any, frame: pd.DataFrame, cfg: TrainConfig, device) -> tuple[dict, pd.DataFrame]:
    """Metrics (mse, rmse, mae, r2, n_truncated) and a predictions frame (smiles, truth, prediction) for one split."""
    enc = encode_split(tokenizer, frame, cfg.max_length, cfg.truncation, "evaluation")
    split = _batch(enc, frame, None, "evaluation").to(device)
    pred = eval_predictions(model, split, cfg.eval_batch_size_for(device)).cpu().numpy().astype(np.float64)
    truth = frame["label"].to_numpy(dtype=np.float64)
    preds = pd.DataFrame({"smiles": frame["smiles"].to_numpy(), "truth": truth, "prediction": pred})
    return {**regression_metrics(truth, pred), "n_truncated": enc.n_truncated}, preds


def split_mse(model: torch.nn.Module, split: Batch, batch_size: int) -> float:
    """Mean squared error of ``model`` in eval mode over a labelled split (accumulated in float64): the validation loss
    of early stopping and the target loss that the influence validation stage measures."""
    pred = eval_predictions(model, split, batch_size)
    return float(squared_error(pred.double(), split.labels).sum()) / max(len(split), 1)


class FeatureDraws:
    """The fresh feature-map projections of every training forward, for all layers at once.

    Drawn with :func:`~molinfluence.molformer.draw_orthogonal_feature_stack` (the published block-orthogonal
    distribution, one batched QR for all layers) from a dedicated CPU generator seeded by ``(seed, epoch)``, so they
    are reproducible, independent of the dropout RNG, and identical after a resume without saving generator state.
    On CUDA the next step's draw is made by a worker thread while the current step runs, in pinned memory, and copied
    without blocking.
    """

    def __init__(self, model: MolformerRegressor, seed: int, epoch: int, device: torch.device) -> None:
        maps = model.molformer.feature_maps()
        self.shape = (len(maps), maps[0].head_size, maps[0].num_features)
        self.generator = torch.Generator().manual_seed((seed * 100_003 + epoch) ^ 0x5EED_F3A7)
        self.device = device
        self.pin = device.type == "cuda"
        self.pool = ThreadPoolExecutor(max_workers=1) if self.pin else None
        self.pending = self.pool.submit(self._draw) if self.pool else None

    def _draw(self) -> torch.Tensor:
        w = draw_orthogonal_feature_stack(*self.shape, generator=self.generator)
        return w.pin_memory() if self.pin else w

    def next(self) -> torch.Tensor:
        if self.pool is None:
            return self._draw()
        w = self.pending.result()
        self.pending = self.pool.submit(self._draw)
        return w.to(self.device, non_blocking=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW of the recipe, fused on CUDA and multi-tensor (``foreach``) elsewhere: a handful of kernels per step
    instead of about ten per parameter tensor."""
    kind = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **kind)


@dataclass(frozen=True)
class Extra:
    """Rows added to every training step at an absolute ``weight``: the step minimises the batch loss plus
    ``weight × Σ ℓ`` over ``rows`` (validation adds one sample z at weight 1/n). Their forward pass runs on a forked
    RNG with the step's own feature projections, so a run with ``Extra`` and one without see the same batches,
    dropout masks and feature draws; at weight 0 the two runs are bit-identical."""

    rows: Batch
    weight: float


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _forward(model: MolformerRegressor, ids: torch.Tensor, mask: torch.Tensor, projections: torch.Tensor | None,
             cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    if projections is not None:
        model.molformer.set_next_feature_projections(projections)
    with _autocast(cfg, device):
        return model(ids, mask)


def train_step(
    model: MolformerRegressor,
    optimizer: torch.optim.Optimizer,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    projections: torch.Tensor | None,
    cfg: TrainConfig,
    device: torch.device,
    *,
    extra: Extra | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """One optimisation step on a batch already on the device (``projections``: this step's feature-map draws, None
    when the model trains in eval mode); returns the detached batch loss, still on the device: nothing here waits for
    the device.

    The loss is the batch mean of ``w (f(z) − y)²`` (``weights`` None: w = 1) plus the :class:`Extra` term.
    ``chunk`` runs the forward and backward passes over at most that many rows at a time (gradient accumulation of
    the same mean; a full-batch step over a large split).
    """
    if extra is not None:
        with torch.random.fork_rng(devices=_rng_devices(device)):
            pred = _forward(model, extra.rows.input_ids, extra.rows.attention_mask, projections, cfg, device)
        (extra.weight * squared_error(pred.float(), extra.rows.labels).sum()).backward()
    n = ids.shape[0]
    if chunk is None or chunk >= n:
        per_sample = squared_error(_forward(model, ids, mask, projections, cfg, device).float(), labels)
        loss = (per_sample * weights).mean() if weights is not None else per_sample.mean()
        loss.backward()
        loss = loss.detach()
    else:
        loss = torch.zeros((), device=ids.device)
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            per_sample = squared_error(_forward(model, ids[part], mask[part], projections, cfg, device).float(), labels[part])
            if weights is not None:
                per_sample = per_sample * weights[part]
            part_loss = per_sample.sum() / n
            part_loss.backward()
            loss = loss + part_loss.detach()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# --------------------------------------------------------------------------------------------------------------------
# What a run is


@functools.lru_cache(maxsize=1)
def training_code() -> str:
    """Hash of this module and every package module it imports (:func:`molinfluence.files.code_hash`): the code of a
    training run when its caller (a workflow rule) does not pass its own script's hash."""
    here = Path(__file__).resolve()
    return code_hash(here, root=here.parents[1], module=__name__)


def run_identity(code: str, recipe: Mapping[str, Any], **parts: Any) -> str:
    """What a training run is: the hash of its ``code``, its ``recipe`` (with the seed) and JSON-able ``parts``
    (digests of the inputs, the run's name). The one key of both the resume checkpoint (:func:`fit`) and the grid's
    cache entries (:func:`molinfluence.runs.run_key`): a run killed and resumed after a code edit starts over."""
    text = json.dumps({"code": code, "recipe": dict(recipe), **parts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def tensor_digest(tensors: Mapping[str, torch.Tensor | None]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes), e.g. a model's initial state or a split."""
    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        if tensor is None:
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def batch_digest(rows: Batch | None) -> str | None:
    if rows is None:
        return None
    return tensor_digest({"input_ids": rows.input_ids, "attention_mask": rows.attention_mask, "labels": rows.labels,
                          "weights": rows.weights})


# --------------------------------------------------------------------------------------------------------------------
# Argument checks and the one encoding


def check_weights(weights: np.ndarray | Sequence[float] | None, n: int) -> np.ndarray | None:
    """Per-sample weights as float64, or a ValueError unless one finite value >= 0 per training row."""
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("sample weights must be one finite, non-negative value per training row")
    return weights


def _batch(enc: Any, frame: pd.DataFrame, weights: np.ndarray | None, name: str) -> Batch:
    labels = torch.tensor(frame["label"].to_numpy(dtype=np.float32))
    w = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    return Batch(enc.input_ids, enc.attention_mask, labels, w, name)


def encode_splits(
    tokenizer: Any, train: pd.DataFrame, validation: pd.DataFrame, cfg: TrainConfig, weights: np.ndarray | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Batch, Batch]:
    """The checked, encoded training split (with its weights) and validation split of :func:`train_regressor`."""
    if len(train) == 0:
        raise ValueError("the training split is empty")
    if len(validation) == 0:
        raise ValueError("the validation split is empty: early stopping needs data.validation_fraction > 0")
    weights = check_weights(weights, len(train))
    enc_train = encode_split(tokenizer, train, cfg.max_length, cfg.truncation, "training")
    enc_val = encode_split(tokenizer, validation, cfg.max_length, cfg.truncation, "validation")
    if enc_train.n_truncated or enc_val.n_truncated:
        log(f"truncated to {cfg.max_length} tokens: {enc_train.n_truncated} training, {enc_val.n_truncated} validation molecules")
    return _batch(enc_train, train, weights, "training"), _batch(enc_val, validation, None, "validation")


# --------------------------------------------------------------------------------------------------------------------
# Early stopping, checkpoint and resume


@dataclass
class EarlyStopping:
    """Best validation loss so far, its epoch and weights (on the CPU), and the epochs since it improved."""

    patience: int
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def update(self, val_loss: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record epoch ``epoch``'s validation loss; True when it is the best so far (its weights are kept)."""
        if val_loss < self.best_val:
            self.best_val, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            self.best_state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
            return True
        self.bad_epochs += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.bad_epochs >= self.patience


@dataclass
class Checkpoint:
    """The resume checkpoint ``<directory>/last.pt`` of the run ``identity``, written after every epoch through
    :func:`~molinfluence.files.atomic_path`; another run's checkpoint is ignored (and said so)."""

    directory: Path
    identity: str

    @property
    def path(self) -> Path:
        return Path(self.directory) / "last.pt"

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, log: Callable[[str], None]) -> dict[str, Any] | None:
        """Restore model, optimiser and RNG state; returns the loop state (epoch, history, early stopping) or None."""
        if not self.path.is_file():
            return None
        ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        if ckpt.get("identity") != self.identity:
            log(f"ignoring {self.path}: it belongs to a different run (code, config, data or initial weights changed)")
            return None
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        log(f"resuming from {self.path} after epoch {int(ckpt['epoch'])}")
        return ckpt

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, epoch: int,
             history: list[dict[str, Any]], stopping: EarlyStopping) -> None:
        state = {
            "identity": self.identity,
            "epoch": epoch,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "history": history,
            "best_state": stopping.best_state,
            "best_val": stopping.best_val,
            "best_epoch": stopping.best_epoch,
            "bad_epochs": stopping.bad_epochs,
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


# --------------------------------------------------------------------------------------------------------------------
# One epoch


def epoch_batches(data: Batch, batch_size: int | None, seed: int, epoch: int) -> list[torch.Tensor]:
    """Row indices of each step of ``epoch``: length-bucketed batches from a generator seeded by ``(seed, epoch)``
    (:func:`length_batches`), or with ``batch_size`` None the whole split in file order as one step."""
    if batch_size is None:
        return [torch.arange(len(data))]
    return length_batches(data.token_counts(), batch_size, torch.Generator().manual_seed(seed * 100_003 + epoch))


def run_epoch(
    model: MolformerRegressor,
    optimizer: torch.optim.Optimizer,
    data: Batch,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    *,
    batch_size: int | None,
    max_steps: int | None = None,
    train_mode: bool = True,
    extra: Extra | None = None,
    chunk: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    label: str = "epoch",
) -> tuple[float, int]:
    """One pass over ``data`` (on ``device``), or its first ``max_steps`` steps; returns (mean training loss, steps).

    The losses stay on the device and are read every :data:`CHECK_EVERY_STEPS` steps and at the end (the
    finiteness check names the epoch and batch of a non-finite loss)."""
    model.train(train_mode)
    batches = epoch_batches(data, batch_size, cfg.seed, epoch)
    if max_steps is not None:
        batches = batches[:max_steps]
    lengths = data.token_counts()
    widths = [max(lengths[i] for i in b.tolist()) for b in batches]
    sizes = [b.numel() for b in batches]
    order = torch.cat(batches).to(device, non_blocking=True)
    draws = FeatureDraws(model, cfg.seed, epoch, device) if train_mode else None
    terminal = progress and sys.stderr.isatty()
    total = f"/{cfg.epochs}" if label == "epoch" else ""
    bar = tqdm(total=len(batches), desc=f"{label} {epoch}{total}", leave=False) if terminal else None
    losses: list[torch.Tensor] = []
    running, seen, pos = 0.0, 0, 0
    try:
        for b, (size, width) in enumerate(zip(sizes, widths), start=1):
            idx = order[pos : pos + size]
            pos += size
            ids, mask = data.gather(idx, width)
            labels = data.labels.index_select(0, idx)
            weights = None if data.weights is None else data.weights.index_select(0, idx)
            projections = draws.next() if draws is not None else None
            losses.append(train_step(model, optimizer, ids, mask, labels, weights, projections, cfg, device,
                                     extra=extra, chunk=chunk))
            if b % CHECK_EVERY_STEPS == 0 or b == len(batches):
                # The only host synchronisation of the epoch's steps: read the losses since the last check.
                values = torch.stack(losses).double().cpu().tolist()
                for j, value in enumerate(values):
                    if not math.isfinite(value):
                        raise TrainingDivergence(
                            f"non-finite training loss ({value}) at {label} {epoch}, batch {b - len(values) + j + 1}: "
                            "lower train.lr, set train.grad_clip, or check the labels for extreme values"
                        )
                    running += value * sizes[b - len(values) + j]
                seen += sum(sizes[b - len(values) : b])
                losses = []
                if bar is not None:
                    bar.update(len(values))
                    bar.set_postfix(loss=f"{running / seen:.4f}")
                elif progress and b < len(batches):
                    log(f"{label} {epoch} step {b}/{len(batches)}: train loss {running / seen:.6f}")
    finally:
        if draws is not None:
            draws.close()
        if bar is not None:
            bar.close()
    return running / max(seen, 1), len(batches)


# --------------------------------------------------------------------------------------------------------------------
# The one training function


def fit(
    model: MolformerRegressor,
    train: Batch,
    cfg: TrainConfig,
    *,
    validation: Batch | None = None,
    steps: int | None = None,
    full_batch: bool = False,
    train_mode: bool = True,
    extra: Extra | None = None,
    chunk: int | None = None,
    checkpoint_dir: str | Path | None = None,
    code: str | None = None,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place on ``train`` (its ``weights``, when set, multiply the per-sample squared errors; the
    batch loss is their mean) with AdamW of ``cfg`` and seed ``cfg.seed``.

    Two schedules:

    - ``steps`` None: ``cfg.epochs`` epochs with early stopping on ``validation`` (patience ``cfg.patience``), the
      best weights restored at the end; ``checkpoint_dir`` resumes a killed run from its last completed epoch (it
      must live outside the workflow's declared outputs: Snakemake deletes those before a job starts). This is base
      training and the fine-tuning grid.
    - ``steps`` = S: exactly S steps (epochs of the same seeded batches, cut at S), no early stopping, the last
      weights kept; ``full_batch`` makes every step the whole split in file order (forward/backward in chunks of
      ``chunk`` rows), ``train_mode`` False trains in eval mode (no dropout, fixed feature maps), ``extra`` adds
      rows at an absolute weight (:class:`Extra`). This is the validation stage's retraining.

    ``code`` is the hash of the code that runs (default: :func:`training_code`), part of the run identity a resume
    checkpoint must match. ``on_epoch(epoch, model)`` (epochs schedule) is called at the start of every epoch, before
    it trains: the trajectory's checkpoints (TracIn's θ_c), without a second training loop.
    """
    if steps is None and validation is None:
        raise ValueError("epochs with early stopping need a validation split (or give a fixed number of steps)")
    if steps is not None and steps < 1:
        raise ValueError(f"the number of training steps must be >= 1, got {steps}")
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device)
    identity = None
    if checkpoint_dir:  # hashing the weights costs a pass over them: only for a run that can resume
        identity = run_identity(
            code or training_code(), cfg.to_dict(), start=tensor_digest(model.state_dict()), train=batch_digest(train),
            validation=batch_digest(validation), schedule={"steps": steps, "full_batch": full_batch, "train_mode": train_mode},
            extra=None if extra is None else [batch_digest(extra.rows), extra.weight],
        )
    # Moved to the device once; batches are gathered there.
    data, val = train.to(device), None if validation is None else validation.to(device)
    extra = None if extra is None else Extra(extra.rows.to(device), float(extra.weight))
    optimizer = make_optimizer(model, cfg, device)
    step_args = dict(batch_size=None if full_batch else cfg.batch_size, train_mode=train_mode, extra=extra, chunk=chunk)
    if steps is not None:
        if checkpoint_dir:
            raise ValueError("a fixed-steps run does not resume: give no checkpoint_dir")
        return _fit_steps(model, optimizer, data, cfg, device, steps, step_args, log, progress)

    history: list[dict[str, Any]] = []
    stopping = EarlyStopping(cfg.patience)
    start_epoch = 1
    checkpoint = Checkpoint(Path(checkpoint_dir), identity) if identity is not None else None
    resumed = checkpoint.load(model, optimizer, log) if checkpoint is not None else None
    if resumed is not None:
        history = list(resumed["history"])
        stopping = EarlyStopping(cfg.patience, float(resumed["best_val"]), int(resumed["best_epoch"]),
                                 int(resumed["bad_epochs"]), resumed["best_state"])
        start_epoch = int(resumed["epoch"]) + 1

    stopped_early = stopping.exhausted
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stopped_early:
            break
        if on_epoch is not None:
            on_epoch(epoch, model)
        t0 = time.perf_counter()
        train_loss, _ = run_epoch(model, optimizer, data, cfg, device, epoch, log=log, progress=progress, **step_args)
        val_loss = split_mse(model, val, cfg.eval_batch_size_for(device))
        if not math.isfinite(val_loss):
            raise TrainingDivergence(f"non-finite validation loss at epoch {epoch}: lower train.lr or set train.grad_clip")
        is_best = stopping.update(val_loss, epoch, model)
        seconds = round(time.perf_counter() - t0, 3)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "is_best": bool(is_best),
                        "seconds": seconds})
        log(
            f"epoch {epoch}: train loss {train_loss:.6f}, validation loss {val_loss:.6f}"
            + (" (best so far)" if is_best else f" (no improvement for {stopping.bad_epochs}/{cfg.patience} epochs)")
            + f" [{seconds:.1f} s, {len(data) / max(seconds, 1e-9):.0f} molecules/s]"
        )
        stopped_early = stopping.exhausted and epoch < cfg.epochs
        if stopped_early:
            log(f"early stopping at epoch {epoch}; best validation loss {stopping.best_val:.6f} at epoch {stopping.best_epoch}")
        if checkpoint is not None:
            checkpoint.save(model, optimizer, device, epoch, history, stopping)

    assert stopping.best_state is not None  # at least one epoch ran (epochs >= 1) or was restored
    model.load_state_dict(stopping.best_state)
    model.eval()
    return TrainResult(
        history=pd.DataFrame(history, columns=["epoch", "train_loss", "val_loss", "is_best", "seconds"]),
        best_epoch=stopping.best_epoch,
        best_val_loss=stopping.best_val,
        stopped_early=stopped_early,
    )


def _fit_steps(model, optimizer, data, cfg, device, steps, step_args, log, progress) -> TrainResult:
    """The fixed-steps schedule of :func:`fit`: epochs of seeded batches until ``steps`` steps have run."""
    history: list[dict[str, Any]] = []
    done, epoch = 0, 0
    while done < steps:
        epoch += 1
        t0 = time.perf_counter()
        loss, ran = run_epoch(model, optimizer, data, cfg, device, epoch, max_steps=steps - done, log=log,
                              progress=progress, label="pass", **step_args)
        done += ran
        history.append({"epoch": epoch, "train_loss": loss, "val_loss": math.nan, "is_best": False,
                        "seconds": round(time.perf_counter() - t0, 3)})
    model.eval()
    return TrainResult(
        history=pd.DataFrame(history, columns=["epoch", "train_loss", "val_loss", "is_best", "seconds"]),
        best_epoch=epoch, best_val_loss=math.nan, stopped_early=False,
    )


def train_regressor(
    model: MolformerRegressor,
    tokenizer: Any,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    cfg: TrainConfig,
    *,
    weights: np.ndarray | None = None,
    checkpoint_dir: str | Path | None = None,
    code: str | None = None,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> TrainResult:
    """Train in place with early stopping on ``validation``; the best weights are restored before returning.

    The tables are checked and encoded (:func:`encode_splits`), then trained by :func:`fit` (epochs with early
    stopping). ``weights`` (one per training row, ≥ 0) multiply the per-sample squared errors (the ``weighted``
    selection strategy); the batch loss is their mean. ``checkpoint_dir`` enables resuming a killed run from its last
    completed epoch; ``code`` the hash of the running code (part of the run identity); ``on_epoch`` as in :func:`fit`.
    """
    data, val = encode_splits(tokenizer, train, validation, cfg, weights, log)
    return fit(model, data, cfg, validation=val, checkpoint_dir=checkpoint_dir, code=code, on_epoch=on_epoch, log=log,
               progress=progress)

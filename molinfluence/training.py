"""Fine-tuning a :class:`MolformerRegressor` with early stopping, and evaluating it.

The recipe is the original report's: AdamW (lr 2e-5, weight decay 0.01), mean-squared-error loss, a fixed number of
epochs with early stopping on the **validation** loss (patience 2) and the best weights restored at the end. The test
split is never looked at during training: :func:`train_regressor` does not even receive it.

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

import hashlib
import json
import math
import os
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

from .config import check_fields, from_section
from .metrics import regression_metrics
from .molformer import draw_orthogonal_feature_stack
from .regressor import MolformerRegressor, encode_split, pick_device


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


@dataclass
class DeviceSplit:
    """An encoded split moved to the device once: ids and mask (n x T), per-molecule token counts (host), labels."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]
    labels: torch.Tensor | None = None

    @classmethod
    def of(cls, enc: Any, device: torch.device | str, labels: torch.Tensor | None = None) -> "DeviceSplit":
        lengths = enc.attention_mask.sum(dim=1).tolist()  # real tokens after truncation
        return cls(
            enc.input_ids.to(device),
            enc.attention_mask.to(device),
            lengths,
            None if labels is None else labels.to(device),
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, idx: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx`` (a device tensor) padded to ``width`` tokens (at least their longest molecule)."""
        return self.input_ids[:, :width].index_select(0, idx), self.attention_mask[:, :width].index_select(0, idx)


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


def eval_predictions(model: torch.nn.Module, split: DeviceSplit, batch_size: int) -> torch.Tensor:
    """Eval-mode predictions for every row of ``split`` in its order, as a float32 device tensor; the rows are batched
    by length (each batch padded to its own longest molecule, which does not change a molecule's prediction)."""
    model.eval()
    n = len(split)
    if n == 0:
        return split.input_ids.new_zeros(0, dtype=torch.float32)
    order = sorted(range(n), key=split.lengths.__getitem__, reverse=True)
    order_dev = torch.tensor(order, device=split.input_ids.device)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            ids, mask = split.batch(order_dev[start : start + batch_size], split.lengths[order[start]])
            out.append(model(ids, mask).float())
        return out[0].new_empty(n).index_copy_(0, order_dev, torch.cat(out))


@torch.no_grad()
def _predict_encoded(model: MolformerRegressor, enc, batch_size: int, device) -> np.ndarray:
    pred = eval_predictions(model, DeviceSplit.of(enc, device), batch_size)
    return pred.cpu().numpy().astype(np.float64)


def evaluate(model: MolformerRegressor, tokenizer: Any, frame: pd.DataFrame, cfg: TrainConfig, device) -> tuple[dict, pd.DataFrame]:
    """Metrics (mse, rmse, mae, r2, n_truncated) and a predictions frame (smiles, truth, prediction) for one split."""
    enc = encode_split(tokenizer, frame, cfg.max_length, cfg.truncation, "evaluation")
    pred = _predict_encoded(model, enc, cfg.eval_batch_size_for(device), device)
    truth = frame["label"].to_numpy(dtype=np.float64)
    preds = pd.DataFrame({"smiles": frame["smiles"].to_numpy(), "truth": truth, "prediction": pred})
    return {**regression_metrics(truth, pred), "n_truncated": enc.n_truncated}, preds


def split_mse(model: torch.nn.Module, split: DeviceSplit, batch_size: int) -> float:
    """Mean squared error of ``model`` in eval mode over a labelled split (accumulated in float64): the validation loss
    of early stopping and the target loss that the influence validation stage measures."""
    pred = eval_predictions(model, split, batch_size)
    target = split.labels.to(pred.device, torch.float64)
    return float((pred.double() - target).square().sum()) / max(len(split), 1)


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


def train_step(
    model: MolformerRegressor,
    optimizer: torch.optim.Optimizer,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    projections: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
) -> torch.Tensor:
    """One optimisation step on a batch already on the device (``projections``: this forward's feature-map draws);
    returns the detached batch loss, still on the device: nothing here waits for the device."""
    model.molformer.set_next_feature_projections(projections)
    with _autocast(cfg, device):
        pred = model(ids, mask)
    per_sample = (pred.float() - labels).square()
    loss = (per_sample * weights).mean() if weights is not None else per_sample.mean()
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def run_fingerprint(cfg: TrainConfig, model: MolformerRegressor, train: pd.DataFrame, weights: np.ndarray | None) -> str:
    """Identifies a training run (recipe, initial weights, data) so a resume checkpoint is only reused for the same run."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(pd.util.hash_pandas_object(train[["smiles", "label"]], index=False).values.tobytes())
    if weights is not None:
        h.update(np.asarray(weights, dtype=np.float64).tobytes())
    return h.hexdigest()


def train_regressor(
    model: MolformerRegressor,
    tokenizer: Any,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    cfg: TrainConfig,
    *,
    weights: np.ndarray | None = None,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> TrainResult:
    """Train in place with early stopping on ``validation``; the best weights are restored before returning.

    ``weights`` (one per training row, ≥ 0) multiply the per-sample squared errors (the ``weighted`` selection strategy);
    the batch loss is their mean. ``checkpoint_dir`` enables resuming a killed run from its last completed epoch; it
    must live outside the workflow's declared outputs (Snakemake deletes those before a job starts).
    """
    if len(train) == 0:
        raise ValueError("the training split is empty")
    if len(validation) == 0:
        raise ValueError("the validation split is empty: early stopping needs data.validation_fraction > 0")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(train),) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("sample weights must be one finite, non-negative value per training row")
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device)

    fingerprint = run_fingerprint(cfg, model, train, weights)
    enc_train = encode_split(tokenizer, train, cfg.max_length, cfg.truncation, "training")
    enc_val = encode_split(tokenizer, validation, cfg.max_length, cfg.truncation, "validation")
    if enc_train.n_truncated or enc_val.n_truncated:
        log(f"truncated to {cfg.max_length} tokens: {enc_train.n_truncated} training, {enc_val.n_truncated} validation molecules")
    # Tokenised once, moved to the device once; batches are gathered there.
    data = DeviceSplit.of(enc_train, device, torch.tensor(train["label"].to_numpy(dtype=np.float32)))
    val = DeviceSplit.of(enc_val, device, torch.tensor(validation["label"].to_numpy(dtype=np.float32)))
    w_train = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)

    optimizer = make_optimizer(model, cfg, device)
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_val, best_epoch, bad_epochs, start_epoch = math.inf, 0, 0, 1

    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("fingerprint") == fingerprint:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"])
            if ckpt.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            history = list(ckpt["history"])
            best_state = ckpt["best_state"]
            best_val, best_epoch, bad_epochs = float(ckpt["best_val"]), int(ckpt["best_epoch"]), int(ckpt["bad_epochs"])
            start_epoch = int(ckpt["epoch"]) + 1
            log(f"resuming from {ckpt_path} after epoch {start_epoch - 1}")
        else:
            log(f"ignoring {ckpt_path}: it belongs to a different run (config, data or initial weights changed)")

    n = len(train)
    terminal = progress and sys.stderr.isatty()
    stopped_early = bad_epochs >= cfg.patience
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        model.train()
        batches = length_batches(data.lengths, cfg.batch_size, torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        widths = [max(data.lengths[i] for i in b.tolist()) for b in batches]
        sizes = [b.numel() for b in batches]
        order = torch.cat(batches).to(device, non_blocking=True)
        draws = FeatureDraws(model, cfg.seed, epoch, device)
        bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{cfg.epochs}", leave=False) if terminal else None
        losses: list[torch.Tensor] = []
        running, seen, pos = 0.0, 0, 0
        try:
            for b, (size, width) in enumerate(zip(sizes, widths), start=1):
                idx = order[pos : pos + size]
                pos += size
                ids, mask = data.batch(idx, width)
                labels = data.labels.index_select(0, idx)
                weights_b = None if w_train is None else w_train.index_select(0, idx)
                losses.append(train_step(model, optimizer, ids, mask, labels, weights_b, draws.next(), cfg, device))
                if b % CHECK_EVERY_STEPS == 0 or b == len(batches):
                    # The only host synchronisation of the epoch's steps: read the losses since the last check.
                    values = torch.stack(losses).double().cpu().tolist()
                    for j, value in enumerate(values):
                        if not math.isfinite(value):
                            raise TrainingDivergence(
                                f"non-finite training loss ({value}) at epoch {epoch}, batch {b - len(values) + j + 1}: "
                                "lower train.lr, set train.grad_clip, or check the labels for extreme values"
                            )
                        running += value * sizes[b - len(values) + j]
                    seen += sum(sizes[b - len(values) : b])
                    losses = []
                    if bar is not None:
                        bar.update(len(values))
                        bar.set_postfix(loss=f"{running / seen:.4f}")
                    elif progress and b < len(batches):
                        log(f"epoch {epoch} step {b}/{len(batches)}: train loss {running / seen:.6f}")
        finally:
            draws.close()
            if bar is not None:
                bar.close()
        val_loss = split_mse(model, val, cfg.eval_batch_size_for(device))
        if not math.isfinite(val_loss):
            raise TrainingDivergence(f"non-finite validation loss at epoch {epoch}: lower train.lr or set train.grad_clip")
        is_best = val_loss < best_val
        if is_best:
            best_val, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        history.append(
            {
                "epoch": epoch,
                "train_loss": running / seen,
                "val_loss": val_loss,
                "is_best": bool(is_best),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        log(
            f"epoch {epoch}: train loss {running / seen:.6f}, validation loss {val_loss:.6f}"
            + (" (best so far)" if is_best else f" (no improvement for {bad_epochs}/{cfg.patience} epochs)")
            + f" [{history[-1]['seconds']:.1f} s, {n / max(history[-1]['seconds'], 1e-9):.0f} molecules/s]"
        )
        stopped_early = bad_epochs >= cfg.patience and epoch < cfg.epochs
        if stopped_early:
            log(f"early stopping at epoch {epoch}; best validation loss {best_val:.6f} at epoch {best_epoch}")
        if ckpt_path is not None:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_path.with_name(f".last.pt.tmp-{os.getpid()}")
            torch.save(
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                    "history": history,
                    "best_state": best_state,
                    "best_val": best_val,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                },
                tmp,
            )
            os.replace(tmp, ckpt_path)

    assert best_state is not None  # at least one epoch ran (epochs >= 1) or was restored
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        history=pd.DataFrame(history, columns=["epoch", "train_loss", "val_loss", "is_best", "seconds"]),
        best_epoch=best_epoch,
        best_val_loss=best_val,
        stopped_early=stopped_early,
    )

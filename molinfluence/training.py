"""Fine-tuning a :class:`MolformerRegressor` with early stopping, and evaluating it.

The recipe is the original report's: AdamW (lr 2e-5, weight decay 0.01), mean-squared-error loss, a fixed number of
epochs with early stopping on the **validation** loss (patience 2) and the best weights restored at the end. The test
split is never looked at during training: :func:`train_regressor` does not even receive it.

Determinism: batches are shuffled with a generator seeded by ``(seed, epoch)`` and the global RNG (dropout, and the
MoLFormer feature-map redraw in train mode) is seeded once and saved with each resume checkpoint, so a run that was
killed and resumed from its last completed epoch gives the same weights as an uninterrupted run on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .metrics import regression_metrics
from .config import from_section
from .regressor import MolformerRegressor, pick_device
from .tokenizer import encode_smiles


class TrainingDivergence(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Training recipe (``train:`` / ``finetune:`` in the config)."""

    lr: float = 2e-5
    weight_decay: float = 0.01
    epochs: int = 5
    batch_size: int = 16
    eval_batch_size: int = 64
    patience: int = 2
    seed: int = 0
    max_length: int = 202
    truncation: bool = True
    grad_clip: float | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "eval_batch_size": self.eval_batch_size >= 1,
            "patience": self.patience >= 1,
            "max_length": self.max_length >= 3,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"train.{bad[0]} has an invalid value: {getattr(self, bad[0])!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        return from_section(cls, d, "train")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def encode_checked(tokenizer: Any, frame: pd.DataFrame, cfg: TrainConfig, what: str = "input"):
    """Tokenise ``frame.smiles``; molecules longer than ``max_length`` are truncated, or an error with
    ``truncation: false``. ``frame.attrs["source"]`` (a file name), when set, names where the rows came from."""
    smiles = frame["smiles"].tolist()
    enc = encode_smiles(tokenizer, smiles, max_length=cfg.max_length, truncation=True)
    if enc.n_truncated and not cfg.truncation:
        long = [i for i, n in enumerate(enc.lengths) if n > cfg.max_length]
        source = frame.attrs.get("source", f"the {what} split")
        first = long[0]
        raise ValueError(
            f"{source}: {len(long)} of {len(smiles)} molecules have more than model.max_length={cfg.max_length} "
            f"tokens (rows {', '.join(str(i + 1) for i in long[:5])}{', ...' if len(long) > 5 else ''}; row {first + 1} "
            f"is {smiles[first]} with {enc.lengths[first]} tokens); set model.truncation: true to truncate them "
            "explicitly, or remove them from the input"
        )
    return enc


@torch.no_grad()
def predict(
    model: MolformerRegressor,
    tokenizer: Any,
    smiles: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 202,
    truncation: bool = True,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Predictions in eval mode (fixed feature map), in input order."""
    model.eval()
    enc = encode_smiles(tokenizer, list(smiles), max_length=max_length, truncation=truncation)
    return _predict_encoded(model, enc, batch_size, device)


def _predict_encoded(model: MolformerRegressor, enc, batch_size: int, device) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, enc.input_ids.shape[0], batch_size):
        ids = enc.input_ids[start : start + batch_size].to(device)
        mask = enc.attention_mask[start : start + batch_size].to(device)
        out.append(model(ids, mask).float().cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def evaluate(model: MolformerRegressor, tokenizer: Any, frame: pd.DataFrame, cfg: TrainConfig, device) -> tuple[dict, pd.DataFrame]:
    """Metrics (mse, rmse, mae, r2, n_truncated) and a predictions frame (smiles, truth, prediction) for one split."""
    enc = encode_checked(tokenizer, frame, cfg, "evaluation")
    with torch.no_grad():
        pred = _predict_encoded(model, enc, cfg.eval_batch_size, device)
    truth = frame["label"].to_numpy(dtype=np.float64)
    preds = pd.DataFrame({"smiles": frame["smiles"].to_numpy(), "truth": truth, "prediction": pred})
    return {**regression_metrics(truth, pred), "n_truncated": enc.n_truncated}, preds


def _validation_loss(model, enc, labels: torch.Tensor, cfg: TrainConfig, device) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, labels.numel(), cfg.eval_batch_size):
            sl = slice(start, start + cfg.eval_batch_size)
            pred = model(enc.input_ids[sl].to(device), enc.attention_mask[sl].to(device)).double().cpu()
            total += float(((pred - labels[sl].double()) ** 2).sum())
    return total / max(labels.numel(), 1)


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
    enc_train = encode_checked(tokenizer, train, cfg, "training")
    enc_val = encode_checked(tokenizer, validation, cfg, "validation")
    if enc_train.n_truncated or enc_val.n_truncated:
        log(f"truncated to {cfg.max_length} tokens: {enc_train.n_truncated} training, {enc_val.n_truncated} validation molecules")
    y_train = torch.tensor(train["label"].to_numpy(dtype=np.float32))
    y_val = torch.tensor(validation["label"].to_numpy(dtype=np.float32))
    w_train = torch.ones_like(y_train) if weights is None else torch.tensor(weights, dtype=torch.float32)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
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
            history = list(ckpt["history"])
            best_state = ckpt["best_state"]
            best_val, best_epoch, bad_epochs = float(ckpt["best_val"]), int(ckpt["best_epoch"]), int(ckpt["bad_epochs"])
            start_epoch = int(ckpt["epoch"]) + 1
            log(f"resuming from {ckpt_path} after epoch {start_epoch - 1}")
        else:
            log(f"ignoring {ckpt_path}: it belongs to a different run (config, data or initial weights changed)")

    n = len(train)
    stopped_early = bad_epochs >= cfg.patience
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        running, seen = 0.0, 0
        batches = range(0, n, cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
        for b, start in enumerate(bar, start=1):
            idx = order[start : start + cfg.batch_size]
            ids = enc_train.input_ids[idx].to(device)
            mask = enc_train.attention_mask[idx].to(device)
            pred = model(ids, mask)
            per_sample = (pred - y_train[idx].to(device)) ** 2
            loss = (per_sample * w_train[idx].to(device)).mean()
            if not torch.isfinite(loss):
                raise TrainingDivergence(
                    f"non-finite training loss ({loss.item()}) at epoch {epoch}, batch {b}: "
                    "lower train.lr, set train.grad_clip, or check the labels for extreme values"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            running += float(loss.detach()) * idx.numel()
            seen += idx.numel()
            bar.set_postfix(loss=f"{running / seen:.4f}")
        val_loss = _validation_loss(model, enc_val, y_val, cfg, device)
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
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(),
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

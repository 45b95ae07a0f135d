"""One split as tensors: the one container that training, evaluation, influence and validation pass around.

A :class:`Batch` holds token ids and mask (N × T), labels (N,) and optional per-sample weights (N,) ≥ 0, with a
``name`` for error messages. It is built once per split (:meth:`Batch.encode`, the one tokenisation of a table,
:func:`encode_split`), moves itself to a device (:meth:`Batch.to`) and hands out rows padded to a width
(:meth:`Batch.gather`, what the training loop and evaluation use) or as a smaller batch (:meth:`Batch.subset`, what
the influence engine chunks with). :class:`FeatureBatch` is the same idea for a fixed feature matrix (the validation
stage's head on frozen features). The tokenizer's :class:`~molinfluence.tokenizer.EncodedBatch` stays the raw
output of tokenisation (it also records lengths before truncation); nothing above it passes one around.

Imports point down: this module knows the tokenizer, nothing of the regressor, training or influence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .tokenizer import encode_smiles

__all__ = ["Batch", "FeatureBatch", "Rows", "encode_split", "encode_frame"]


def encode_split(tokenizer: Any, frame: Any, max_length: int, truncation: bool = True, what: str = "input"):
    """Tokenise ``frame.smiles`` as the model is trained and used: molecules longer than ``max_length`` tokens are
    truncated, or with ``truncation: false`` refused by an error naming the file and rows. ``frame.attrs["source"]``
    (a file name), when set, names where the rows came from; else ``what`` names the split."""
    smiles = frame["smiles"].tolist()
    enc = encode_smiles(tokenizer, smiles, max_length=max_length, truncation=True)
    if enc.n_truncated and not truncation:
        long = [i for i, n in enumerate(enc.lengths) if n > max_length]
        source = frame.attrs.get("source", f"the {what} split")
        first = long[0]
        raise ValueError(
            f"{source}: {len(long)} of {len(smiles)} molecules have more than model.max_length={max_length} "
            f"tokens (rows {', '.join(str(i + 1) for i in long[:5])}{', ...' if len(long) > 5 else ''}; row {first + 1} "
            f"is {smiles[first]} with {enc.lengths[first]} tokens); set model.truncation: true to truncate them "
            "explicitly, or remove them from the input"
        )
    return enc


def encode_frame(tokenizer: Any, frame: Any, max_length: int, truncation: bool = True, what: str = "input") -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, labels float32) for a table with ``smiles`` and ``label`` columns
    (:func:`encode_split`)."""
    enc = encode_split(tokenizer, frame, max_length, truncation, what)
    labels = torch.tensor(frame["label"].to_numpy(dtype="float32"))
    return enc.input_ids, enc.attention_mask, labels


def _check_rows(n: int, labels: torch.Tensor, weights: torch.Tensor | None, where: str) -> None:
    if n == 0:
        raise ValueError(f"{where} is empty")
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        raise ValueError(f"{where}: labels must be a tensor of shape ({n},), got {getattr(labels, 'shape', None)}")
    bad = (~torch.isfinite(labels.double())).nonzero()
    if len(bad):
        raise ValueError(f"{where}: label of row {int(bad[0])} is not finite ({float(labels[bad[0]])})")
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.shape != (n,):
            raise ValueError(f"{where}: weights must be a tensor of shape ({n},)")
        bad = (~(torch.isfinite(weights.double()) & (weights >= 0))).nonzero()
        if len(bad):
            raise ValueError(f"{where}: weight of row {int(bad[0])} must be finite and >= 0, got {float(weights[bad[0]])}")


def _to(t: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    return None if t is None else t.to(device)


class _Rows:
    """What both batch kinds share: length, chunks, and the rows' labels and weights."""

    labels: torch.Tensor
    weights: torch.Tensor | None
    name: str

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: torch.Tensor | Sequence[int]) -> _Rows:  # pragma: no cover - overridden
        raise NotImplementedError

    def chunks(self, size: int) -> Iterator[_Rows]:
        """Consecutive chunks of at most ``size`` rows, in order."""
        for start in range(0, len(self), size):
            yield self.subset(torch.arange(start, min(start + size, len(self))))

    def _pick(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = idx.to(self.labels.device)
        return self.labels.index_select(0, idx), None if self.weights is None else self.weights.index_select(0, idx)

    @property
    def device(self) -> torch.device:
        return self.labels.device


@dataclass
class Batch(_Rows):
    """A split as tensors: token ids and mask (N × T), labels (N,), optional per-sample weights (N,) ≥ 0.

    ``name`` (e.g. ``"train"``) is used in error messages. Built on the CPU; :meth:`to` moves the whole split to a
    device once (the training loop gathers its batches there), while the influence engine moves chunks as it uses them.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None = None
    name: str = "batch"

    def __post_init__(self) -> None:
        ids, mask = self.input_ids, self.attention_mask
        where = f"{self.name} split"
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
            raise ValueError(f"{where}: input_ids must be an integer tensor of shape (N, T)")
        if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
            raise ValueError(f"{where}: attention_mask must have the shape of input_ids {tuple(ids.shape)}")
        _check_rows(ids.shape[0], self.labels, self.weights, where)

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.input_ids, self.attention_mask)

    def lengths(self) -> torch.Tensor:
        """Tokens per row (after truncation), on the batch's device."""
        return self.attention_mask.ne(0).sum(dim=1)

    def token_counts(self) -> list[int]:
        """Tokens per row as host integers (cached: batching by length reads them every epoch)."""
        cached = self.__dict__.get("_token_counts")
        if cached is None:
            cached = self.__dict__["_token_counts"] = self.lengths().tolist()
        return cached

    def to(self, device: torch.device | str) -> Batch:
        """The same rows with every tensor on ``device`` (``self`` when they are there already)."""
        device = torch.device(device)
        if self.input_ids.device == device or (device.type == self.input_ids.device.type and device.index is None):
            return self
        moved = Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                      _to(self.weights, device), self.name)
        if "_token_counts" in self.__dict__:
            moved.__dict__["_token_counts"] = self.__dict__["_token_counts"]
        return moved

    def gather(self, idx: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and mask of rows ``idx`` (a tensor on the batch's device), cut to ``width`` tokens (at least their
        longest molecule): the model's inputs for those rows."""
        return self.input_ids[:, :width].index_select(0, idx), self.attention_mask[:, :width].index_select(0, idx)

    def subset(self, index: torch.Tensor | Sequence[int]) -> Batch:
        """Rows ``index`` (in that order), trailing all-padding columns dropped."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.input_ids.device)
        mask = self.attention_mask.index_select(0, idx)
        used = mask.ne(0).any(dim=0).nonzero()
        width = int(used[-1]) + 1 if len(used) else mask.shape[1]
        labels, weights = self._pick(idx)
        return Batch(self.input_ids.index_select(0, idx)[:, :width], mask[:, :width], labels, weights, self.name)

    def with_weights(self, weights: torch.Tensor | None) -> Batch:
        """The same rows with per-sample ``weights`` (checked: one finite value ≥ 0 per row)."""
        return Batch(self.input_ids, self.attention_mask, self.labels, weights, self.name)

    @classmethod
    def encode(cls, tokenizer: Any, table: Any, max_length: int, truncation: bool = True, name: str = "input") -> Batch:
        """A labelled table (``smiles``, ``label``; a DataFrame or a CSV path) encoded as the model was trained: the
        one tokenisation of a split (:func:`encode_split`, which truncates or refuses over-long molecules naming the
        file and rows)."""
        import pandas as pd

        if not isinstance(table, pd.DataFrame):
            path, table = str(table), pd.read_csv(table)
            table.attrs["source"] = path
        return cls(*encode_frame(tokenizer, table, max_length, truncation, name), name=name)


@dataclass
class FeatureBatch(_Rows):
    """Rows of a fixed feature matrix (N × D) with labels: the input of a model ``model(features) -> (B,)``, e.g. a
    regression head on frozen encoder features (the validation stage's convex reference)."""

    features: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None = None
    name: str = "batch"

    def __post_init__(self) -> None:
        if not isinstance(self.features, torch.Tensor) or self.features.dim() != 2:
            raise ValueError(f"{self.name} split: features must be a tensor of shape (N, D)")
        _check_rows(self.features.shape[0], self.labels, self.weights, f"{self.name} split")

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.features,)

    def lengths(self) -> torch.Tensor:
        return torch.zeros(len(self), dtype=torch.long)

    def to(self, device: torch.device | str) -> FeatureBatch:
        return FeatureBatch(self.features.to(device), self.labels.to(device), _to(self.weights, device), self.name)

    def subset(self, index: torch.Tensor | Sequence[int]) -> FeatureBatch:
        idx = torch.as_tensor(index, dtype=torch.long, device=self.features.device)
        labels, weights = self._pick(idx)
        return FeatureBatch(self.features.index_select(0, idx), labels, weights, self.name)


Rows = Batch | FeatureBatch

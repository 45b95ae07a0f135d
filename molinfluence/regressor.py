"""MoLFormer encoder + regression head, saved as a self-describing directory.

The regressor predicts one scalar per molecule from the first-token (``<bos>``, the CLS token) hidden state, as in the
original report, or from the attention-masked mean (``pooling: mean``). Parameter names are ``molformer.*`` (the
encoder, same names as the published checkpoint's ``molformer.`` prefix) and ``head.*`` (a ``Linear(hidden, 1)``).

A saved regressor directory holds everything needed to use it, nothing more (nanoGPT-style self-describing checkpoint):

- ``config.json``        the encoder's :class:`MolformerConfig`
- ``model.safetensors``  all weights and persistent buffers (including each layer's fixed random feature map)
- ``regressor.json``     format version, pooling, head dropout, max token length, and free-form metadata
- ``tokenizer.json`` …   the tokenizer the model was trained with

Loading uses safetensors only (no pickle) and ``deterministic_eval=True`` so that evaluation and Hessian-vector products
see a fixed function.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import check_fields
from .molformer import MolformerConfig, MolformerModel, ModelLoadError, load_encoder
from .batch import Batch, Rows, encode_frame, encode_split  # noqa: F401  (re-exported: the one tokenisation of a split)
from .tokenizer import load_tokenizer, save_tokenizer

FORMAT_VERSION = 1


@dataclass
class RegressorSpec:
    """How the head sits on the encoder; saved as ``regressor.json``."""

    pooling: str = "cls"
    head_dropout: float = 0.0
    max_length: int = 202
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, {"pooling": "model.pooling", "head_dropout": "model.head_dropout", "max_length": "model.max_length"})


class MolformerRegressor(nn.Module):
    """``molformer`` encoder followed by dropout and a ``Linear(hidden, 1)`` head; returns predictions of shape (B,)."""

    def __init__(self, molformer: MolformerModel, spec: RegressorSpec | None = None) -> None:
        super().__init__()
        self.spec = spec or RegressorSpec()
        self.molformer = molformer
        self.dropout = nn.Dropout(self.spec.head_dropout)
        self.head = nn.Linear(molformer.config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.molformer(input_ids=input_ids, attention_mask=attention_mask)
        if self.spec.pooling == "cls":
            pooled = out.last_hidden_state[:, 0]
        else:
            pooled = out.pooler_output
        return self.head(self.dropout(pooled)).squeeze(-1)

    def influence_param_prefixes(self, spec: str) -> list[str] | None:
        """Named parameter groups for ``influence.params`` (the influence engine's task seam; it knows no names).

        ``"head"``: the regression head; ``"last_layers:K"``: the last K encoder blocks, the final LayerNorm and the
        head. None for anything else (then read as a parameter-name prefix).
        """
        if spec == "head":
            return ["head"]
        m = re.fullmatch(r"last_layers:([1-9][0-9]*)", spec)
        if not m:
            return None
        k, layers = int(m.group(1)), len(self.molformer.encoder.layer)
        if k > layers:
            raise ValueError(f"influence.params: last_layers:{k} asks for {k} layers but the encoder has {layers}")
        return [f"molformer.encoder.layer.{i}" for i in range(layers - k, layers)] + ["molformer.LayerNorm", "head"]


def new_regressor(encoder_dir: str | Path, spec: RegressorSpec, *, seed: int) -> tuple[MolformerRegressor, Any]:
    """A pretrained encoder (a saved encoder directory or hub id) with a freshly initialised, seeded head."""
    encoder = load_encoder(str(encoder_dir), deterministic_eval=True)
    tokenizer = load_tokenizer(str(encoder_dir))
    generator = torch.Generator().manual_seed(int(seed))
    model = MolformerRegressor(encoder, spec)
    # Same initialisation as nn.Linear's default, but from a private generator so the head does not depend on
    # whatever consumed the global RNG before.
    bound = 1.0 / float(encoder.config.hidden_size) ** 0.5
    with torch.no_grad():
        model.head.weight.copy_(torch.empty_like(model.head.weight).uniform_(-bound, bound, generator=generator))
        model.head.bias.copy_(torch.empty_like(model.head.bias).uniform_(-bound, bound, generator=generator))
    return model, tokenizer


def initial_model(init: str, start: str | Path, spec: RegressorSpec, *, seed: int) -> tuple[MolformerRegressor, Any]:
    """The starting point of a training run.

    ``fresh``: the pretrained encoder in ``start`` with a new head seeded by ``seed`` (base training, and the
    original report's "fresh model"); ``continue``: the trained regressor directory ``start`` as it is (its "same
    model"), whose spec then overrides ``spec``.
    """
    if init == "fresh":
        return new_regressor(start, spec, seed=seed)
    if init == "continue":
        return load_regressor(start)
    raise ValueError(f"finetune.inits: unknown init {init!r}; allowed: 'continue', 'fresh'")


def save_regressor(model: MolformerRegressor, tokenizer: Any, directory: str | Path) -> Path:
    """Write the self-describing directory (see module docstring). The caller makes it atomic (files.atomic_path)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.molformer.config.save_pretrained(directory)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt", "molinfluence": str(FORMAT_VERSION)})
    spec = asdict(model.spec)
    (directory / "regressor.json").write_text(
        json.dumps({"format_version": FORMAT_VERSION, **spec}, indent=2, sort_keys=True) + "\n"
    )
    save_tokenizer(tokenizer, directory)
    return directory


def load_regressor(directory: str | Path, *, device: str | torch.device = "cpu") -> tuple[MolformerRegressor, Any]:
    """Load a directory written by :func:`save_regressor`; the model is returned in eval mode on ``device``."""
    directory = Path(directory)
    spec_path = directory / "regressor.json"
    if not spec_path.is_file():
        raise ModelLoadError(
            f"{directory} is not a MolInfluence regressor directory (no regressor.json): "
            "point to the output of the train_base or finetune stage"
        )
    raw = json.loads(spec_path.read_text())
    version = raw.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ModelLoadError(f"{spec_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    spec = RegressorSpec(**raw)
    config = MolformerConfig.from_pretrained(directory)
    config.deterministic_eval = True
    model = MolformerRegressor(MolformerModel(config), spec)
    weights = directory / "model.safetensors"
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - missing, truncated or not a safetensors file
        raise ModelLoadError(
            f"{weights} cannot be read ({str(exc).splitlines()[0]}); the file is missing or damaged: rerun the stage "
            "that wrote this model directory"
        ) from None
    expected = model.state_dict()
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if mismatched or missing or unexpected:
        if mismatched:
            k = mismatched[0]
            detail = (
                f"{len(mismatched)} weights have other shapes, e.g. {k} is {tuple(state[k].shape)} in the file but "
                f"{tuple(expected[k].shape)} by the config"
            )
        elif missing:
            detail = f"{len(missing)} weights are missing, e.g. {missing[0]}"
        else:
            detail = f"{len(unexpected)} weights are not part of this model, e.g. {unexpected[0]}"
        raise ModelLoadError(
            f"{weights} does not match its config.json: {detail}; use the config.json saved with these weights "
            "(or retrain)"
        )
    model.load_state_dict(state, strict=True)
    tokenizer = load_tokenizer(str(directory))
    model.to(device)
    model.eval()
    return model, tokenizer


@torch.no_grad()
def head_inputs(model: nn.Module, data: Rows, batch_size: int = 64) -> torch.Tensor:
    """What ``model.head`` receives for every row of ``data`` in eval mode (pooled encoder output), float64, CPU.

    Captured with a forward pre-hook on the head, so it is whatever the model's pooling (CLS or mean) gives: the
    representation the convex reference fits a head on and the selectors compare molecules in.
    """
    captured: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for chunk in data.chunks(batch_size):
            model(*(t.to(device) for t in chunk.inputs))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).to("cpu", torch.float64)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU. Asking for CUDA where there is none is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available on this machine; use 'auto' or 'cpu'")
    return device


def load_base(
    model_dir: str | Path,
    tables: Mapping[str, Any],
    *,
    device: str = "auto",
    truncation: bool = True,
    names: Mapping[str, str] | None = None,
) -> tuple[MolformerRegressor, Any, dict[str, Batch]]:
    """The base model and its splits, as every stage after training starts: the regressor in ``model_dir`` on
    ``device`` (:func:`pick_device`), and each of ``tables`` (a CSV path or a DataFrame with ``smiles`` and ``label``)
    encoded as the model was trained (its ``max_length``, ``truncation``: :meth:`Batch.encode`). Returns the model, its
    tokenizer and the batches under the keys of ``tables``; a batch is named by ``names[key]`` (error messages), else
    by its key."""
    model, tokenizer = load_regressor(model_dir, device=pick_device(device))
    names = dict(names or {})
    batches = {key: Batch.encode(tokenizer, table, model.spec.max_length, truncation, names.get(key, key))
               for key, table in tables.items()}
    return model, tokenizer, batches

"""Options of the validation stage (``validation:`` in the config) and the retraining recipe of the ``full`` setting."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..config import check_fields, from_section
from .estimators import DEFAULT_ESTIMATORS, check_estimators


@dataclass
class ValidationArgs:
    """Options of the validation stage (``validation:`` in the config; the schema documents each key)."""

    enabled: bool = False
    m: int = 20
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 100
    lr: float = 2e-5
    weight_decay: float = 0.01
    batch_size: int | None = 16
    train_mode: bool = True
    chunk_size: int = 5
    bootstrap: int = 2000
    seed: int = 0
    estimators: list[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_ESTIMATORS))
    topk: int = 5

    def __post_init__(self) -> None:
        self.seeds = list(self.seeds) if isinstance(self.seeds, tuple) else self.seeds
        check_fields(self, {f.name: f"validation.{f.name}" for f in fields(self)})
        self.estimators = check_estimators(self.estimators)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidationArgs:
        """Build from the config section; unknown keys are errors (a typo must not fall back to a default)."""
        return from_section(cls, d, "validation")

    def recipe(self) -> Recipe:
        """The retraining recipe of the ``full`` setting."""
        return Recipe(self.steps, self.lr, self.weight_decay, self.batch_size, self.train_mode)


@dataclass(frozen=True)
class Recipe:
    """How the ``full`` setting continues training: AdamW, ``steps`` mini-batch steps (``batch_size=None``: the whole
    training split every step), train mode (dropout, feature-map redraws) or not; no early stopping."""

    steps: int
    lr: float
    weight_decay: float
    batch_size: int | None
    train_mode: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

"""Which samples: ``m`` rows of the scores table spread evenly over the score range, and the chunks of the jobs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def choose_samples(scores: pd.DataFrame, m: int, seed: int, source: str = "scores table") -> pd.DataFrame:
    """``m`` rows of ``scores`` spread evenly over the range of its ``score`` column.

    The rows are ordered by score, ties by a permutation of the ``ext_index`` values seeded by ``seed`` (so which of
    several equal scores fills a position depends on the seed only, never on the row order of the file); the chosen positions are the quantile levels
    ``j/(m − 1)``, ``j = 0 … m − 1`` of that order (the lowest and the highest score included), rounded half up.
    Returns the chosen rows in that order with their ``rank`` (0 = most negative) and ``quantile`` added. Raises
    ValueError naming ``source`` for missing columns, non-finite scores or ``m`` larger than the table.
    """
    missing = [c for c in ("ext_index", "smiles", "label", "score") if c not in scores.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; expected ext_index, smiles, label, score")
    values = pd.to_numeric(scores["score"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(f"{source}: the score of row {int(bad[0]) + 1} is not a finite number ({scores['score'].iloc[bad[0]]!r})")
    n = len(scores)
    if m < 3:
        raise ValueError(f"validation.m must be >= 3 (correlations need three points), got {m}")
    if m > n:
        raise ValueError(f"validation.m = {m} is larger than the {n} scored external samples in {source}")
    ext = scores["ext_index"].to_numpy()
    if len(np.unique(ext)) != n:
        raise ValueError(f"{source}: ext_index values are not unique")
    tie_break = np.empty(n, dtype=np.int64)
    tie_break[np.argsort(ext, kind="stable")] = np.random.default_rng(seed).permutation(n)  # keyed by ext_index
    order = np.lexsort((tie_break, values))
    positions = np.floor(np.linspace(0, n - 1, m) + 0.5).astype(int)
    chosen = scores.iloc[order[positions]].reset_index(drop=True).copy()
    chosen["rank"] = positions
    chosen["quantile"] = positions / max(n - 1, 1)
    return chosen


def chunk_rows(m: int, chunk_size: int, chunk: int) -> list[int]:
    """Row numbers (0-based, into the chosen table) handled by job ``chunk``; ValueError if the chunk does not exist."""
    count = math.ceil(m / chunk_size)
    if not 0 <= chunk < count:
        raise ValueError(f"chunk {chunk} does not exist: validation.m = {m} in chunks of {chunk_size} gives {count}")
    return list(range(chunk * chunk_size, min(m, (chunk + 1) * chunk_size)))

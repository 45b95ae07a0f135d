"""Choose which external samples to add to the training set, from their influence scores.

Score convention: ``score`` is the influence ``I(z)`` = the predicted change of the target (validation)
loss when sample ``z`` is up-weighted. **Negative = expected helpful**, positive = expected harmful.

Strategies (``select(pool, strategy, k, seed=...)``), each returning a frame with columns
``ext_index, smiles, label, score, weight`` in selection order:

- ``most_negative``: the ``k`` lowest scores, most negative first (the original report's choice).
- ``most_positive``: the ``k`` highest scores, most positive first (the "should hurt" control).
- ``both_ends``: ``ceil(k/2)`` most negative followed by ``floor(k/2)`` most positive (disjoint, as
  ``k <= len(pool)``); tests whether it is the *sign* of the score that matters or just extremeness.
- ``random``: ``k`` samples drawn uniformly without replacement with ``numpy.random.default_rng(seed)``;
  the matched control for any scored strategy at the same ``k``. The draw is a seeded permutation of the
  pool sorted by ``ext_index``, truncated to ``k``: the same seed gives the same set (independent of the
  pool's row order), different seeds give different sets, and for one seed a smaller ``k`` is a prefix
  of a larger one (nested controls). Needs no scores.
- ``all``: the whole pool in ``ext_index`` order. ``k`` is not a free parameter here: it must equal the
  pool size (or 0 for the empty selection), so that a summary row's ``k`` is the number of samples added
  and ``all`` is matched by ``random`` at the same ``k``. Needs no scores.
- ``weighted``: the whole pool, each sample with a per-sample loss weight derived from its score (see
  below); like ``all``, ``k`` must equal the pool size (or 0). Rows are ordered most negative score
  first (so weights are non-increasing).
- the model-ranked selectors (:data:`molinfluence.grid.MODEL_RANKED`: ``residual``, ``consensus``, ``adaptive_greedy``,
  ``tracin``, ...; see :mod:`molinfluence.selectors`): the pool is their ranking table (a ``rank`` column, 1 = most
  recommended) and the selection is its ``k`` first rows; ``score`` is the selector's own score.
- ``k = 0`` gives the empty selection for every strategy: the "no extra training data" control.

Hard selections have ``weight = 1.0``; the trainer multiplies each sample's loss by ``weight``.
Ties in score are broken by ``ext_index`` ascending (stable, so results never depend on row order).

Weight mapping for ``weighted`` (:func:`influence_weights`)::

    scale = median(|score_i|) over the pool's non-zero scores
    w_i   = clip(-score_i / scale, 0, WEIGHT_CAP)          (all w_i = 0 if every score is 0)

Why this mapping rather than a softmax:

- sign-respecting: samples predicted harmful or neutral (``score >= 0``) get weight exactly 0, so they
  cannot make things worse; helpful ones are weighted in proportion to their predicted benefit.
- scale-free: influence magnitudes depend on the LiSSA damping/scale and on the loss units, so any
  absolute temperature would need retuning per run; dividing by the median |score| makes the weights
  invariant to multiplying all scores by a positive constant. The median is robust to the heavy tails
  typical of influence scores.
- comparable to training samples: a sample whose predicted benefit is a typical magnitude gets weight
  ~1, the same as an ordinary training sample; a softmax normalises the weights to sum to 1, which
  makes the whole external set count as a single training sample.
- bounded: the cap ``WEIGHT_CAP = 3`` keeps a few extreme (often unreliable) scores from dominating the
  loss; it corresponds to three times the typical influence magnitude.
"""

from __future__ import annotations

import math
import numbers

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .grid import MODEL_RANKED, NO_DATA, SCORE_FREE, STRATEGIES

__all__ = ["STRATEGIES", "SCORE_FREE", "WEIGHT_CAP", "OUTPUT_COLUMNS", "influence_weights", "select", "select_condition",
           "TrainingRows", "training_rows"]

WEIGHT_CAP: float = 3.0

OUTPUT_COLUMNS: tuple[str, ...] = ("ext_index", "smiles", "label", "score", "weight")
_POOL_COLUMNS: tuple[str, ...] = ("ext_index", "smiles", "label")


def influence_weights(scores: np.ndarray, cap: float = WEIGHT_CAP) -> np.ndarray:
    """Map influence scores to non-negative loss weights: ``clip(-score / median|score|, 0, cap)``.

    The median is taken over the non-zero |scores| so that a pool with many exact zeros still has a
    positive scale; if every score is zero no sample is predicted helpful and all weights are 0.
    See the module docstring for why this mapping was chosen.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores must be finite; {int(np.sum(~np.isfinite(s)))} are NaN or inf")
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"weight cap must be a positive finite number, got {cap!r}")
    nonzero = np.abs(s[s != 0.0])
    if nonzero.size == 0:
        return np.zeros_like(s)
    scale = float(np.median(nonzero))
    return np.clip(-s / scale, 0.0, cap)


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ext_index": pd.Series([], dtype="int64"),
            "smiles": pd.Series([], dtype=object),
            "label": pd.Series([], dtype="float64"),
            "score": pd.Series([], dtype="float64"),
            "weight": pd.Series([], dtype="float64"),
        }
    )


def _check_k(k: object, n: int, strategy: str) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"selection.k must be an integer, got {k!r} ({type(k).__name__})")
    k = int(k)
    if k < 0:
        raise ValueError(f"selection.k must be >= 0, got {k} (pool size {n})")
    if k > n:
        raise ValueError(f"selection.k = {k} is larger than the external pool size {n}")
    if strategy in ("all", "weighted") and k not in (0, n):
        raise ValueError(
            f"selection.k = {k} with strategy {strategy!r}: this strategy uses the whole pool, "
            f"so k must equal the pool size {n} (or 0 for the empty selection)"
        )
    return k


def _check_pool(pool: pd.DataFrame, needs_score: bool, strategy: str) -> pd.DataFrame:
    """Validate the pool and return it sorted by ``ext_index`` with a fresh index."""
    if not isinstance(pool, pd.DataFrame):
        raise ValueError(f"pool must be a pandas DataFrame, got {type(pool).__name__}")
    required = _POOL_COLUMNS + (("score",) if needs_score else ())
    for col in required:
        if col not in pool.columns:
            why = f" (strategy {strategy!r} needs scores)" if col == "score" else ""
            raise ValueError(f"pool is missing column {col!r}{why}; has {list(pool.columns)}")
    idx = pool["ext_index"]
    if not pd.api.types.is_integer_dtype(idx):
        raise ValueError(f"pool column 'ext_index' must be integer, got dtype {idx.dtype}")
    if (idx < 0).any():
        raise ValueError(f"pool column 'ext_index' has negative values, e.g. {int(idx[idx < 0].iloc[0])}")
    dup = idx[idx.duplicated()]
    if len(dup):
        raise ValueError(f"pool column 'ext_index' has duplicates, e.g. {int(dup.iloc[0])}")
    label = pd.to_numeric(pool["label"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(label)
    if bad.any():
        rows = idx.to_numpy()[bad][:5].tolist()
        raise ValueError(f"pool column 'label' has {int(bad.sum())} missing/non-numeric values (ext_index {rows})")
    if needs_score:
        score = pd.to_numeric(pool["score"], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(score)
        if bad.any():
            rows = idx.to_numpy()[bad][:5].tolist()
            raise ValueError(
                f"pool column 'score' has {int(bad.sum())} NaN/inf/non-numeric values "
                f"(ext_index {rows}); influence scores must be finite"
            )
    out = pool.sort_values("ext_index", kind="stable").reset_index(drop=True)
    out = out.assign(
        ext_index=out["ext_index"].astype("int64"),
        label=pd.to_numeric(out["label"]).astype("float64"),
        score=(
            pd.to_numeric(out["score"], errors="coerce").astype("float64")
            if "score" in out.columns
            else np.nan
        ),
    )
    return out


def _rows(pool: pd.DataFrame, order: np.ndarray, weight: np.ndarray | float = 1.0) -> pd.DataFrame:
    picked = pool.iloc[order]
    return pd.DataFrame(
        {
            "ext_index": picked["ext_index"].to_numpy(dtype=np.int64),
            "smiles": picked["smiles"].to_numpy(dtype=object),
            "label": picked["label"].to_numpy(dtype=np.float64),
            "score": picked["score"].to_numpy(dtype=np.float64),
            "weight": np.broadcast_to(np.asarray(weight, dtype=np.float64), (len(order),)).copy(),
        }
    )


def select(pool: pd.DataFrame, strategy: str, k: int, *, seed: int = 0) -> pd.DataFrame:
    """Select ``k`` external samples from ``pool`` by ``strategy`` (see the module docstring).

    ``pool`` has columns ``ext_index`` (0-based row of the external file), ``smiles``, ``label`` and,
    unless the strategy is in :data:`SCORE_FREE`, ``score``. Returns a new frame with columns
    ``ext_index, smiles, label, score, weight`` in selection order (``score`` is NaN when the pool has
    none). ``seed`` is used only by ``random``.

    Raises ValueError for an unknown strategy, a bad ``k`` (negative, above the pool size, or not the
    pool size for ``all``/``weighted``), missing columns, duplicate ``ext_index`` or non-finite scores.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"selection.strategy {strategy!r} is unknown; choose one of {list(STRATEGIES)}")
    pool = _check_pool(pool, needs_score=strategy not in SCORE_FREE, strategy=strategy)
    n = len(pool)
    k = _check_k(k, n, strategy)
    if k == 0:
        return _empty()

    ext = pool["ext_index"].to_numpy()
    if strategy in MODEL_RANKED:
        if "rank" not in pool.columns:
            raise ValueError(f"strategy {strategy!r} needs the pool ranked by its selector (a 'rank' column); has "
                             f"{list(pool.columns)}")
        rank = pd.to_numeric(pool["rank"], errors="coerce").to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(rank)):
            raise ValueError(f"strategy {strategy!r}: the ranking's 'rank' column has missing values")
        return _rows(pool, np.lexsort((ext, rank))[:k])
    if strategy == "random":
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        order = np.random.default_rng(int(seed)).permutation(n)[:k]
        return _rows(pool, order)
    if strategy == "all":
        return _rows(pool, np.arange(n))

    score = pool["score"].to_numpy(dtype=np.float64)
    ascending = np.lexsort((ext, score))  # lowest score first, ties by ext_index
    descending = np.lexsort((ext, -score))  # highest score first, ties by ext_index
    if strategy == "most_negative":
        return _rows(pool, ascending[:k])
    if strategy == "most_positive":
        return _rows(pool, descending[:k])
    if strategy == "both_ends":
        negatives = ascending[: (k + 1) // 2]
        # Exclude the negatives explicitly: with tied scores the two ends can otherwise overlap.
        positives = descending[~np.isin(descending, negatives)][: k - len(negatives)]
        return _rows(pool, np.concatenate([negatives, positives]))
    # weighted: the whole pool, most negative first, with score-derived weights.
    return _rows(pool, ascending, influence_weights(score[ascending]))


def select_condition(pool: pd.DataFrame, strategy: str, k: int | str, *, seed: int = 0, source: str = "the pool") -> pd.DataFrame:
    """The selection a grid condition trains on: ``k`` as in a path (a number or ``all``), and ``none`` (the no-data
    control) as the empty selection. A ``k`` larger than the pool names the config key and the pool file."""
    if strategy == NO_DATA:
        return _empty()
    if k == "all":
        k = len(pool)
    elif isinstance(k, str):
        if not k.isdigit():
            raise ValueError(f"selection.k must be a number or 'all', got {k!r}")
        k = int(k)
    if isinstance(k, numbers.Integral) and not isinstance(k, bool) and k > len(pool):
        raise ValueError(
            f"selection.k = {k} is larger than the external pool ({len(pool)} molecules in {source} after "
            "validation and overlap removal); lower selection.k"
        )
    return select(pool, strategy, k, seed=seed)


@dataclass
class TrainingRows:
    """A training split with a selection added: the rows to train on and one loss weight per row."""

    frame: pd.DataFrame  # smiles, label; the training split first, then the added samples
    weights: np.ndarray | None  # None when every weight is 1 (plain mean loss)
    n_selected: int  # rows in the selection file
    n_added: int  # rows actually added (weight > 0)


def training_rows(
    train: pd.DataFrame,
    selection: pd.DataFrame | None,
    *,
    train_source: str = "the training split",
    selection_source: str = "the selection",
) -> TrainingRows:
    """Append a selection's samples (columns smiles, label, weight) to the training split.

    Rows with weight 0 are not added (the ``weighted`` strategy's predicted-harmful samples); the training rows keep
    weight 1. ``weights`` is None when every weight is 1, so an unweighted run is the plain mean loss. The frame's
    ``attrs["source"]`` says which file each range of rows came from (for error messages about a row).
    """
    for name, frame, source in (("train", train, train_source), ("selection", selection, selection_source)):
        if frame is None and name == "selection":
            continue
        need = {"smiles", "label"} | ({"weight"} if name == "selection" else set())
        missing = need - set(frame.columns)
        if missing:
            raise ValueError(f"{source}: lacks column(s) {sorted(missing)}; has {list(frame.columns)}")
    rows = train[["smiles", "label"]].reset_index(drop=True)
    rows.attrs["source"] = train.attrs.get("source", train_source)
    if selection is None:
        return TrainingRows(rows, None, 0, 0)
    weight = pd.to_numeric(selection["weight"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(weight) | (weight < 0))
    if bad.size:
        raise ValueError(
            f"{selection_source}: column 'weight' must be finite and >= 0; data row {bad[0] + 1} has "
            f"{selection['weight'].iloc[bad[0]]!r}"
        )
    added = selection.loc[weight > 0, ["smiles", "label"]]
    n_added = len(added)
    if n_added == 0:
        return TrainingRows(rows, None, len(selection), 0)
    weights = np.concatenate([np.ones(len(rows)), weight[weight > 0]])
    frame = pd.concat([rows, added], ignore_index=True)
    frame.attrs["source"] = f"{rows.attrs['source']} (rows 1-{len(rows)}) + {selection_source} (the rows after)"
    return TrainingRows(frame, None if np.all(weights == 1.0) else weights, len(selection), n_added)

"""Tests for molinfluence.selection: which external samples each strategy adds, and with what weight."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from molinfluence.grid import MODEL_RANKED
from molinfluence.selection import (
    OUTPUT_COLUMNS,
    SCORE_FREE,
    STRATEGIES,
    WEIGHT_CAP,
    influence_weights,
    select,
    select_condition,
    training_rows,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXTERNAL = DATA / "External-Dataset_for_Task2.csv"


def make_pool(n: int = 20, seed: int = 0, with_score: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pool = pd.DataFrame(
        {
            "ext_index": np.arange(n, dtype=np.int64),
            "smiles": [f"C{'C' * i}O" for i in range(n)],
            "label": rng.normal(2.0, 1.0, n),
        }
    )
    if with_score:
        pool["score"] = rng.normal(0.0, 1e-3, n)
        pool["rank"] = rng.permutation(n) + 1  # what a model-ranked selector's ranking adds
    return pool


def reference_order(pool: pd.DataFrame, descending: bool) -> list[int]:
    """Independent reference: Python's sort on (score, ext_index) tuples."""
    sign = -1.0 if descending else 1.0
    pairs = sorted(zip(pool["score"] * sign, pool["ext_index"]))
    return [int(e) for _, e in pairs]


@pytest.mark.parametrize("k", [1, 5, 20])
def test_most_negative_and_most_positive_pick_the_extreme_scores_in_order(k: int) -> None:
    pool = make_pool()
    neg = select(pool, "most_negative", k)
    pos = select(pool, "most_positive", k)
    assert neg["ext_index"].tolist() == reference_order(pool, descending=False)[:k]
    assert pos["ext_index"].tolist() == reference_order(pool, descending=True)[:k]
    assert list(neg.columns) == list(OUTPUT_COLUMNS)
    assert (neg["weight"] == 1.0).all() and (pos["weight"] == 1.0).all()
    # Every selected negative score is <= every unselected one: these really are the k most helpful.
    rest = pool.loc[~pool["ext_index"].isin(neg["ext_index"]), "score"]
    if len(rest):
        assert neg["score"].max() <= rest.min()


def test_selected_rows_carry_the_pool_row_they_name() -> None:
    pool = make_pool()
    out = select(pool, "most_negative", 7)
    merged = out.merge(pool, on="ext_index", suffixes=("", "_pool"))
    assert len(merged) == 7
    assert (merged["smiles"] == merged["smiles_pool"]).all()
    np.testing.assert_array_equal(merged["label"], merged["label_pool"])
    np.testing.assert_array_equal(merged["score"], merged["score_pool"])


def test_ties_are_broken_by_ext_index_and_row_order_does_not_matter() -> None:
    pool = make_pool(12)
    pool["score"] = np.repeat([-2.0, -1.0, 0.0, 1.0], 3)
    shuffled = pool.sample(frac=1.0, random_state=3)
    for strategy in STRATEGIES:
        k = len(pool) if strategy in ("all", "weighted") else 5
        a = select(pool, strategy, k, seed=4)
        b = select(shuffled, strategy, k, seed=4)
        pd.testing.assert_frame_equal(a, b)
    assert select(pool, "most_negative", 4)["ext_index"].tolist() == [0, 1, 2, 3]
    assert select(pool, "most_positive", 4)["ext_index"].tolist() == [9, 10, 11, 6]


@pytest.mark.parametrize("k", [1, 2, 3, 7, 20])
def test_both_ends_splits_ceil_negative_floor_positive_disjoint(k: int) -> None:
    pool = make_pool()
    out = select(pool, "both_ends", k)
    n_neg, n_pos = math.ceil(k / 2), k // 2
    assert len(out) == k and out["ext_index"].is_unique
    assert out["ext_index"].tolist()[:n_neg] == reference_order(pool, descending=False)[:n_neg]
    if n_pos:
        assert out["ext_index"].tolist()[n_neg:] == reference_order(pool, descending=True)[:n_pos]


def test_both_ends_stays_disjoint_when_all_scores_tie() -> None:
    pool = make_pool(6)
    pool["score"] = 0.0
    out = select(pool, "both_ends", 6)
    assert sorted(out["ext_index"]) == list(range(6))


def test_random_is_seeded_nested_and_needs_no_scores() -> None:
    pool = make_pool(50, with_score=False)
    a = select(pool, "random", 10, seed=1)
    assert select(pool, "random", 10, seed=1).equals(a)
    b = select(pool, "random", 10, seed=2)
    assert set(a["ext_index"]) != set(b["ext_index"])
    assert a["ext_index"].is_unique and set(a["ext_index"]) <= set(pool["ext_index"])
    assert a["score"].isna().all() and (a["weight"] == 1.0).all()
    # Same seed, larger k: the smaller control is a prefix (nested), so k-curves share samples.
    assert select(pool, "random", 25, seed=1)["ext_index"].tolist()[:10] == a["ext_index"].tolist()


def test_random_is_roughly_uniform_over_seeds() -> None:
    pool = make_pool(10, with_score=False)
    counts = np.zeros(10)
    for seed in range(200):
        counts[select(pool, "random", 3, seed=seed)["ext_index"].to_numpy()] += 1
    expected = 200 * 3 / 10
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))


def test_random_carries_scores_when_present() -> None:
    pool = make_pool()
    out = select(pool, "random", 5, seed=0)
    np.testing.assert_array_equal(out["score"], pool.set_index("ext_index").loc[out["ext_index"], "score"])


def test_all_returns_the_whole_pool_and_insists_on_k_equal_pool_size() -> None:
    pool = make_pool(15, with_score=False)
    out = select(pool, "all", 15)
    assert out["ext_index"].tolist() == list(range(15)) and (out["weight"] == 1.0).all()
    with pytest.raises(ValueError, match=r"selection\.k.*pool size 15"):
        select(pool, "all", 10)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_k_zero_is_the_empty_selection_for_every_strategy(strategy: str) -> None:
    out = select(make_pool(), strategy, 0)
    assert len(out) == 0 and list(out.columns) == list(OUTPUT_COLUMNS)
    assert out["ext_index"].dtype == np.int64 and out["weight"].dtype == np.float64


def test_weighted_matches_the_documented_formula() -> None:
    pool = make_pool(8)
    pool["score"] = [-4.0, -2.0, -1.0, 0.0, 0.5, 1.0, 2.0, -100.0]
    out = select(pool, "weighted", 8).set_index("ext_index")
    scale = np.median([4.0, 2.0, 1.0, 0.5, 1.0, 2.0, 100.0])  # non-zero |scores|: 2.0
    expected = {0: 4 / scale, 1: 2 / scale, 2: 1 / scale, 3: 0.0, 4: 0.0, 5: 0.0, 6: 0.0, 7: WEIGHT_CAP}
    for ext, w in expected.items():
        assert out.loc[ext, "weight"] == pytest.approx(w)
    # Whole pool, most negative first, weights non-increasing.
    assert len(out) == 8 and np.all(np.diff(out["weight"].to_numpy()) <= 0)


def test_weights_are_invariant_to_score_scale_and_zero_for_harmful_samples() -> None:
    scores = np.random.default_rng(0).standard_t(2, size=200) * 1e-4
    w = influence_weights(scores)
    np.testing.assert_allclose(influence_weights(scores * 37.0), w, rtol=1e-12)
    assert np.all(w[scores >= 0] == 0.0) and np.all(w[scores < 0] > 0.0)
    assert w.max() <= WEIGHT_CAP
    # A typical helpful sample (score = -median|score|) weighs like one training sample.
    assert influence_weights(np.array([-1.0, -1.0, 1.0]))[0] == pytest.approx(1.0)
    assert np.all(influence_weights(np.zeros(4)) == 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_rejected(bad: float) -> None:
    pool = make_pool()
    pool.loc[3, "score"] = bad
    with pytest.raises(ValueError, match=r"score.*ext_index \[3\]"):
        select(pool, "most_negative", 2)
    # Score-free strategies do not use scores, so they still work.
    assert len(select(pool, "random", 2)) == 2


@pytest.mark.parametrize("k", [-1, 21])
def test_bad_k_names_the_config_key_and_pool_size(k: int) -> None:
    with pytest.raises(ValueError, match=r"selection\.k.*20"):
        select(make_pool(20), "most_negative", k)


def test_other_bad_input_is_reported_clearly() -> None:
    pool = make_pool()
    with pytest.raises(ValueError, match="selection.strategy"):
        select(pool, "top", 3)
    with pytest.raises(ValueError, match="'score'"):
        select(pool.drop(columns="score"), "both_ends", 3)
    with pytest.raises(ValueError, match="'smiles'"):
        select(pool.drop(columns="smiles"), "random", 3)
    with pytest.raises(ValueError, match="duplicates"):
        select(pd.concat([pool, pool.iloc[:1]]), "random", 3)
    with pytest.raises(ValueError, match=r"selection\.k must be an integer"):
        select(pool, "random", 2.5)  # type: ignore[arg-type]


def test_strategy_registry() -> None:
    assert set(STRATEGIES) == {"most_negative", "most_positive", "both_ends", "random", "all", "weighted", *MODEL_RANKED}
    assert SCORE_FREE == {"random", "all"} and SCORE_FREE <= set(STRATEGIES)


def test_a_model_ranked_selection_is_the_first_k_rows_of_its_ranking() -> None:
    pool = make_pool(10)
    out = select(pool, "consensus", 4)
    expected = pool.sort_values("rank")["ext_index"].head(4).tolist()
    assert out["ext_index"].tolist() == expected and (out["weight"] == 1.0).all()
    with pytest.raises(ValueError, match="rank"):
        select(pool.drop(columns="rank"), "consensus", 4)


@pytest.mark.skipif(not EXTERNAL.exists(), reason=f"shared external data set not found at {EXTERNAL}")
def test_on_the_real_external_file_ext_index_is_the_file_row() -> None:
    ext = pd.read_csv(EXTERNAL)
    pool = pd.DataFrame(
        {"ext_index": np.arange(len(ext)), "smiles": ext["SMILES"], "label": ext["Label"]}
    )
    pool["score"] = np.random.default_rng(0).normal(size=len(pool))
    for strategy in ("most_negative", "random", "both_ends"):
        out = select(pool, strategy, 70, seed=5)
        assert len(out) == 70
        assert (ext.loc[out["ext_index"], "SMILES"].to_numpy() == out["smiles"].to_numpy()).all()
        np.testing.assert_array_equal(ext.loc[out["ext_index"], "Label"].to_numpy(), out["label"])
    assert len(select(pool, "all", len(pool))) == len(ext)


# ---------------------------------------------------------------------------------------------------------------------
# A selection turned into training rows


def make_train(n: int = 5) -> pd.DataFrame:
    frame = pd.DataFrame({"smiles": [f"N{'C' * i}" for i in range(n)], "label": np.arange(n, dtype=float), "extra": 0})
    frame.attrs["source"] = "train.csv"
    return frame


def test_training_rows_append_the_selection_after_the_training_split() -> None:
    train = make_train()
    chosen = select(make_pool(), "most_negative", 4)
    rows = training_rows(train, chosen, selection_source="sel.csv")
    assert (rows.n_selected, rows.n_added) == (4, 4)
    assert list(rows.frame.columns) == ["smiles", "label"]
    assert rows.frame["smiles"].tolist() == [*train["smiles"], *chosen["smiles"]]
    assert rows.frame["label"].tolist() == [*train["label"], *chosen["label"]]
    assert rows.weights is None  # hard selections: every weight 1, the plain mean loss
    assert rows.frame.attrs["source"] == "train.csv (rows 1-5) + sel.csv (the rows after)"


def test_weighted_selection_keeps_its_weights_and_drops_zero_weight_samples() -> None:
    train = make_train(3)
    chosen = select(make_pool(), "weighted", 20)
    rows = training_rows(train, chosen)
    positive = chosen[chosen["weight"] > 0]
    assert rows.n_selected == 20 and rows.n_added == len(positive) < 20
    np.testing.assert_array_equal(rows.weights, [1.0, 1.0, 1.0, *positive["weight"]])
    assert rows.frame["smiles"].tolist()[3:] == positive["smiles"].tolist()


def test_empty_or_missing_selection_is_the_training_split_alone() -> None:
    train = make_train()
    for selection in (None, select(make_pool(), "most_negative", 0)):
        rows = training_rows(train, selection)
        assert rows.frame.equals(train[["smiles", "label"]]) and rows.weights is None
        assert (rows.n_added, rows.n_selected) == (0, 0)
    assert rows.frame.attrs["source"] == "train.csv"


def test_bad_selection_names_the_file_and_row() -> None:
    chosen = select(make_pool(), "most_negative", 3)
    with pytest.raises(ValueError, match=r"sel.csv: lacks column\(s\) \['weight'\]"):
        training_rows(make_train(), chosen.drop(columns="weight"), selection_source="sel.csv")
    with pytest.raises(ValueError, match="sel.csv: column 'weight' must be finite and >= 0; data row 2"):
        training_rows(make_train(), chosen.assign(weight=[1.0, -1.0, 1.0]), selection_source="sel.csv")


def test_select_condition_reads_k_as_paths_write_it() -> None:
    pool = make_pool(12)
    assert select_condition(pool, "all", "all").equals(select(pool, "all", 12))
    assert select_condition(pool, "most_negative", "5").equals(select(pool, "most_negative", 5))
    assert select_condition(pool, "random", "5", seed=3).equals(select(pool, "random", 5, seed=3))
    empty = select_condition(pool, "none", "0")
    assert empty.empty and list(empty.columns) == list(OUTPUT_COLUMNS)
    with pytest.raises(ValueError, match=r"selection.k = 13 is larger than the external pool \(12 molecules in ext.csv"):
        select_condition(pool, "random", "13", source="ext.csv")

"""Tests for molinfluence.metrics: metric values, the paired multi-seed summary and its Markdown table."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from molinfluence.grid import Condition
from molinfluence.metrics import (
    RUN_COLUMNS,
    correlation_defined,
    markdown_table,
    per_run_table,
    regression_metrics,
    summarize_runs,
    topk_overlap,
)


def make_runs(
    effects: dict[tuple[str, int], float] | None = None,
    *,
    seeds: range = range(8),
    inits: tuple[str, ...] = ("pretrained",),
    strategies: tuple[str, ...] = ("most_negative", "random", "most_positive"),
    ks: tuple[int, ...] = (0, 10, 70),
    seed_sd: float = 0.05,
    noise_sd: float = 0.005,
    rng_seed: int = 0,
    with_base: bool = True,
) -> pd.DataFrame:
    """Synthetic per-run metrics: MSE = 0.5 + seed effect (shared by all arms) + arm effect + noise."""
    effects = effects or {}
    rng = np.random.default_rng(rng_seed)
    seed_effect = {s: rng.normal(0.0, seed_sd) for s in seeds}
    rows = []

    def add(init: str, strategy: str, k: int, seed: int, effect: float) -> None:
        mse = 0.5 + seed_effect[seed] + effect + rng.normal(0.0, noise_sd)
        rows.append(
            {"init": init, "strategy": strategy, "k": k, "seed": seed, "mse": mse, "rmse": math.sqrt(mse),
             "mae": 0.8 * math.sqrt(mse), "r2": 1.0 - mse / 1.2, "n_added": k}
        )

    for seed in seeds:
        if with_base:
            add("base", "none", 0, seed, 0.0)
        for init in inits:
            for k in ks:
                for strategy in strategies:
                    add(init, strategy, k, seed, effects.get((strategy, k), 0.0))
    return pd.DataFrame(rows)


def row_of(summary: pd.DataFrame, init: str, strategy: str, k: int) -> pd.Series:
    hit = summary[(summary["init"] == init) & (summary["strategy"] == strategy) & (summary["k"] == k)]
    assert len(hit) == 1
    return hit.iloc[0]


def aligned(runs: pd.DataFrame, init: str, a: tuple[str, int], b: tuple[str, int], metric: str = "mse"):
    """Independent reference pairing: pivot by seed and align two arms."""
    sub = runs[runs["init"] == init]
    x = sub[(sub["strategy"] == a[0]) & (sub["k"] == a[1])].set_index("seed")[metric]
    y = sub[(sub["strategy"] == b[0]) & (sub["k"] == b[1])].set_index("seed")[metric]
    common = x.index.intersection(y.index)
    return x.loc[common].to_numpy(), y.loc[common].to_numpy()


# --- regression_metrics ------------------------------------------------------------------------------


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(2.0, 1.2, 500)
    pred = y + rng.normal(0.1, 0.6, 500)
    m = regression_metrics(y, pred)
    assert m["mse"] == pytest.approx(mean_squared_error(y, pred), rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, pred)), rel=1e-12)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-12)
    assert m["r2"] == pytest.approx(r2_score(y, pred), rel=1e-12)
    assert set(m) == {"mse", "rmse", "mae", "r2"}


def test_regression_metrics_edge_cases_and_bad_input() -> None:
    assert regression_metrics([1.0, 2.0], [1.0, 2.0]) == {"mse": 0.0, "rmse": 0.0, "mae": 0.0, "r2": 1.0}
    assert math.isnan(regression_metrics([3.0, 3.0], [3.0, 2.0])["r2"])  # R² undefined for constant truth
    with pytest.raises(ValueError, match="empty"):
        regression_metrics([], [])
    with pytest.raises(ValueError, match="3 values but y_pred has 2"):
        regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="y_pred.*NaN"):
        regression_metrics([1.0, 2.0], [1.0, np.nan])


# --- summarize_runs: statistics ----------------------------------------------------------------------


def test_summary_means_sds_and_counts_match_numpy() -> None:
    runs = make_runs()
    summary = summarize_runs(runs)
    assert len(summary) == 1 + 3 * 3  # base + strategies x k
    for _, row in summary.iterrows():
        g = runs[(runs["init"] == row["init"]) & (runs["strategy"] == row["strategy"]) & (runs["k"] == row["k"])]
        assert row["n_runs"] == len(g) == 8
        for m in ("mse", "rmse", "mae", "r2"):
            assert row[f"mean_{m}"] == pytest.approx(np.mean(g[m]), rel=1e-12)
            assert row[f"sd_{m}"] == pytest.approx(np.std(g[m], ddof=1), rel=1e-12)
        assert row["n_added"] == row["k"] == row["n_added_min"] == row["n_added_max"]
    assert summary.iloc[0]["init"] == "base"


def test_known_difference_is_detected_and_matches_scipy() -> None:
    runs = make_runs({("most_negative", 70): -0.02})
    row = row_of(summarize_runs(runs), "pretrained", "most_negative", 70)
    x, y = aligned(runs, "pretrained", ("most_negative", 70), ("random", 70))
    ref = stats.ttest_rel(x, y)
    assert row["n_pairs_vs_random"] == 8
    assert row["delta_mse_vs_random"] == pytest.approx(np.mean(x - y), rel=1e-12)
    assert row["delta_mse_vs_random"] == pytest.approx(-0.02, abs=0.006)
    assert row["t_mse_vs_random"] == pytest.approx(ref.statistic, rel=1e-10)
    assert row["p_mse_vs_random"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert row["p_mse_vs_random"] < 0.05 and row["p_mse_vs_k0"] < 0.05
    assert row["test_vs_random"].startswith("paired t-test")
    w = stats.wilcoxon(x - y)
    assert row["wilcoxon_mse_vs_random"] == pytest.approx(w.statistic)
    assert row["p_wilcoxon_mse_vs_random"] == pytest.approx(w.pvalue)
    xr, yr = aligned(runs, "pretrained", ("most_negative", 70), ("random", 70), "rmse")
    assert row["p_rmse_vs_random"] == pytest.approx(stats.ttest_rel(xr, yr).pvalue, rel=1e-10)


def test_no_difference_is_not_detected() -> None:
    runs = make_runs(rng_seed=1)  # no arm effects at all
    summary = summarize_runs(runs)
    tested = summary["p_mse_vs_random"].dropna()
    assert len(tested) == 4  # most_negative and most_positive at k = 10, 70
    assert (tested > 0.05).all()
    assert (summary["p_mse_vs_k0"].dropna() > 0.05).all()


def test_pairing_by_seed_detects_what_an_unpaired_test_misses() -> None:
    # Large seed-to-seed spread shared by both arms, small consistent benefit of the influence arm.
    runs = make_runs({("most_negative", 70): -0.01}, seed_sd=0.08, noise_sd=0.003, rng_seed=2)
    x, y = aligned(runs, "pretrained", ("most_negative", 70), ("random", 70))
    assert stats.ttest_ind(x, y).pvalue > 0.3  # unpaired: lost in the seed noise
    # Pairing must be by the seed column, not by row order: shuffled rows give the same numbers.
    shuffled = runs.sample(frac=1.0, random_state=7).reset_index(drop=True)
    summary = summarize_runs(shuffled)
    row = row_of(summary, "pretrained", "most_negative", 70)
    assert row["p_mse_vs_random"] < 1e-3
    key = ["init", "strategy", "k"]
    pd.testing.assert_frame_equal(
        summary.sort_values(key).reset_index(drop=True),
        summarize_runs(runs).sort_values(key).reset_index(drop=True),
    )


def test_partial_seed_overlap_pairs_only_common_seeds_and_says_so() -> None:
    runs = make_runs({("most_negative", 70): -0.02})
    runs = runs[~((runs["strategy"] == "random") & (runs["k"] == 70) & (runs["seed"].isin([0, 1, 2])))]
    row = row_of(summarize_runs(runs), "pretrained", "most_negative", 70)
    x, y = aligned(runs, "pretrained", ("most_negative", 70), ("random", 70))
    assert row["n_pairs_vs_random"] == 5 == len(x)
    assert row["p_mse_vs_random"] == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-10)
    assert math.isnan(row["p_wilcoxon_mse_vs_random"])  # 5 pairs < 6
    assert "paired on 5 seeds" in row["note_vs_random"] and "Wilcoxon n/a" in row["note_vs_random"]


def test_fewer_than_two_pairs_gives_nan_and_a_note_not_a_number() -> None:
    runs = make_runs(seeds=range(1))
    row = row_of(summarize_runs(runs), "pretrained", "most_negative", 10)
    assert row["n_pairs_vs_random"] == 1
    assert math.isnan(row["p_mse_vs_random"]) and math.isnan(row["t_mse_vs_random"])
    assert math.isnan(row["sd_mse"])
    assert "fewer than 2" in row["note_vs_random"]
    table = markdown_table(summarize_runs(runs))
    assert "n/a" in table and "fewer than 2" in table


def test_rows_that_are_their_own_control_have_empty_comparisons() -> None:
    summary = summarize_runs(make_runs())
    own_random = summary[(summary["strategy"] == "random") | (summary["k"] == 0)]
    own_k0 = summary[summary["k"] == 0]
    for rows, c in ((own_random, "random"), (own_k0, "k0")):
        assert (rows[f"control_vs_{c}"] == "").all() and (rows[f"note_vs_{c}"] == "").all()
        assert rows[f"delta_mse_vs_{c}"].isna().all() and rows[f"p_mse_vs_{c}"].isna().all()
        assert (rows[f"n_pairs_vs_{c}"] == 0).all()
    # Random rows still get their k = 0 comparison: does adding unselected data help?
    assert row_of(summary, "pretrained", "random", 70)["control_vs_k0"] == "random k=0"


def test_missing_random_control_is_a_note_and_k0_control_choice_is_deterministic() -> None:
    runs = make_runs(strategies=("most_negative",), ks=(10,))
    none_k0 = make_runs(strategies=("none",), ks=(0,), with_base=False)
    summary = summarize_runs(pd.concat([runs, none_k0], ignore_index=True))
    row = row_of(summary, "pretrained", "most_negative", 10)
    assert math.isnan(row["p_mse_vs_random"]) and "no 'random' run" in row["note_vs_random"]
    assert row["control_vs_k0"] == "none k=0" and row["n_pairs_vs_k0"] == 8
    # Several strategies ran at k=0: every row of the init shares one control ('random' before the others).
    both = summarize_runs(make_runs(strategies=("most_negative", "most_positive", "random")))
    assert set(both.loc[both["k"] > 0, "control_vs_k0"]) == {"random k=0"}
    neither = summarize_runs(make_runs(strategies=("most_positive", "most_negative")))
    assert set(neither.loc[neither["k"] > 0, "control_vs_k0"]) == {"most_negative k=0"}
    orphan = make_runs(strategies=("most_negative",), ks=(10,))
    assert "no k=0 run" in summarize_runs(orphan).iloc[1]["note_vs_k0"]


def test_identical_runs_give_an_undefined_test_with_a_note() -> None:
    runs = make_runs(strategies=("most_negative", "random"), ks=(0, 10))
    ctrl = runs[(runs["strategy"] == "random") & (runs["k"] == 10)].set_index("seed")
    mask = (runs["strategy"] == "most_negative") & (runs["k"] == 10)
    for col in ("mse", "rmse", "mae", "r2"):
        runs.loc[mask, col] = ctrl.loc[runs.loc[mask, "seed"], col].to_numpy()
    row = row_of(summarize_runs(runs), "pretrained", "most_negative", 10)
    assert row["delta_mse_vs_random"] == 0.0 and math.isnan(row["p_mse_vs_random"])
    assert "undefined" in row["note_vs_random"]


def test_bad_per_run_input_names_the_problem() -> None:
    runs = make_runs(seeds=range(2))
    with pytest.raises(ValueError, match="n_added"):
        summarize_runs(runs.drop(columns="n_added"))
    with pytest.raises(ValueError, match="more than one run"):
        summarize_runs(pd.concat([runs, runs.iloc[[3]]], ignore_index=True))
    bad = runs.copy()
    bad.loc[4, "mse"] = np.nan
    with pytest.raises(ValueError, match=r"row 4: column 'mse'"):
        summarize_runs(bad)
    bad = runs.copy()
    bad.loc[0, "strategy"] = "random"  # row 0 is a base run
    with pytest.raises(ValueError, match="row 0: init 'base'"):
        summarize_runs(bad)
    with pytest.raises(ValueError, match="no rows"):
        summarize_runs(runs.iloc[:0])


# --- complete grid and Markdown ----------------------------------------------------------------------


def complete_grid() -> pd.DataFrame:
    ks = (0, 10, 70)
    runs = make_runs(
        {("most_negative", 70): -0.02},
        inits=("pretrained", "continued"),
        strategies=("most_negative", "most_positive", "both_ends", "random"),
        ks=ks,
    )
    whole = make_runs(inits=("pretrained", "continued"), strategies=("all", "weighted", "random"), ks=(300,),
                      with_base=False, rng_seed=5)
    return pd.concat([runs, whole], ignore_index=True)


def test_complete_grid_summary_is_nan_free_where_a_comparison_exists() -> None:
    summary = summarize_runs(complete_grid())
    stat_cols = [c for c in summary.columns if c.startswith(("mean_", "sd_"))]
    assert not summary[stat_cols].isna().any().any()
    with_k0 = summary[summary["k"] > 0]
    with_random = with_k0[with_k0["strategy"] != "random"]
    for rows, c in ((with_k0, "k0"), (with_random, "random")):
        cols = [f"{s}_{m}_vs_{c}" for m in ("mse", "rmse") for s in ("delta", "t", "p", "wilcoxon", "p_wilcoxon")]
        assert not rows[cols].isna().any().any(), c
        assert (rows[f"note_vs_{c}"] == "").all()
    # Row order: base, then per init by k, strategies at the same k adjacent.
    assert summary["init"].tolist()[:1] == ["base"]
    pre = summary[summary["init"] == "pretrained"]
    assert pre["k"].is_monotonic_increasing


def test_markdown_table_has_one_row_per_summary_row_and_a_legend() -> None:
    summary = summarize_runs(complete_grid())
    table = markdown_table(summary)
    lines = table.splitlines()
    assert lines[0] == (
        "| Model | n | added | MSE ↓ | RMSE ↓ | MAE ↓ | R² ↑ | ΔMSE vs random | p | ΔMSE vs k=0 | p |"
    )
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert len(body) == len(summary)
    assert body[0].startswith("| base (no external data) | 8 | 0 | ")
    assert all(line.count("|") == 12 for line in body)
    row = row_of(summary, "pretrained", "most_negative", 70)
    expected = f"| pretrained · most_negative · k=70 | 8 | 70 | {row['mean_mse']:.4f} ± {row['sd_mse']:.4f} |"
    assert any(line.startswith(expected) for line in body)
    assert f"{row['delta_mse_vs_random']:+.4f}" in table
    assert "nan" not in table.lower()
    assert "uncorrected for multiple comparisons" in table and "How to read" in table
    n_tests = int(summary["p_mse_vs_random"].notna().sum() + summary["p_mse_vs_k0"].notna().sum())
    assert f"this table holds {n_tests} tests" in table
    base_line = body[0]
    assert base_line.endswith("| — | — | — | — |")


def test_markdown_survives_a_csv_round_trip() -> None:
    summary = summarize_runs(make_runs({("most_negative", 70): -0.02}, seeds=range(3)))
    reread = pd.read_csv(io.StringIO(summary.to_csv(index=False)))
    assert markdown_table(reread) == markdown_table(summary)


def test_markdown_rejects_something_that_is_not_a_summary() -> None:
    with pytest.raises(ValueError, match="mean_mse"):
        markdown_table(make_runs())


# --- per_run_table: the runs' own records ----------------------------------------------------------------------------


def _record(run: Condition, mse: float, n_selected: int) -> dict:
    values = {"mse": mse, "rmse": math.sqrt(mse), "mae": mse / 2, "r2": 0.5, "n_added": n_selected, "best_epoch": 2,
              "epochs_run": 3}
    return {**values, **run.record(), "n_selected": n_selected, "device": "cpu"}


def test_per_run_table_takes_each_condition_from_its_record() -> None:
    base = {"seed": 0, "mse": 1.0, "rmse": 1.0, "mae": 0.5, "r2": 0.1, "best_epoch": 4, "epochs_run": 5}
    runs = {}
    for run in (Condition("fresh", "random", 20, 1), Condition("continue", "all", None, 0),
                Condition("continue", "none", 0, 3), Condition("fresh", "random", 20, 0)):
        n = {None: 294, 0: 0}.get(run.k, run.k)
        runs[f"results/{run.path('x')}/metrics.json"] = _record(run, 0.25 + run.seed, n)
    table = per_run_table(base, runs)
    assert list(table.columns) == ["init", "strategy", "k", "seed", *RUN_COLUMNS]
    assert list(zip(table.init, table.strategy, table.k, table.seed)) == [
        ("base", "none", 0, 0), ("continue", "all", 294, 0), ("continue", "none", 0, 3),
        ("fresh", "random", 20, 0), ("fresh", "random", 20, 1),
    ]  # sorted; the whole pool's k is the number of samples it selected
    assert table.loc[4, "mse"] == 1.25 and table.loc[0, "n_added"] == 0
    summarize_runs(table)  # what the table is for


def test_per_run_table_refuses_a_record_that_contradicts_its_directory_or_lacks_the_condition() -> None:
    base = {"seed": 0, "mse": 1.0, "rmse": 1.0, "mae": 0.5, "r2": 0.1}
    record = _record(Condition("fresh", "random", 20, 1), 0.3, 20)
    with pytest.raises(ValueError, match="records the run fresh/random/k=20 seed 1 but lies in the directory of "
                                         "fresh/random/k=20 seed 2"):
        per_run_table(base, {"results/finetune/fresh/random/k20/seed2/metrics.json": record})
    old = {key: value for key, value in record.items() if key not in ("strategy", "k")}
    with pytest.raises(ValueError, match="does not record the run's condition"):
        per_run_table(base, {"results/finetune/fresh/random/k20/seed1/metrics.json": old})


def test_topk_overlap_counts_shared_most_negative_entries_and_ignores_monotone_rescaling() -> None:
    """The one top-k overlap (influence repeats and the validation's predicted vs measured effects use it)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    assert topk_overlap(a, a, 5) == 1.0
    assert topk_overlap(a, -a, 5) == 0.0  # the 5 most negative of a are the 5 most positive of -a
    assert topk_overlap(a, np.exp(a) * 3.0, 7) == 1.0  # only the ranking matters
    b = a.copy()
    b[np.argsort(a)[:2]] = 10.0  # push two of a's 4 most negative to the top
    assert topk_overlap(a, b, 4) == 0.5
    ties = np.zeros(6)
    assert topk_overlap(ties, np.arange(6.0), 3) == 1.0  # ties resolve in index order, the same on every call


def test_correlation_is_undefined_for_fewer_than_three_pairs_or_a_constant_variable() -> None:
    assert correlation_defined(np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 2.0]))
    assert not correlation_defined(np.array([1.0, 2.0]), np.array([2.0, 1.0]))
    assert not correlation_defined(np.array([1.0, 1.0, 1.0]), np.array([3.0, 1.0, 2.0]))
    assert not correlation_defined(np.array([1.0, 2.0, 3.0]), np.full(3, 0.5))

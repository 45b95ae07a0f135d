"""Tests for molinfluence.plots: every figure is a readable PNG written atomically; bad input is named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from molinfluence.metrics import regression_metrics, summarize_runs
from molinfluence.grid import Condition
from molinfluence.plots import (
    _fit_text,
    best_epoch,
    curve_runs,
    first_run,
    report_figures,
    plot_influence_validation,
    plot_pred_vs_true,
    plot_rmse_vs_k,
    plot_score_histogram,
    plot_training_curves,
)


def per_run() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(3):
        rows.append(("base", "none", 0, seed))
        for strategy in ("most_negative", "random"):
            for k in (0, 10, 70):
                rows.append(("pretrained", strategy, k, seed))
                rows.append(("continued", strategy, k, seed))
    df = pd.DataFrame(rows, columns=["init", "strategy", "k", "seed"])
    df["mse"] = 0.5 + rng.normal(0, 0.03, len(df))
    df["rmse"] = np.sqrt(df["mse"])
    df["mae"] = 0.8 * df["rmse"]
    df["r2"] = 1 - df["mse"] / 1.2
    df["n_added"] = df["k"]
    return df


def training_log(n: int = 12, best: int | None = None) -> pd.DataFrame:
    epochs = np.arange(1, n + 1)
    val = 1.0 / epochs + 0.02 * np.maximum(epochs - 7, 0)
    log = pd.DataFrame({"epoch": epochs, "train_loss": 1.2 / epochs, "val_loss": val})
    if best is not None:
        log["is_best"] = log["epoch"] <= best
    return log


def scores_frame(n: int = 300) -> pd.DataFrame:
    return pd.DataFrame({"ext_index": np.arange(n), "score": np.random.default_rng(1).normal(0, 1e-3, n)})


def preds_frame(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    truth = rng.normal(2, 1.2, n)
    return pd.DataFrame({"truth": truth, "prediction": truth + rng.normal(0, 0.5, n)})


def validation_frame(n: int = 30, with_sd: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    pred = rng.normal(0, 1e-3, n)
    df = pd.DataFrame({"predicted": pred, "actual": 0.8 * pred + rng.normal(0, 3e-4, n)})
    if with_sd:
        df["actual_sd"] = np.abs(rng.normal(2e-4, 5e-5, n))
    return df


# name -> (draw with default data, draw with a given frame, that default frame, the columns it requires)
PLOTS: dict[str, tuple[Callable[[Path], Path], Callable[[pd.DataFrame, Path], Path], pd.DataFrame, list[str]]] = {
    "rmse_vs_k": (
        lambda p: plot_rmse_vs_k(summarize_runs(per_run()), p),
        lambda df, p: plot_rmse_vs_k(df, p),
        summarize_runs(per_run()),
        ["init", "strategy", "k", "mean_rmse", "sd_rmse"],
    ),
    "training_curves": (
        lambda p: plot_training_curves({"seed 0": training_log(best=6), "seed 1": training_log(15)}, p),
        lambda df, p: plot_training_curves({"run": df}, p),
        training_log(),
        ["epoch", "val_loss"],
    ),
    "score_histogram": (
        lambda p: plot_score_histogram(
            scores_frame(), {"most_negative": set(range(70)), "random": {5, 77, 123}, "k=0": set()}, p
        ),
        lambda df, p: plot_score_histogram(df, {"x": {0}}, p),
        scores_frame(),
        ["ext_index", "score"],
    ),
    "pred_vs_true": (
        lambda p: plot_pred_vs_true(preds_frame(), p, "test set"),
        lambda df, p: plot_pred_vs_true(df, p, "t"),
        preds_frame(),
        ["truth", "prediction"],
    ),
    "influence_validation": (
        lambda p: plot_influence_validation(validation_frame(), p, "LiSSA vs retraining"),
        lambda df, p: plot_influence_validation(df, p, "t"),
        validation_frame(),
        ["predicted", "actual"],
    ),
}


@pytest.mark.parametrize("name", list(PLOTS))
def test_writes_a_readable_png_atomically(name: str, tmp_path: Path) -> None:
    draw = PLOTS[name][0]
    target = tmp_path / "figs" / f"{name}.png"  # parent does not exist yet
    assert draw(target) == target
    assert target.stat().st_size > 0
    image = matplotlib.image.imread(target)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0  # not a blank canvas
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left behind


@pytest.mark.parametrize("name", list(PLOTS))
def test_missing_column_and_empty_frame_are_named(name: str, tmp_path: Path) -> None:
    _, draw_with, frame, required = PLOTS[name]
    target = tmp_path / "out.png"
    for col in required:
        with pytest.raises(ValueError, match=f"missing column '{col}'"):
            draw_with(frame.drop(columns=col), target)
    with pytest.raises(ValueError, match="no rows"):
        draw_with(frame.iloc[:0], target)
    assert not target.exists()


@pytest.mark.parametrize("name", ["pred_vs_true", "influence_validation"])
def test_non_finite_values_are_rejected_and_an_old_figure_is_kept(name: str, tmp_path: Path) -> None:
    _, draw_with, frame, required = PLOTS[name]
    target = tmp_path / "out.png"
    target.write_bytes(b"previous figure")
    bad = frame.copy()
    bad.loc[4, required[1]] = np.nan
    with pytest.raises(ValueError, match=f"column '{required[1]}'.*row 4"):
        draw_with(bad, target)
    assert target.read_bytes() == b"previous figure"


def test_same_input_gives_identical_bytes(tmp_path: Path) -> None:
    a = plot_pred_vs_true(preds_frame(), tmp_path / "a.png", "x")
    b = plot_pred_vs_true(preds_frame(), tmp_path / "b.png", "x")
    assert a.read_bytes() == b.read_bytes()


def test_only_png_paths_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.png"):
        plot_pred_vs_true(preds_frame(), tmp_path / "fig.pdf", "x")


def test_title_metrics_match_regression_metrics() -> None:
    df = preds_frame()
    m = regression_metrics(df["truth"], df["prediction"])
    text = _fit_text(df["truth"].to_numpy(), df["prediction"].to_numpy())
    assert text == (
        f"MSE {m['mse']:.4f}   RMSE {m['rmse']:.4f}   MAE {m['mae']:.4f}   R² {m['r2']:.3f}"
    )


def test_best_epoch_is_the_last_flagged_improvement_or_the_lowest_val_loss() -> None:
    log = training_log(12)
    assert best_epoch(log) == int(log.loc[log["val_loss"].idxmin(), "epoch"])
    assert best_epoch(training_log(12, best=5)) == 5
    # Flags read back from a CSV as 0/1 work the same way.
    flagged = training_log(12, best=4)
    flagged["is_best"] = flagged["is_best"].astype(int)
    assert best_epoch(flagged) == 4


def test_training_log_problems_name_the_run(tmp_path: Path) -> None:
    log = training_log()
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_training_curves({}, tmp_path / "t.png")
    with pytest.raises(ValueError, match=r"training log 'seed 3'.*'epoch' has duplicates"):
        plot_training_curves({"seed 3": pd.concat([log, log.iloc[[0]]])}, tmp_path / "t.png")


def test_histogram_rejects_selections_of_unscored_samples(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"selection 'most_negative'.*\[999\]"):
        plot_score_histogram(scores_frame(), {"most_negative": {1, 999}}, tmp_path / "h.png")


def test_rmse_plot_handles_single_runs_and_needs_more_than_the_baseline(tmp_path: Path) -> None:
    one_seed = per_run()
    summary = summarize_runs(one_seed[one_seed["seed"] == 0])  # sd is NaN everywhere
    assert summary["sd_rmse"].isna().all()
    assert plot_rmse_vs_k(summary, tmp_path / "r.png").stat().st_size > 0
    with pytest.raises(ValueError, match="only baseline"):
        plot_rmse_vs_k(summary[summary["init"] == "base"], tmp_path / "r2.png")


# --- which runs the report shows ---------------------------------------------------------------------------------------


def grid_per_run() -> pd.DataFrame:
    df = per_run()
    df["init"] = df["init"].map({"base": "base", "pretrained": "fresh", "continued": "continue"})
    df = df[~((df["k"] == 0) & (df["strategy"] != "none"))]
    df.loc[df["k"] == 0, "strategy"] = "none"
    return df[(df["seed"] > 0) | (df["strategy"] != "random")].reset_index(drop=True)  # random lacks seed 0


def test_first_run_is_the_lowest_seed_of_the_condition() -> None:
    df = grid_per_run()
    summary = summarize_runs(df)
    for _, row in summary.iterrows():
        run = first_run(df, row)
        if row["init"] == "base":
            assert run is None
            continue
        same = df[(df.init == row.init) & (df.strategy == row.strategy) & (df.k == row.k)]
        assert run == Condition.make(row.init, row.strategy, row.k, int(same.seed.min()))
    assert first_run(df, summary[summary.strategy == "random"].iloc[0]).seed == 1
    chosen = curve_runs(summary)
    assert len(chosen) == 2
    for label, row in chosen.items():
        rows = summary[summary.init == row.init]
        assert row.mean_rmse == rows.mean_rmse.min() and label.startswith(f"{row.init}: {row.strategy} k={row.k}")


def test_report_figures_read_the_runs_the_table_names(tmp_path: Path) -> None:
    df = grid_per_run()
    summary = summarize_runs(df)
    results = tmp_path / "results"
    (results / "base").mkdir(parents=True)
    training_log().to_csv(results / "base" / "train_log.csv", index=False)
    for _, row in df[df.init != "base"].iterrows():
        run = Path(Condition.make(row.init, row.strategy, row.k, row.seed).path(str(results)))
        run.mkdir(parents=True)
        training_log(best=3).to_csv(run / "train_log.csv", index=False)
        preds_frame().to_csv(run / "predictions.csv", index=False)
    (results / "selection").mkdir()
    pd.DataFrame({"ext_index": range(70)}).to_csv(results / "selection" / "most_negative_k70.csv", index=False)
    written = report_figures(results, summary, df, scores_frame(), tmp_path / "figures")
    assert [p.name for p in written] == ["rmse_vs_k.png", "training_curves.png", "influence_histogram.png",
                                         "pred_vs_true.png"]
    assert all(p.stat().st_size > 0 for p in written)
    # a run the table names but whose files are missing is an error naming the file, not a silently empty figure
    best = summary[summary.init != "base"].sort_values("mean_rmse").iloc[0]
    (Path(first_run(df, best).path(str(results))) / "train_log.csv").unlink()
    with pytest.raises(FileNotFoundError, match="train_log.csv"):
        report_figures(results, summary, df, scores_frame(), tmp_path / "figures")


def test_group_validation_figure_has_a_panel_per_selector_and_names_a_bad_column(tmp_path: Path) -> None:
    from molinfluence.plots import plot_group_validation
    from molinfluence.validation.groups import draw_subsets, group_table, measure, predicted_effects

    subsets = draw_subsets(range(30), [4, 8], 5, seed=0)
    score = pd.Series(np.linspace(-1, 1, 30))
    runs = measure(subsets, [0, 1], lambda m, s: {"target_loss": 1.0 + (0 if m is None else 0.01 * float(score[m].sum()))
                                                  + 0.001 * s})
    summary, per_subset = group_table(predicted_effects(subsets, {"a": score, "b": -score}), runs, n_boot=100)
    out = plot_group_validation(per_subset, summary, ["a", "b"], tmp_path / "g.png", title="t")
    assert out.stat().st_size > 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="'a'"):
        plot_group_validation(per_subset.assign(a=np.inf), summary, ["a"], tmp_path / "bad.png", title="t")
    assert not (tmp_path / "bad.png").exists()

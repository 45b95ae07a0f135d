"""The planted-label audit (molinfluence/audit.py, workflow/rules/audit.smk): its verdict against a hand-computed case,
a deterministic pool disjoint from the audit's training split, a clear error for an impossible audit.k, and one
Snakemake run of the stage on a tiny config (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from molinfluence import audit
from molinfluence.config import ConfigError

REPO = Path(__file__).resolve().parents[1]

# A pool of 8 rows, 4 clean; selector "good" ranks 0, 1, 3, 2, 6, 4, 5, 7 and "bad" the reverse.
CLEAN = np.array([True, True, False, True, False, False, True, False])
GOOD = [0, 1, 3, 2, 6, 4, 5, 7]
# Test MSE per seed (3 seeds). k = 2: the oracle is better than random in every seed (differences -0.50, -0.48, -0.51)
# -> judged; k = 4: the oracle's differences are +0.1, -0.1, +0.05 -> not significant -> CANNOT JUDGE.
MSE = {
    ("random", 2): [1.00, 1.10, 1.20], ("oracle", 2): [0.50, 0.62, 0.69], ("good", 2): [0.90, 1.00, 1.00],
    ("bad", 2): [1.20, 1.30, 1.50],
    ("random", 4): [1.00, 1.00, 1.00], ("oracle", 4): [1.10, 0.90, 1.05], ("good", 4): [0.80, 0.90, 0.95],
    ("bad", 4): [1.00, 1.00, 1.00],
}


def hand_paired(a, b):
    """Mean difference and two-sided paired t-test p, written out (the reference for audit.paired)."""
    from scipy.stats import t as student

    d = np.asarray(a) - np.asarray(b)
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    return d.mean(), 2 * student.sf(abs(t), len(d) - 1)


def hand_case():
    pool = pd.DataFrame({"ext_index": range(8), "smiles": [f"C{'C' * i}" for i in range(8)],
                         "label": [0.0, 1.0, 9.0, 3.0, -6.0, 8.0, 6.0, -5.0],
                         "true_label": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], "corrupted": ~CLEAN})
    rankings = {"good": pd.DataFrame({"ext_index": GOOD, "rank": range(1, 9)}),
                "bad": pd.DataFrame({"ext_index": GOOD[::-1], "rank": range(1, 9)})}
    runs = pd.DataFrame([dict(arm=arm, k=k, seed=s, mse=v) for (arm, k), vals in MSE.items()
                         for s, v in enumerate(vals)]).sample(frac=1.0, random_state=0)  # any order: paired by seed
    return pool, rankings, runs


def test_the_verdict_matches_a_hand_computed_case():
    pool, rankings, runs = hand_case()
    table = audit.summarise(pool, rankings, runs, [2, 4], 0.05, mode="swap").set_index(["k", "arm"])
    assert list(table.loc[2].index) == ["random", "oracle", "good", "bad"]
    # AUROC: clean rows sit at places 0, 1, 2, 4 and corrupted at 3, 5, 6, 7 of "good": 4 + 4 + 4 + 3 = 15 of 16 pairs
    assert table.loc[(2, "good"), "auroc"] == pytest.approx(15 / 16)
    assert table.loc[(2, "bad"), "auroc"] == pytest.approx(1 / 16)
    assert np.isnan(table.loc[(2, "random"), "auroc"])
    # clean share of the first k, and of the first quarter (8 // 4 = 2 rows)
    assert table.loc[(2, "good"), "clean_share"] == 1.0 and table.loc[(4, "good"), "clean_share"] == 0.75
    assert table.loc[(2, "bad"), "clean_share"] == 0.0 and table.loc[(4, "bad"), "clean_share"] == 0.25
    assert table.loc[(4, "good"), "clean_quarter"] == 1.0 and table.loc[(4, "bad"), "clean_quarter"] == 0.0
    assert table.loc[(2, "oracle"), "clean_share"] == 1.0 and table.loc[(2, "oracle"), "clean_quarter"] == 1.0
    # ΔMSE vs random, paired over seeds, against the written-out t-test
    for k, arm in [(2, "oracle"), (2, "good"), (2, "bad"), (4, "oracle"), (4, "good")]:
        delta, p = hand_paired(MSE[arm, k], MSE["random", k])
        assert table.loc[(k, arm), "delta"] == pytest.approx(delta)
        assert table.loc[(k, arm), "p"] == pytest.approx(p, rel=1e-9)
    assert table.loc[(2, "random"), "delta"] == 0.0
    assert np.isnan(table.loc[(4, "bad"), "p"])  # identical to random in every seed: no test
    assert table.loc[(2, "oracle"), "p"] < 0.05 and table.loc[(4, "oracle"), "p"] > 0.05
    # the verdict: judged at k = 2 (oracle better, p < alpha), CANNOT JUDGE at k = 4
    assert table.loc[2, "judged"].all() and not table.loc[4, "judged"].any()
    assert table.loc[(2, "good"), "mse"] == pytest.approx(np.mean(MSE["good", 2]))
    assert table.loc[(2, "good"), "sd"] == pytest.approx(np.std(MSE["good", 2], ddof=1))
    # mean |label shift| of the corrupted rows: |9-2|, |-6-4|, |8-5|, |-5-7| -> (7 + 10 + 3 + 12) / 4
    assert table["mean_shift"].unique().tolist() == [8.0] and table["base_rate"].unique().tolist() == [0.5]

    report = audit.markdown(table.reset_index(), base={"mse": 1.0, "r2": 0.5}, pool=pool, n_train=20,
                            seeds=[0, 1, 2], alpha=0.05)
    k2, k4 = (line for line in report.splitlines() if line.startswith(("| 2 |", "| 4 |")))
    assert "judges" in k2 and "CANNOT JUDGE" in k4
    good = next(line for line in report.splitlines() if line.startswith("| `good`"))
    assert "0.938" in good and good.count("CANNOT JUDGE") == 1  # only its k = 4 ΔMSE


def test_the_figure_draws_the_table_with_its_nan_controls(tmp_path):
    from molinfluence.plots import plot_audit

    pool, rankings, runs = hand_case()
    table = audit.summarise(pool, rankings, runs, [2, 4], 0.05, mode="swap")  # random's clean share is NaN
    out = plot_audit(table, tmp_path / "audit.png", "hand case")
    assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="missing column 'judged'"):
        plot_audit(table.drop(columns="judged"), tmp_path / "bad.png", "no verdict")


def test_an_oracle_worse_than_random_cannot_judge_even_when_significant():
    pool, rankings, runs = hand_case()
    worse = runs.copy()
    oracle = (worse["arm"] == "oracle") & (worse["k"] == 2)
    worse.loc[oracle, "mse"] = worse.loc[oracle, "seed"].map({0: 1.50, 1: 1.62, 2: 1.69})  # +0.5 in every seed
    table = audit.summarise(pool, rankings, worse, [2, 4], 0.05, mode="swap")
    row = table[(table.k == 2) & (table.arm == "oracle")].iloc[0]
    assert row["p"] < 0.05 and row["delta"] > 0 and not row["judged"]


def test_arms_are_paired_by_seed():
    pool, rankings, runs = hand_case()
    missing = runs[~((runs.arm == "good") & (runs.k == 4) & (runs.seed == 1))]
    with pytest.raises(ValueError, match="'good' at k = 4 has seeds \\[0, 2\\]"):
        audit.summarise(pool, rankings, missing, [2, 4], 0.05, mode="swap")


@pytest.fixture(scope="module")
def training_split(molecules):
    return molecules.assign(row=np.arange(len(molecules)))


@pytest.mark.parametrize("mode", ["swap", "offset", "noise"])
def test_the_pool_is_seeded_exact_and_disjoint_from_the_audits_training_split(training_split, mode):
    kw = dict(pool_fraction=0.25, corrupted=0.5, mode=mode, seed=3)
    rest, pool = audit.split_pool(training_split, **kw)
    again_rest, again_pool = audit.split_pool(training_split, **kw)
    pd.testing.assert_frame_equal(pool, again_pool)
    pd.testing.assert_frame_equal(rest, again_rest)
    n = len(training_split)
    assert len(pool) == round(0.25 * n) and len(rest) == n - len(pool)
    assert set(pool["row"]).isdisjoint(rest["row"]) and set(pool["row"]) | set(rest["row"]) == set(range(n))
    assert list(pool["ext_index"]) == list(range(len(pool)))
    assert int(pool["corrupted"].sum()) == round(0.5 * len(pool))
    truth = training_split.set_index("row").loc[pool["row"], "label"].to_numpy()
    np.testing.assert_array_equal(pool["true_label"].to_numpy(), truth)
    clean = ~pool["corrupted"].to_numpy()
    np.testing.assert_array_equal(pool["label"].to_numpy()[clean], truth[clean])  # clean rows untouched
    assert np.mean(pool["label"].to_numpy()[~clean] != truth[~clean]) > 0.9
    other = audit.split_pool(training_split, **{**kw, "seed": 4})[1]
    assert set(other["row"]) != set(pool["row"])


def test_controls_and_selector_arms_pick_what_they_claim():
    pool, rankings, _ = hand_case()
    for seed in range(3):
        oracle = audit.picks(pool, "oracle", 3, seed, draw_seed=0)
        assert len(set(oracle)) == 3 and CLEAN[oracle].all()
        np.testing.assert_array_equal(audit.picks(pool, "random", 3, seed, 0), audit.picks(pool, "random", 3, seed, 0))
    assert not np.array_equal(audit.picks(pool, "random", 4, 0, 0), audit.picks(pool, "random", 4, 1, 0))
    np.testing.assert_array_equal(audit.picks(pool, "good", 3, 0, 0, rankings["good"]), GOOD[:3])
    chosen = audit.selection_frame(pool, np.array(GOOD[:3]))
    assert list(chosen.columns) == ["ext_index", "smiles", "label", "weight"] and chosen["weight"].eq(1.0).all()
    assert chosen["label"].tolist() == [0.0, 1.0, 3.0]  # the planted labels are what a fine-tune sees


def test_a_k_above_the_pools_clean_rows_is_refused_naming_audit_k(training_split, tmp_path):
    _, pool = audit.split_pool(training_split, pool_size=40, corrupted=0.5, mode="swap", seed=0)
    assert audit.check_k(pool, [10, 20]) == 20
    with pytest.raises(ConfigError, match=r"`audit\.k`: \[21\] larger than the 20 clean rows"):
        audit.check_k(pool, [10, 21])
    with pytest.raises(ConfigError, match=r"audit\.k"):
        audit.picks(pool, "oracle", 21, 0, 0)
    with pytest.raises(ConfigError, match=r"audit\.pool_fraction"):
        audit.split_pool(training_split.head(12), pool_fraction=0.5, mode="swap")
    with pytest.raises(ConfigError, match=r"audit\.mode"):
        audit.split_pool(training_split, mode="flip")
    # the workflow's check, as a user meets it: exit status 1 and a one-line message naming the key
    pool_csv = tmp_path / "pool.csv"
    pool.to_csv(pool_csv, index=False)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "audit_check.py"), "--pool", str(pool_csv), "--k",
                           "20", "40", "--out", str(tmp_path / "k.json")], capture_output=True, text=True)
    assert proc.returncode == 1 and "config key `audit.k`: [40] larger than the 20 clean rows" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "k.json").exists()


def planned(tmp_path, *configs: Path) -> dict[str, int]:
    """Jobs a dry run of the default target plans, by rule."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", *map(str, configs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    start = lines.index("Job stats:") + 3
    return {row.split()[0]: int(row.split()[1]) for row in lines[start:] if len(row.split()) == 2
            and row.split()[0] != "total" and row.split()[1].isdigit()}


def test_the_default_target_runs_the_audit_only_when_enabled(tmp_path):
    demo = REPO / "examples" / "demo.yaml"
    assert not any(rule.startswith("audit") for rule in planned(tmp_path, demo))
    jobs = planned(tmp_path, demo, REPO / "examples" / "audit.yaml")
    from molinfluence.config import schema_default

    arms = 2 + len(schema_default("audit.selectors"))
    assert jobs["audit_finetune"] == arms * len(schema_default("audit.k"))  # one job per (arm, k), seeds inside
    assert jobs["audit_rank"] == arms - 2 and jobs["audit_base"] == jobs["audit_ihvp"] == jobs["audit_summary"] == 1
    assert jobs["train_base"] == 1  # the real base model is still trained once, untouched by the audit


@pytest.mark.slow
def test_the_audit_stage_runs_through_snakemake_and_reports_every_selector(tmp_path):
    """The audit on the integration config (102 training rows -> a 26-row pool, 13 clean): every selector of the
    default list and the two controls in the table, the report and the figure written."""
    from molinfluence.config import schema_default

    overlay = tmp_path / "audit.yaml"
    overlay.write_text(yaml.safe_dump({"audit": {"enabled": True, "k": [6], "seeds": [0, 1]},
                                       "finetune": {"epochs": 1}, "train": {"epochs": 4}}))
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "snakemake", "results/audit/audit.md", "-s", str(REPO / "Snakefile"), "--directory",
           str(work), "--cores", "1", "--configfile", str(REPO / "tests" / "config" / "integration.yaml"), str(overlay)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pd.read_csv(work / "results" / "audit" / "audit.csv")
    selectors = schema_default("audit.selectors")
    assert table["arm"].tolist() == ["random", "oracle", *selectors]
    assert table.set_index("arm").loc["oracle", "clean_share"] == 1.0
    assert table.loc[table.arm.isin(selectors), "auroc"].between(0, 1).all()
    assert np.isfinite(table["mse"]).all() and table["judged"].nunique() == 1
    runs = pd.read_csv(work / "results" / "audit" / "finetune" / "oracle_k6.csv")
    assert runs["seed"].tolist() == [0, 1] and (runs["clean_added"] == 6).all() and (runs["n_added"] == 6).all()
    checked = json.loads((work / "results" / "audit" / "k_checked.json").read_text())
    assert checked == {"k": [6], "pool": 26, "clean": 13, "corrupted": 13}
    report = (work / "results" / "audit" / "audit.md").read_text()
    assert all(f"`{s}`" in report for s in selectors)
    assert (work / "results" / "audit" / "audit.png").stat().st_size > 10_000
    # the audit's base never saw the pool; the real base model was not trained for it
    train = pd.read_csv(work / "results" / "audit" / "train.csv")
    pool = pd.read_csv(work / "results" / "audit" / "pool.csv")
    assert set(train["row"]).isdisjoint(pool["row"])
    assert not (work / "results" / "base").exists()

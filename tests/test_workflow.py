"""The demo workflow end to end through Snakemake, and its rerun-only-stale behaviour.

The `demo` fixture (conftest.py) runs the demo config once in a private copy of the checkout; the staleness tests then
dry-run variations of config and code against that finished run and compare the planned jobs with what must rerun.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

# One fine-tuning job per condition (init, strategy, k), every seed inside it (examples/demo.yaml: 2 seeds).
SCORED_GRID = 2 * 2  # most_negative: inits x k values
GRID = 2 * (1 + 2 * 2)  # inits x (the k = 0 control + most_negative and random at 2 k values)


def test_demo_produces_every_output_with_finite_values(demo):
    r = demo.results
    for path in ["data/data_report.json", "base/metrics.json", "base/model/model.safetensors", "influence/ihvp_stats.json",
                 "influence/hessian_inverse_fast.pt", "influence/external_influence_scores.pt", "influence/top_influence.txt",
                 "metrics.csv", "metrics.md", "metrics_per_run.csv", "figures/rmse_vs_k.png", "figures/training_curves.png",
                 "figures/influence_histogram.png", "figures/pred_vs_true.png"]:
        assert (r / path).is_file() and (r / path).stat().st_size > 0, path

    ihvp = torch.load(r / "influence/hessian_inverse_fast.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in ihvp["ihvp"].values())
    scores = torch.load(r / "influence/external_influence_scores.pt", weights_only=True)
    external = pd.read_csv(r / "data/external.csv")
    assert len(scores["scores"]) == len(external) and torch.isfinite(scores["scores"]).all()
    # The peers' bug: NaN scores made "top-k" the first k rows. Here the ranking is a real ranking.
    order = torch.argsort(scores["scores"]).tolist()
    assert order != sorted(order)
    top = (r / "influence/top_influence.txt").read_text().splitlines()
    assert sum(line.startswith("Sample ") for line in top) == 20

    summary = pd.read_csv(r / "metrics.csv")
    rows = set(zip(summary.init, summary.strategy, summary.k))
    expected = {("base", "none", 0)} | {
        (init, s, k) for init in ("continue", "fresh") for s, k in
        [("none", 0), ("most_negative", 20), ("most_negative", 40), ("random", 20), ("random", 40)]
    }
    assert rows == expected
    for col in ("mean_mse", "mean_rmse", "mean_mae", "mean_r2"):
        assert summary[col].map(math.isfinite).all(), col
    grid = summary[summary.init != "base"]
    assert (grid.n_runs == 2).all()
    assert (grid.loc[grid.strategy != "none", "n_added"] == grid.loc[grid.strategy != "none", "k"]).all()
    scored = grid[grid.strategy == "most_negative"]
    assert scored.p_mse_vs_random.map(math.isfinite).all() and scored.p_mse_vs_k0.map(math.isfinite).all()
    per_run = pd.read_csv(r / "metrics_per_run.csv")
    assert len(per_run) == 1 + 20
    assert "| Model |" in (r / "metrics.md").read_text()


def test_base_training_never_sees_the_test_split(demo):
    log = pd.read_csv(demo.results / "base/train_log.csv")
    metrics = json.loads((demo.results / "base/metrics.json").read_text())
    best = log.loc[log.val_loss.idxmin()]
    assert metrics["best_epoch"] == int(best.epoch)
    assert metrics["best_val_loss"] == pytest.approx(best.val_loss)
    stats = json.loads((demo.results / "influence/ihvp_stats.json").read_text())
    assert stats["target"] == "validation"
    data = json.loads((demo.results / "data/data_report.json").read_text())
    assert stats["n_target"] == data["sizes"]["validation"] and stats["n_train"] == data["sizes"]["train"]


def test_selections_respect_the_influence_ranking(demo):
    scores = pd.read_csv(demo.results / "influence/scores.csv").sort_values(["score", "ext_index"])
    chosen = pd.read_csv(demo.results / "selection/most_negative_k20.csv")
    assert chosen.ext_index.tolist() == scores.ext_index.head(20).tolist()
    r0 = pd.read_csv(demo.results / "selection/random_k20_seed0.csv")
    r1 = pd.read_csv(demo.results / "selection/random_k20_seed1.csv")
    assert len(r0) == len(r1) == 20 and set(r0.ext_index) != set(r1.ext_index)
    assert len(pd.read_csv(demo.results / "selection/none_k0.csv")) == 0


def test_html_report_builds_offline(demo):
    demo.snakemake("--report", str(demo.work / "report.html"))
    html = (demo.work / "report.html").read_text(errors="ignore")
    assert len(html) > 10_000 and "rmse_vs_k" in html


def test_finished_workflow_plans_nothing_and_noop_rerun_is_fast(demo):
    assert demo.planned() == {}
    start = time.perf_counter()
    proc = demo.snakemake("--cores", "2")
    seconds = time.perf_counter() - start
    assert "Nothing to be done" in proc.stdout + proc.stderr
    print(f"no-op rerun: {seconds:.2f} s")
    assert seconds < 5


def _config_variant(demo, tmp_path, **changes):
    cfg = yaml.safe_load(demo.config.read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_adding_a_k_plans_only_its_jobs_and_the_table(demo, tmp_path):
    plan = demo.planned(config=_config_variant(demo, tmp_path, **{"selection.k": [20, 30, 40]}))
    assert plan == {"select_scored": 1, "select_random": 2, "finetune": 2 * 2, "metrics_table": 1, "figures": 1, "all": 1,
                    "recommend": 1}  # the recommended molecules gain k = 30 (the ranking, up to the largest k, stays)


# The demo enables the influence-validation stage: it depends on the scores (and the base model), so it reruns too.
VALIDATION = {"validate_choose": 1, "validate_convex": 1, "validate_full": 2, "validate_estimators": 1,
              "validate_influence": 1, "validate_estimator_table": 1}
# The recommended selector (selection.default, knn_influence) reads the IHVP: its ranking and recommended.csv rerun too.
RECOMMENDED = {"rank_pool": 1, "recommend": 1}
INFLUENCE_DOWNSTREAM = {
    "influence_ihvp": 1, "influence_scores": 1, "select_scored": 2, "finetune": SCORED_GRID,
    "metrics_table": 1, "figures": 1, "all": 1, **VALIDATION, **RECOMMENDED,
}


def test_adding_a_seed_trains_only_the_new_seed(demo, tmp_path):
    """A new seed re-plans every condition job (its outputs gain a seed) but only the new seed trains: the finished
    seeds come back from results/.cache byte for byte, although Snakemake deleted them before the job ran."""
    import shutil

    variant = _config_variant(demo, tmp_path, **{"finetune.seeds": [0, 1, 2]})
    assert demo.planned(config=variant) == {"select_random": 2, "finetune": GRID, "metrics_table": 1, "figures": 1,
                                            "all": 1}
    work = tmp_path / "work"  # a copy of the finished demo: the other tests keep seeing the demo as it was
    shutil.copytree(demo.work, work, symlinks=True)
    runs = sorted(p.parent for p in (work / "results" / "finetune").rglob("seed*/metrics.json"))
    assert len(runs) == 2 * GRID
    before = {(run, name): (run / name).read_bytes() for run in runs for name in ("metrics.json", "predictions.csv",
                                                                                   "train_log.csv")}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(demo.checkout / "Snakefile"), "--directory", str(work),
           "--configfile", str(variant), "--cores", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = sorted((work / "results" / "logs" / "finetune").rglob("*.log"))
    assert len(logs) == GRID
    for log in logs:
        text = log.read_text()
        assert text.count("restored the finished run") == 2 and "seed 2: training" in text, log
        assert "seed 0: training" not in text and "seed 1: training" not in text, log
    for (run, name), content in before.items():
        assert (run / name).read_bytes() == content, run / name
    per_run = pd.read_csv(work / "results" / "metrics_per_run.csv")
    assert len(per_run) == 1 + 3 * GRID and set(per_run.seed[per_run.init != "base"]) == {0, 1, 2}


def test_changing_damping_reruns_influence_and_score_dependent_jobs_only(demo, tmp_path):
    plan = demo.planned(config=_config_variant(demo, tmp_path, **{"influence.damping": 0.02}))
    assert plan == INFLUENCE_DOWNSTREAM


def _edited(demo, module):
    """Context: append a comment to a module of the private checkout, restore it afterwards."""
    import contextlib

    @contextlib.contextmanager
    def edit():
        path = demo.checkout / "molinfluence" / module
        original = path.read_bytes()
        try:
            path.write_bytes(original + b"\n# an edit\n")
            yield
        finally:
            path.write_bytes(original)

    return edit()


def test_editing_the_influence_module_reruns_the_same_jobs_as_a_damping_change(demo):
    with _edited(demo, "influence/solvers.py"):
        # plus the validation baselines: they import influence (not the damping), so a code edit reruns them too
        assert demo.planned() == {**INFLUENCE_DOWNSTREAM, "validate_baseline": 2}
    assert demo.planned() == {}


def test_editing_the_training_module_reruns_training_and_everything_after(demo):
    with _edited(demo, "training.py"):
        plan = demo.planned()
    assert plan == {"train_base": 1, "influence_ihvp": 1, "influence_scores": 1, "select_scored": 2,
                    "finetune": GRID, "metrics_table": 1, "figures": 1, "all": 1, **VALIDATION,
                    "validate_baseline": 2, "rank_pool": 1, "recommend": 1}
    assert "prepare_data" not in plan and "pretrained_encoder" not in plan


def test_killed_base_training_resumes_to_the_uninterrupted_result(demo, tmp_path):
    """SIGKILL snakemake and the training job mid-epoch; --rerun-incomplete finishes and matches the demo's base model."""
    import os
    import signal

    from safetensors.torch import load_file

    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(demo.checkout / "Snakefile"), "--directory", str(work),
           "--configfile", str(demo.config), "--cores", "1"]
    target = "results/base/metrics.json"
    proc = subprocess.Popen([*cmd, target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = work / "results/.resume/base/last.pt"
    deadline = time.time() + 300
    try:
        while not checkpoint.exists():  # first epoch done: the job is now inside epoch 2 or later
            assert proc.poll() is None, "the workflow ended before it could be killed"
            assert time.time() < deadline, "no training checkpoint appeared"
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (work / target).exists()
    assert not (work / "results/base/model/model.safetensors").exists()

    subprocess.run([*cmd, "--unlock"], check=True, capture_output=True)
    done = subprocess.run([*cmd, "--rerun-incomplete", target], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in (work / "results/logs/train_base.log").read_text()
    ours = load_file(work / "results/base/model/model.safetensors")
    reference = load_file(demo.results / "base/model/model.safetensors")
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name
    assert json.loads((work / target).read_text()) == json.loads((demo.results / "base/metrics.json").read_text())
    assert not checkpoint.exists()  # the resume state is removed once the job has finished


def test_same_config_gives_bit_identical_results(demo, tmp_path):
    """A second run of the same config (fresh working directory) reproduces splits, IHVP, scores and metrics exactly."""
    other = tmp_path / "again"
    run = "results/finetune/continue/most_negative/k20/seed0"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(demo.checkout / "Snakefile"), "--directory", str(other),
           "--configfile", str(demo.config), "--cores", "2", "results/influence/scores.csv", f"{run}/metrics.json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = demo.work, other
    for path in ["results/data/train.csv", "results/data/validation.csv", "results/data/test.csv",
                 "results/data/external.csv", "results/base/metrics.json", "results/base/predictions.csv",
                 "results/influence/scores.csv", "results/selection/most_negative_k20.csv",
                 f"{run}/metrics.json", f"{run}/predictions.csv"]:
        assert (a / path).read_bytes() == (b / path).read_bytes(), path
    ihvp_a = torch.load(a / "results/influence/hessian_inverse_fast.pt", weights_only=True)["ihvp"]
    ihvp_b = torch.load(b / "results/influence/hessian_inverse_fast.pt", weights_only=True)["ihvp"]
    assert ihvp_a.keys() == ihvp_b.keys() and all(torch.equal(ihvp_a[k], ihvp_b[k]) for k in ihvp_a)
    scores_a = torch.load(a / "results/influence/external_influence_scores.pt", weights_only=True)["scores"]
    scores_b = torch.load(b / "results/influence/external_influence_scores.pt", weights_only=True)["scores"]
    assert torch.equal(scores_a, scores_b)

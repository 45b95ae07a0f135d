"""Shared fixtures: real molecules (FreeSolv, shipped in molinfluence/datasets/), a tiny randomly initialised
MoLFormer, and two workflow runs: ``demo`` (the small integration config, for plumbing tests) and ``full_demo``
(examples/demo.yaml unchanged, for the one test of the demo's own outputs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FREESOLV = "pkg:molinfluence/datasets/freesolv.csv"
INTEGRATION_CONFIG = Path("tests") / "config" / "integration.yaml"  # relative to a checkout
DEMO_CONFIG = Path("examples") / "demo.yaml"
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_random_features=8)


def freesolv() -> pd.DataFrame:
    """642 real molecules with labels (hydration free energy), columns smiles, label."""
    from molinfluence.data import resolve_source

    return pd.read_csv(resolve_source(FREESOLV))[["smiles", "expt"]].rename(columns={"expt": "label"})


@pytest.fixture(scope="session")
def molecules() -> pd.DataFrame:
    return freesolv()


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, molecules) -> Path:
    """A saved tiny MoLFormer encoder + tokenizer built from the FreeSolv SMILES (what the pretrained stage writes)."""
    from molinfluence.encoder import random_encoder, save_encoder

    encoder, tokenizer, _ = random_encoder(molecules["smiles"], seed=0, **TINY)
    return save_encoder(encoder, tokenizer, tmp_path_factory.mktemp("encoder") / "encoder")


# ----------------------------------------------------------------------------------------------------------------------
# Workflow runs, each once per test session in a private copy of the checkout (tests may edit that copy's modules).

CHECKOUT_PARTS = ("Snakefile", "config.yaml", "workflow", "scripts", "molinfluence", "examples", "profiles", "tests/config")


class Demo:
    """A private checkout copy and a working directory in which ``config`` has been run to completion."""

    def __init__(self, root: Path, config: Path = INTEGRATION_CONFIG) -> None:
        self.checkout = root / "checkout"
        self.work = root / "work"
        self.config = self.checkout / config
        self.seconds = float("nan")

    @property
    def results(self) -> Path:
        return self.work / "results"

    def snakemake(self, *args: str, config: Path | None = None, check: bool = True, timeout: int = 900, **kw):
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "snakemake", "-s", str(self.checkout / "Snakefile"), "--directory", str(self.work),
               "--configfile", str(config or self.config), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def planned(self, *args: str, config: Path | None = None) -> dict[str, int]:
        """Jobs a dry run would execute, by rule ({} when nothing is to be done)."""
        proc = self.snakemake("-n", *args, config=config)
        counts: dict[str, int] = {}
        lines = (proc.stdout + proc.stderr).splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Job stats:"):
                for row in lines[i + 3 :]:
                    parts = row.split()
                    if len(parts) != 2 or parts[0] == "total":
                        break
                    counts[parts[0]] = int(parts[1])
                break
        return counts


def run_workflow(root: Path, config: Path, label: str) -> Demo:
    """Copy the checkout into ``root`` and run ``config`` there end to end with 2 cores, offline."""
    import shutil
    import time

    d = Demo(root, config)
    d.checkout.mkdir()
    for part in CHECKOUT_PARTS:
        src = REPO / part
        dst = d.checkout / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    d.work.mkdir()
    start = time.perf_counter()
    d.snakemake("--cores", "2")
    d.seconds = time.perf_counter() - start
    print(f"\n{label} workflow ({config}): {d.seconds:.0f} s on 2 cores")
    return d


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Demo:
    """The plumbing run: tests/config/integration.yaml (the demo's DAG and job counts on a 200-molecule sample,
    with few epochs), for the staleness, resume, determinism and report tests."""
    return run_workflow(tmp_path_factory.mktemp("integration"), INTEGRATION_CONFIG, "integration")


@pytest.fixture(scope="session")
def full_demo(tmp_path_factory) -> Demo:
    """`snakemake --cores 2 --configfile examples/demo.yaml`, unchanged: what a new user runs first."""
    return run_workflow(tmp_path_factory.mktemp("demo"), DEMO_CONFIG, "demo")

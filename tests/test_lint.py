"""The workflow passes Snakemake's linter (one .smk per stage, conda env and log on every rule, params not globals)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_snakemake_lint_is_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--configfile", "examples/demo.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Lints for" not in out, out[-3000:]


def test_every_rule_has_log_and_benchmark():
    text = "\n".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    rules = text.count("\nrule ")
    assert rules >= 10
    assert text.count("\n    log:\n") == rules
    assert text.count("\n    benchmark:\n") == rules

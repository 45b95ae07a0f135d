"""The workflow on a real SLURM cluster: the demo submitted through profiles/slurm, each non-local rule via sbatch.

A single-node SLURM (Debian packages, brought up by tests/slurm_cluster.py) with one fake GPU runs a reduced demo grid.
The test checks what a cluster user relies on: the run finishes, the results exist, every GPU rule was submitted
with the profile's GPU, CPU, memory and wall-time requests and completed under SLURM, and the cheap rules stayed local.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from slurm_cluster import SlurmCluster, SlurmUnavailable, ensure_slurm_installed

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
GPU_RULES = {"train_base", "influence_ihvp", "influence_scores", "rank_pool", "finetune"}
# prepare_data and pretrained_encoder (they may need the network) and the cheap rules are localrules: only the GPU
# rules are submitted.
SNAKEMAKE_TIMEOUT_S = 420

# The demo, reduced to one condition (continue, most_negative, k=20) + its k=0 control, one seed, two epochs, so the
# whole test stays within a few minutes on 2 cores. Influence on the head only: fast, and its Hessian (a linear
# least-squares head) has the positive curvature LiSSA needs even when the tiny random encoder is far from converged.
CI_CONFIG = {
    "influence": {"params": "head", "depth": 50, "repeats": 1},
    "selection": {"strategies": ["most_negative"], "k": [20]},
    "finetune": {"inits": ["continue"], "seeds": [0], "epochs": 2},
    "validation": {"enabled": False},
    "groups": {"enabled": False},
}
FINETUNE_DIRS = ("continue/most_negative/k20/seed0", "continue/none/k0/seed0")
FINETUNE_JOBS = 2  # one job per condition (init, strategy, k), whatever the number of seeds

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")


def profile_resources() -> dict[str, dict]:
    """set-resources of the slurm profile, rule -> {resource: value}."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    return profile["set-resources"]


def first_attempt_minutes(runtime) -> int:
    """The profile's runtime for attempt 1: an int, or the "<minutes> * attempt" form the profile uses."""
    if isinstance(runtime, int):
        return runtime
    match = re.fullmatch(r"\s*(\d+)\s*\*\s*attempt\s*", str(runtime))
    if match is None:
        raise ValueError(
            f"profiles/slurm/config.yaml: runtime {runtime!r} is neither minutes nor '<minutes> * attempt'"
        )
    return int(match.group(1))


def slurm_time(minutes: int) -> str:
    """Minutes as scontrol prints a TimeLimit ([D-]HH:MM:SS)."""
    days, rest = divmod(minutes, 24 * 60)
    hhmmss = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{hhmmss}" if days else hhmmss


@pytest.fixture
def cluster(tmp_path):
    """A running single-node cluster sized for the profile's largest request, stopped by PID at teardown."""
    try:
        ensure_slurm_installed()
    except SlurmUnavailable as exc:
        if os.geteuid() == 0 and os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI runs as root and must run the SLURM test, but: {exc}")
        pytest.skip(str(exc))
    resources = profile_resources().values()
    memory_mb = max(int(r.get("mem_mb", 1000)) for r in resources)
    cpus = max(
        [os.cpu_count() or 1]
        + [int(r.get("cpus_per_task", 1)) for r in resources]
        + [int(r.get("cpus_per_gpu", 1)) * int(r.get("gpu", 0)) for r in resources]
    )
    with SlurmCluster(tmp_path / "slurm", cpus=cpus, memory_mb=memory_mb, gpus=1) as running:
        yield running


def test_demo_runs_on_slurm_through_the_profile(cluster, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    overlay = work / "ci.yaml"
    overlay.write_text(yaml.safe_dump(CI_CONFIG))
    cmd = [
        "timeout", "-k", "15", str(SNAKEMAKE_TIMEOUT_S),
        sys.executable, "-m", "snakemake",
        "-s", str(REPO / "Snakefile"),
        "--directory", str(work),
        "--workflow-profile", str(PROFILE),
        "--configfile", str(REPO / "examples" / "demo.yaml"), str(overlay),
        # this cluster has no slurmdbd: job states come from squeue (sacct fails; the account guess then gives up)
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "5",
        "--slurm-keep-successful-logs",  # evidence that each job ran under SLURM
        "--retries", "0",  # fail fast in CI instead of resubmitting
    ]  # fmt: skip
    result = subprocess.run(
        cmd, cwd=work, env=cluster.env, capture_output=True, text=True, timeout=SNAKEMAKE_TIMEOUT_S + 60
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"snakemake exited {result.returncode}:\n{log[-8000:]}\n{cluster.diagnostics()}"

    # the results a user asked for
    metrics = pd.read_csv(work / "results" / "metrics.csv")
    assert len(metrics) > 0, "results/metrics.csv has no rows"
    for d in FINETUNE_DIRS:
        run_metrics = json.loads((work / "results" / "finetune" / d / "metrics.json").read_text())
        assert run_metrics, f"results/finetune/{d}/metrics.json is empty"

    # every non-local job went through sbatch, with what the profile asks for, and completed under SLURM
    submissions = SUBMITTED.findall(log)
    assert submissions, f"no sbatch submissions in the snakemake log:\n{log[-4000:]}"
    wanted = profile_resources()
    submitted_rules: dict[str, int] = {}
    for _, job_id, slurm_log in submissions:
        job = cluster.job(job_id)
        comment = job.get("Comment", "")
        assert comment.startswith("rule_"), f"SLURM job {job_id} has no rule comment: {job}"
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        submitted_rules[rule] = submitted_rules.get(rule, 0) + 1
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", f"{rule} (SLURM job {job_id}): {job}"
        assert Path(job["WorkDir"]) == work, f"{rule} ran in {job['WorkDir']}, not the workflow directory"
        assert Path(slurm_log).is_file(), f"{rule}: SLURM log {slurm_log} missing"
        want = wanted[rule]
        assert job["TimeLimit"] == slurm_time(first_attempt_minutes(want["runtime"])), f"{rule}: {job['TimeLimit']}"
        assert job["MinMemoryNode"] == f"{want['mem_mb']}M", f"{rule}: memory {job['MinMemoryNode']}"
        assert job.get("TresPerJob") == "gres:gpu:1", f"{rule} did not request --gpus=1: {job}"
        assert job.get("JOB_GRES") == "gpu:1", f"{rule} was not allocated the GPU: {job}"
        assert job.get("CpusPerTres") == f"gres:gpu:{want['cpus_per_gpu']}", f"{rule}: {job.get('CpusPerTres')}"
    assert set(submitted_rules) == GPU_RULES, f"submitted via sbatch: {submitted_rules}"
    assert submitted_rules["finetune"] == FINETUNE_JOBS
    for rule in GPU_RULES:
        assert list((work / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log")), f"no SLURM log for {rule}"

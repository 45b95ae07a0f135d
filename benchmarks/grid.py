"""Fixed cost per fine-tuned seed: one condition job with N seeds vs N single-seed jobs, measured in one run.

    python benchmarks/grid.py [--seeds 2] [--epochs 1] [--size demo|xl] [--threads N] [--concurrent N]

Runs ``scripts/finetune.py`` as the workflow's ``finetune`` rule does, in fresh result folders (no cache hits):

A. one process that trains seeds 0..N-1 (the condition job);
B. N processes, one seed each (the old one-job-per-seed grid);
C. A's process again with one more seed: the N finished seeds are restored from the cache, one trains;
D. with ``--concurrent C`` > 1: A's job with its seeds trained C at a time in worker processes sharing the device
   (``finetune.concurrent_seeds``), each with ``--threads`` threads (pass the job ``C x threads`` cores, as the rule does).

A seed's fixed cost is its time outside training epochs (start model, tokenising, evaluation, writing: the seed's
time as the script logs it minus its epochs' seconds in train_log.csv) plus its share of the process's time outside
its seeds (process start, imports, device start-up, reading and fingerprinting the inputs). Prints the fixed cost per
seed of A and B and the ratios of B to A. Data: FreeSolv (shipped in molinfluence/datasets/), 300 training / 60 validation /
100 test molecules, 20 random external samples per seed; model: the demo's tiny MoLFormer (``--size demo``) or
MoLFormer-XL's dimensions (``--size xl``: 12 layers, hidden 768; for a GPU). Device as ``train.device: auto``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {
    "demo": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_random_features=16),
    "xl": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=768, num_random_features=32),
}


def prepare(root: Path, size: str):
    """Splits and a saved random encoder under ``root``; returns their paths and the external pool."""
    import pandas as pd
    import torch

    from molinfluence.data import resolve_source
    from molinfluence.files import write_csv
    from molinfluence.molformer import MolformerConfig, MolformerModel
    from molinfluence.tokenizer import build_smiles_tokenizer, save_tokenizer

    data = pd.read_csv(resolve_source("pkg:molinfluence/datasets/freesolv.csv"))[["smiles", "expt"]]
    data = data.rename(columns={"expt": "label"}).sample(frac=1.0, random_state=0).reset_index(drop=True)
    paths = {}
    for name, part in (("train", data.iloc[:300]), ("validation", data.iloc[300:360]), ("test", data.iloc[360:460])):
        paths[name] = root / "data" / f"{name}.csv"
        write_csv(paths[name], part)
    pool = data.iloc[460:].reset_index(drop=True).assign(ext_index=lambda f: range(len(f)))
    encoder = root / "pretrained"
    tokenizer = build_smiles_tokenizer(data["smiles"])
    torch.manual_seed(0)
    MolformerModel(MolformerConfig(vocab_size=len(tokenizer), deterministic_eval=True, **SIZES[size])).save_pretrained(encoder)
    save_tokenizer(tokenizer, encoder)
    paths["start"] = encoder
    return paths, pool


def run_job(results: Path, inputs: dict, seeds: list[int], epochs: int, threads: int,
            concurrent: int = 1) -> tuple[float, float, str]:
    """One finetune.py process; returns (wall seconds, seconds in its seeds' training epochs, its log).

    The log says how long each trained seed took in all (``seed N: trained in S s``)."""
    import pandas as pd

    from molinfluence.grid import Condition

    recipe = {"lr": 1e-3, "epochs": epochs, "batch_size": 16, "patience": 2, "max_length": 202}
    cmd = [sys.executable, str(ROOT / "scripts" / "finetune.py"), "--results", str(results), "--init", "fresh",
           "--strategy", "random", "--k", "20", "--seeds", *map(str, seeds), "--args", json.dumps(recipe),
           "--spec", json.dumps({"pooling": "cls", "head_dropout": 0.0, "max_length": 202}),
           "--start", str(inputs["start"]), "--train", str(inputs["train"]), "--validation", str(inputs["validation"]),
           "--test", str(inputs["test"]), "--code", "benchmark", "--concurrent", str(concurrent),
           "--threads", str(threads * min(concurrent, len(seeds)))]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"finetune.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    trained = [int(s) for s in re.findall(r"seed (\d+): trained in", proc.stdout)]
    epochs_s = sum(float(pd.read_csv(Path(Condition("fresh", "random", 20, s).path(str(results))) / "train_log.csv")
                         ["seconds"].sum()) for s in trained)
    return wall, epochs_s, proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--size", choices=sorted(SIZES), default="demo")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    p.add_argument("--concurrent", type=int, default=1, help="D: also run A's job with this many seeds at a time")
    args = p.parse_args()

    from molinfluence.files import write_csv
    from molinfluence.grid import Condition
    from molinfluence.selection import select

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs, pool = prepare(root / "shared", args.size)
        seeds = list(range(args.seeds))

        def results(name: str) -> Path:
            folder = root / name
            for seed in range(args.seeds + 1):
                run = Condition("fresh", "random", 20, seed)
                write_csv(run.selection_path(str(folder)), select(pool, "random", 20, seed=seed))
            return folder

        a_wall, a_trained, a_log = run_job(results("A"), inputs, seeds, args.epochs, args.threads)
        a_seeds = sum(float(t) for t in re.findall(r"trained in ([0-9.]+) s", a_log))
        b = [run_job(results(f"B{s}"), inputs, [s], args.epochs, args.threads) for s in seeds]
        b_wall, b_trained = sum(w for w, _, _ in b), sum(t for _, t, _ in b)
        c_wall, c_trained, c_log = run_job(root / "A", inputs, [*seeds, args.seeds], args.epochs, args.threads)
        restored = c_log.count("restored the finished run")
        if args.concurrent > 1:
            d_wall, d_trained, _ = run_job(results("D"), inputs, seeds, args.epochs, args.threads, args.concurrent)

    n = args.seeds
    print(f"fine-tune grid, {args.size} model, {args.epochs} epoch(s), {n} seeds, {args.threads} thread(s)")
    print(f"| job shape | wall s | in training epochs s | fixed cost per seed s |")
    print(f"| --- | --- | --- | --- |")
    print(f"| A: one process, {n} seeds | {a_wall:.2f} | {a_trained:.2f} | {(a_wall - a_trained) / n:.2f} |")
    print(f"| B: {n} processes, 1 seed each | {b_wall:.2f} | {b_trained:.2f} | {(b_wall - b_trained) / n:.2f} |")
    print(f"| C: A again + 1 seed ({restored} restored) | {c_wall:.2f} | {c_trained:.2f} | "
          f"{c_wall - c_trained:.2f} (the new seed) |")
    if args.concurrent > 1:
        print(f"| D: one process, {n} seeds, {args.concurrent} at a time (worker processes) | {d_wall:.2f} | "
              f"{d_trained:.2f} (summed over seeds running at once) | {(d_wall - a_trained) / n:.2f} (A's epochs "
              f"subtracted) |")
    print(f"inside A: {a_wall - a_seeds:.2f} s for the process (start, imports, device, inputs), "
          f"{(a_seeds - a_trained) / n:.2f} s per seed outside its epochs (start model, tokenising, evaluation, writing)")
    print(f"B / A wall time: {b_wall / a_wall:.2f}x; fixed cost per seed B / A: "
          f"{(b_wall - b_trained) / max(a_wall - a_trained, 1e-9):.2f}x")
    if args.concurrent > 1:
        print(f"A / D wall time ({args.concurrent} seeds at a time vs one at a time): {a_wall / d_wall:.2f}x")


if __name__ == "__main__":
    main()

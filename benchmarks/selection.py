"""The test bed where the choice of data can be judged (issue 16; logic in molinfluence.bed).

    python benchmarks/selection.py [--config examples/bed.yaml] [--expensive] [--modes swap,offset] [--seeds 5]
                                   [--ks 100,200] [--selectors residual,knn_agreement] [--csv out.csv]
                                   [--groups 10] [--group-ks 100] [--cache-dir results/bed_cache]

Prints the bed's base test R², per planted mode the oracle margin at each k (adding only clean rows vs random picks
of the whole pool, paired over fine-tune seeds; p ≥ alpha: the bed cannot judge that mode at that k), and per
selector its AUROC (clean ranked before corrupted), the clean share of its top k and its ΔMSE vs random at each k
with the paired p; with --groups N (or ``groups:`` in the config), per selector the group validation: the Spearman (LDS)
of its summed score with the measured Δ test MSE of N random pool subsets per size, with its interval and the noise
ceiling. Selectors adaptive_greedy and tracin are skipped unless --expensive. Prints its own timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.bed import BedConfig, report, run_bed  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with BedConfig keys (examples/bed.yaml); flags below override it")
    p.add_argument("--expensive", action="store_true", help="also run adaptive_greedy and tracin")
    p.add_argument("--modes", help="comma-separated: swap,offset,noise")
    p.add_argument("--ks", help="comma-separated k values")
    p.add_argument("--seeds", type=int, help="fine-tune seeds (paired)")
    p.add_argument("--selectors", help="comma-separated selector names (default: every cheap one)")
    p.add_argument("--groups", type=int, help="group validation: random pool subsets per size (0: off)")
    p.add_argument("--group-ks", help="comma-separated subset sizes of the group validation (default: --ks)")
    p.add_argument("--threads", type=int)
    p.add_argument("--cache-dir", default="results/bed_cache",
                   help="keep the trained base model here and reuse it (empty string: no cache)")
    p.add_argument("--csv", help="also write the per-(mode, k, arm) table here")
    args = p.parse_args(argv)

    settings: dict = {}
    if args.config:
        import yaml

        settings = yaml.safe_load(Path(args.config).read_text()) or {}
    if args.modes:
        settings["modes"] = args.modes.split(",")
    if args.ks:
        settings["ks"] = [int(k) for k in args.ks.split(",")]
    if args.seeds is not None:
        settings["seeds"] = args.seeds
    if args.selectors:
        settings["selectors"] = args.selectors.split(",")
    if args.threads is not None:
        settings["threads"] = args.threads
    if args.groups is not None:
        settings["groups"] = args.groups
    if args.group_ks:
        settings["group_ks"] = [int(k) for k in args.group_ks.split(",")]
    cfg = BedConfig.from_dict(settings)
    t0 = time.perf_counter()
    result = run_bed(cfg, expensive=args.expensive, cache_dir=args.cache_dir or None,
                     log=lambda m: print(m, flush=True))
    print()
    print(report(result, cfg))
    if args.csv:
        from molinfluence.files import atomic_path

        with atomic_path(args.csv) as tmp:
            result["rows"].to_csv(tmp, index=False)
        if result["groups"] is not None:
            with atomic_path(Path(args.csv).with_suffix(".groups.csv")) as tmp:
                result["groups"].to_csv(tmp, index=False)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s (threads {cfg.threads})")


if __name__ == "__main__":
    main()

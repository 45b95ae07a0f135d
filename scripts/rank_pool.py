"""Rank the external pool with one selector of molinfluence.selectors (the base model's view of which molecules are
believable and helpful): ``rank_pool.py --selector S --k K --model BASE_DIR --train CSV --target CSV --external CSV
[--ihvp PT] [--influence JSON] [--finetune JSON] [--options JSON] [--seed N] [--device auto] [--threads N] --out CSV``.

Output columns: ext_index, smiles, label, rank (1 = most recommended), score (the selector's own score, lower = more
recommended), prediction (the base model's). Every pool row is ranked, except by adaptive_greedy, which ranks its
first ``--k`` picks (the largest selection.k: its smaller selections are prefixes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import json_arg, run, set_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--selector", required=True)
    p.add_argument("--k", type=int, required=True, help="the largest selection.k")
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--external", required=True)
    p.add_argument("--ihvp", help="the base model's IHVP (selectors that score by influence)")
    p.add_argument("--influence", type=json_arg, default={}, help="the config's influence section as JSON")
    p.add_argument("--finetune", type=json_arg, default={}, help="the fine-tune recipe (train section) as JSON")
    p.add_argument("--options", type=json_arg, default={}, help="selection.selectors as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    set_threads(args.threads)

    import pandas as pd

    from molinfluence.files import write_csv
    from molinfluence.influence import InfluenceArgs, load_ihvp
    from molinfluence.regressor import load_regressor, pick_device
    from molinfluence.selectors import SELECTORS, PoolContext, SelectorOptions, ranking, ranking_length
    from molinfluence.training import TrainConfig

    if args.selector not in SELECTORS:
        raise ValueError(f"selection.strategies: {args.selector!r} is not a selector; choose one of {sorted(SELECTORS)}")
    device = pick_device(args.device)
    model, tokenizer = load_regressor(args.model, device=device)
    frames = {}
    for name, path in (("train", args.train), ("target", args.target), ("pool", args.external)):
        frames[name] = pd.read_csv(path)
        frames[name].attrs["source"] = path
    influence = InfluenceArgs.from_dict({k: v for k, v in args.influence.items() if k != "target"})
    ctx = PoolContext(
        model, tokenizer, frames["train"], frames["target"], frames["pool"], influence,
        finetune=TrainConfig.from_dict(args.finetune) if args.finetune else None, seed=args.seed, device=str(device),
        ihvp=load_ihvp(args.ihvp) if args.ihvp else None, options=SelectorOptions(**args.options), progress=True,
    )
    table = ranking(ctx, args.selector, ranking_length(args.selector, args.k, len(ctx.pool)))
    write_csv(args.out, table[["ext_index", "smiles", "label", "rank", "score", "prediction"]])
    print(f"{args.selector}: ranked {len(table)} of {len(ctx.pool)} external molecules -> {args.out}")


if __name__ == "__main__":
    run(main)

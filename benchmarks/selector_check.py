"""Quick check of the selectors (molinfluence.selectors) on planted pools: AUROC corrupted-vs-clean and the clean share
of each selector's most recommended quarter. Not the test bed (benchmarks/selection.py judges helpfulness by real
fine-tunes); this measures believability only, in a few minutes on one core.

    python benchmarks/selector_check.py --task logp --lipophilicity /work/shared/data/lipophilicity.csv [--seed 0]
    python benchmarks/selector_check.py --task freesolv [--seed 0]

logp: 1,400 Lipophilicity molecules labelled by RDKit's Crippen logP (the model learns it: R² ≈ 0.7); freesolv: the
shipped FreeSolv with the demo's weak model. The pool (``--pool`` molecules) has a seeded half corrupted by
``--mode`` (swap: labels permuted among the corrupted half; offset: ± a shift of 2 label SDs; noise: + N(0, 2 SD)).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from molinfluence.bed import DEMO_SIZES  # noqa: E402


def logp_frame(path: str, n: int, seed: int) -> pd.DataFrame:
    from rdkit import Chem, RDLogger

    from molinfluence.bed import crippen_logp

    RDLogger.DisableLog("rdApp.*")
    smiles = pd.read_csv(path)["SMILES"].sample(frac=1.0, random_state=seed).tolist()
    kept = [s for s in smiles if len(s) <= 120 and Chem.MolFromSmiles(s) is not None][:n]
    return pd.DataFrame({"smiles": kept, "label": crippen_logp(kept)})


def freesolv_frame(seed: int) -> pd.DataFrame:
    from molinfluence.data import resolve_source

    df = pd.read_csv(resolve_source("pkg:molinfluence/datasets/freesolv.csv"))
    return df.rename(columns={"expt": "label"})[["smiles", "label"]].sample(frac=1.0, random_state=seed).reset_index(drop=True)


def finetune_check(args, ctx, base, tokenizer, train, val, test, pool, clean, cfg) -> None:
    """Test MSE after a short continued fine-tune on train + k selected rows, per selector, paired over seeds with
    random picks of the pool at the same k; the oracle adds clean rows only (random order)."""
    import copy

    from scipy.stats import ttest_rel

    from molinfluence.selectors import SELECTORS
    from molinfluence.training import TrainConfig, evaluate, train_regressor

    ks = (len(pool) // 4, len(pool) // 2)
    names = ["random", "oracle", "most_negative", *args.finetune_selectors.split(",")]
    mse: dict[tuple[str, int], list[float]] = {}
    for seed in range(args.finetune_seeds):
        rng = np.random.default_rng(1000 + seed)
        for k in ks:
            for name in names:
                if name == "random":
                    chosen = rng.permutation(len(pool))[:k]
                elif name == "oracle":
                    chosen = rng.permutation(np.flatnonzero(clean))[:k]
                else:
                    chosen = SELECTORS[name](ctx, k)
                model = copy.deepcopy(base)
                rows = pd.concat([train, pool.iloc[chosen][["smiles", "label"]]], ignore_index=True)
                ft = TrainConfig(**{**cfg.to_dict(), "epochs": 6, "patience": 3, "seed": seed})
                train_regressor(model, tokenizer, rows, val, ft, log=lambda _m: None, progress=False)
                mse.setdefault((name, k), []).append(evaluate(model, tokenizer, test, ft, "cpu")[0]["mse"])
    base_mse = evaluate(base, tokenizer, test, cfg, "cpu")[0]["mse"]
    print(f"fine-tune check ({args.finetune_seeds} seeds, continue, 6 epochs): base test MSE {base_mse:.4f}")
    for k in ks:
        ref = np.array(mse[("random", k)])
        for name in names:
            vals = np.array(mse[(name, k)])
            p = ttest_rel(vals, ref).pvalue if name != "random" else float("nan")
            print(f"  k={k:4d} {name:18s} test MSE {vals.mean():.4f} ± {vals.std(ddof=1):.4f}  "
                  f"Δ vs random {np.mean(vals - ref):+.4f} (paired p {p:.3f})  clean share {clean[SELECTORS[name](ctx, k)].mean() if name in SELECTORS else float('nan'):.2f}",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["logp", "freesolv"], default="logp")
    p.add_argument("--lipophilicity", default="/work/shared/data/lipophilicity.csv")
    p.add_argument("--n", type=int, default=1400)
    p.add_argument("--pool", type=int, default=360)
    p.add_argument("--mode", default="swap", choices=["swap", "offset", "noise"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-seed", type=int, default=0, help="seed of the encoder's weights and the training run")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--finetune-seeds", type=int, default=0,
                   help="also fine-tune (continue) on train + each selection over this many seeds and print test MSE")
    p.add_argument("--finetune-selectors", default="residual,knn_agreement,consensus")
    p.add_argument("--dump", help="write the per-row quantities (npz) for offline analysis")
    p.add_argument("--selectors", default="most_negative,residual,knn_agreement,believable_helpful,knn_influence,clipped_influence,tracin,adaptive_greedy")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from molinfluence.bed import auroc, plant
    from molinfluence.encoder import random_encoder
    from molinfluence.influence import InfluenceArgs
    from molinfluence.regressor import MolformerRegressor
    from molinfluence.selectors import SELECTORS, PoolContext
    from molinfluence.training import TrainConfig, evaluate, train_regressor

    df = logp_frame(args.lipophilicity, args.n, args.seed) if args.task == "logp" else freesolv_frame(args.seed)
    pool_n = args.pool if args.task == "logp" else len(df) // 4
    pool, rest = df.iloc[:pool_n].reset_index(drop=True), df.iloc[pool_n:].reset_index(drop=True)
    n_val = n_test = len(rest) // 8
    val, test, train = rest.iloc[:n_val], rest.iloc[n_val: n_val + n_test], rest.iloc[n_val + n_test:]
    pool, bad = plant(pool, args.mode, 0.5, args.seed, float(train["label"].std()))
    clean = ~bad

    encoder, tokenizer, _ = random_encoder(df["smiles"], seed=args.model_seed, max_length=202, **DEMO_SIZES)
    model = MolformerRegressor(encoder)
    cfg = TrainConfig(lr=1e-3, epochs=args.epochs, batch_size=32, patience=args.patience, seed=args.model_seed,
                      device="cpu")
    t0 = time.perf_counter()
    train_regressor(model, tokenizer, train, val, cfg, log=lambda _m: None, progress=False)
    r2 = evaluate(model, tokenizer, test, cfg, "cpu")[0]["r2"]
    print(f"task {args.task} ({args.mode}), seed {args.seed}: train {len(train)}, validation {len(val)}, pool {len(pool)} "
          f"({bad.sum()} corrupted, mean |shift| {np.abs(pool['label'] - df.iloc[:pool_n]['label'].to_numpy()).mean():.2f}); "
          f"base test R² {r2:.3f} ({time.perf_counter() - t0:.0f} s)")
    ctx = PoolContext(model, tokenizer, train, val, pool, InfluenceArgs(method="cg", damping=0.01),
                      finetune=TrainConfig(**{**cfg.to_dict(), "epochs": 3}), seed=args.seed)
    quarter = len(pool) // 4
    print(f"{'selector':20s} {'AUROC':>6s} {'clean@k/8':>9s} {'clean@k/4':>9s} {'seconds':>8s}")
    for name in args.selectors.split(","):
        t0 = time.perf_counter()
        if name == "adaptive_greedy":
            order = SELECTORS[name](ctx, quarter)
            au = float("nan")
        else:
            order = SELECTORS[name](ctx, len(pool))
            au = auroc(order, clean)
        c8, c4 = clean[order[: quarter // 2]].mean(), clean[order[:quarter]].mean()
        print(f"{name:20s} {au:6.3f} {c8:9.2f} {c4:9.2f} {time.perf_counter() - t0:8.1f}", flush=True)
    if args.finetune_seeds:
        finetune_check(args, ctx, model, tokenizer, train, val, test, pool, clean, cfg)
    if args.dump:
        from molinfluence.selectors import knn_score

        np.savez(args.dump, clean=clean, influence=ctx.influence_scores(), r_pool=ctx.residuals("pool"),
                 r_val=ctx.residuals("target"), knn=knn_score(ctx), y_pool=pool["label"].to_numpy(),
                 y_train=train["label"].to_numpy(), f_pool=ctx.features("pool"), f_train=ctx.features("train"),
                 f_val=ctx.features("target"), y_val=val["label"].to_numpy(), p_train=ctx.predictions("train"),
                 p_val=ctx.predictions("target"))


if __name__ == "__main__":
    main()

"""Train a regressor (base training or one fine-tuning run), evaluate it on the test split, write results atomically.

    train.py --args JSON --spec JSON --init fresh|continue --encoder DIR --train CSV --validation CSV --test CSV
             [--extra SELECTION.CSV] [--resume-dir DIR] [--threads N] [--out-model DIR]
             --out-metrics JSON --out-predictions CSV --out-log CSV

``--init fresh`` puts a new seeded head on the pretrained encoder in ``--encoder``; ``--init continue`` loads the
trained regressor directory in ``--encoder`` (the base model). ``--extra`` adds selected external samples (columns
smiles, label, weight) to the training split; rows with weight 0 are not added.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import json_arg, run, set_threads  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--args", type=json_arg, required=True, help="training recipe (TrainConfig fields) as JSON")
    p.add_argument("--spec", type=json_arg, required=True, help="head/pooling spec (RegressorSpec fields) as JSON")
    p.add_argument("--init", choices=("fresh", "continue"), required=True)
    p.add_argument("--encoder", required=True, help="pretrained encoder dir (fresh) or trained regressor dir (continue)")
    p.add_argument("--train", required=True)
    p.add_argument("--validation", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--extra", help="selected external samples to add to the training split")
    p.add_argument("--resume-dir", help="where to keep the resume checkpoint (outside the declared outputs)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-model")
    p.add_argument("--out-metrics", required=True)
    p.add_argument("--out-predictions", required=True)
    p.add_argument("--out-log", required=True)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    set_threads(args.threads)

    import pandas as pd

    from molinfluence.files import atomic_path, write_csv, write_json
    from molinfluence.regressor import RegressorSpec, initial_model, save_regressor
    from molinfluence.training import TrainConfig, evaluate, pick_device, train_regressor

    cfg = TrainConfig.from_dict(args.args)
    splits = {name: pd.read_csv(getattr(args, name)) for name in ("train", "validation", "test")}
    for name, frame in splits.items():
        frame.attrs["source"] = getattr(args, name)  # error messages name the file
    train = splits["train"][["smiles", "label"]]
    weights = None
    n_selected = n_added = 0
    if args.extra:
        extra = pd.read_csv(args.extra)
        missing = {"smiles", "label", "weight"} - set(extra.columns)
        if missing:
            raise ValueError(f"{args.extra}: selection file lacks column(s) {sorted(missing)}")
        n_selected = len(extra)
        extra = extra[extra["weight"] > 0]
        n_added = len(extra)
        if n_added:
            weights = [1.0] * len(train) + extra["weight"].astype(float).tolist()
            source = f"{args.train} (rows 1-{len(train)}) + {args.extra} (the rows after)"
            train = pd.concat([train, extra[["smiles", "label"]]], ignore_index=True)
            train.attrs["source"] = source
            if all(w == 1.0 for w in weights):
                weights = None

    model, tokenizer = initial_model(args.init, args.encoder, RegressorSpec(**args.spec), seed=cfg.seed)

    print(f"init={args.init} from {args.encoder}; {len(train)} training molecules ({n_added} external added)")
    result = train_regressor(
        model, tokenizer, train, splits["validation"], cfg, weights=weights, checkpoint_dir=args.resume_dir
    )
    device = pick_device(cfg.device)
    metrics, predictions = evaluate(model, tokenizer, splits["test"], cfg, device)
    metrics.update(
        init=args.init,
        seed=cfg.seed,
        n_train=len(train),
        n_selected=n_selected,
        n_added=n_added,
        n_test=len(splits["test"]),
        best_epoch=result.best_epoch,
        best_val_loss=result.best_val_loss,
        epochs_run=len(result.history),
        stopped_early=result.stopped_early,
        device=str(device),
    )
    print("test metrics: " + ", ".join(f"{k}={metrics[k]:.4f}" for k in ("mse", "rmse", "mae", "r2")))

    if args.out_model:
        with atomic_path(args.out_model, directory=True) as tmp:
            save_regressor(model.cpu(), tokenizer, tmp)
    write_csv(args.out_log, result.history)
    write_csv(args.out_predictions, predictions)
    write_json(args.out_metrics, metrics)  # last: its presence means the run finished
    if args.resume_dir:
        shutil.rmtree(args.resume_dir, ignore_errors=True)


if __name__ == "__main__":
    run(main)

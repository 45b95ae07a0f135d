"""Compute the inverse-curvature-vector product s = (C + λI)⁻¹ v at the base model (C: influence.curvature).

    influence_ihvp.py --args INFLUENCE_JSON --model BASE_DIR --train CSV --target CSV --target-name validation
                      [--device auto] [--threads N] [--no-truncation] --out hessian_inverse_fast.pt --out-stats JSON

C is the Gauss-Newton matrix (default) or the Hessian of the mean training loss over the training split, v the
gradient of the mean loss over the target split (validation by default). The .pt file holds s per parameter with its
metadata ("holds" says what s is for the method; never a matrix); the JSON holds the solver diagnostics (norm,
relative residual, spectrum estimates, cost in hvp_full_equivalents, top-k stability across repeats, convergence).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import add_base_inputs, json_arg, load_base_inputs, run, set_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--args", type=json_arg, required=True, help="the config's influence section as JSON")
    add_base_inputs(p)
    p.add_argument("--out", required=True)
    p.add_argument("--out-stats", required=True)
    p.add_argument("--factors-dir", default=None,
                   help="influence.method ekfac: where kronfluence's factors are kept and reused, named after the model "
                        "and split they were fitted on (default: ekfac_factors/ beside --out)")
    args = p.parse_args()
    set_threads(args.threads)

    from molinfluence.files import write_json
    from molinfluence.influence import InfluenceArgs, compute_ihvp, save_ihvp

    if args.target_name == "test":
        print("WARNING: the influence target is the test split; the reported test metrics are then not independent "
              "of the selection (this reproduces the original report).", file=sys.stderr)
    inf_args = InfluenceArgs.from_dict(args.args)
    model, _, splits = load_base_inputs(args)
    train, target = splits["train"], splits["target"]
    factors_dir = args.factors_dir or str(Path(args.out).parent / "ekfac_factors")
    result = compute_ihvp(model, train, target, inf_args, progress=True, factors_dir=factors_dir)
    save_ihvp(result, args.out)
    write_json(args.out_stats, {"args": result.args, **result.stats})
    s = result.stats
    print(f"{s['method']} on {s['curvature']}: |s| = {s['norm']:.6g}, min {s['min']:.6g}, max {s['max']:.6g} over "
          f"{s['n_params']:,} parameters; relative residual {s['relative_residual']:.3g}; "
          f"{s['hvp_full_equivalents']:.3g} full-split curvature products; {s['seconds']:.1f} s")


if __name__ == "__main__":
    run(main)

# Influence validation (optional, validation.enabled): does the score predict the measured effect of adding a sample?
# m external samples spread over the score range; for each, continued training with and without it (per-seed
# baselines, then chunks of samples with every seed inside), and the convex reference (head on frozen features,
# damped objective minimised to convergence, head-only IHVP at its optimum) in one job; a summary correlates
# predicted and measured effects, with bootstrap intervals and the noise of the measurement; validate_estimators
# scores the same samples with every estimator of validation.estimators, compared against the same retraining.

import math

VAL = config["validation"]
VAL_DIR = f"{R}/validation"
VAL_TARGET = f"{R}/data/{TARGET_SPLIT}.csv"
VAL_SEEDS = " ".join(str(s) for s in VAL["seeds"])
# What a retraining run depends on: changing m, the bootstrap or the chunking reruns no baseline.
VAL_RECIPE = jarg({k: VAL[k] for k in ("steps", "lr", "weight_decay", "batch_size", "train_mode")})
VAL_CHUNKS = range(math.ceil(VAL["m"] / VAL["chunk_size"]))  # one full-model job per chunk of chosen samples


localrules:
    validate_choose,
    validate_influence,


rule validate_choose:
    input:
        scores=rules.influence_scores.output.table,
    output:
        f"{VAL_DIR}/chosen.csv",
    params:
        py=PY,
        m=VAL["m"],
        seed=VAL["seed"],
        script=script("validate_choose"),
        code=code("validate_choose"),
    conda:
        ENV
    log:
        f"{R}/logs/validation/choose.log",
    benchmark:
        f"{R}/benchmarks/validation/choose.tsv"
    shell:
        "{params.py:q} {params.script:q} --scores {input.scores:q} --m {params.m} --seed {params.seed} --out {output:q}"
        " > {log:q} 2>&1"


rule validate_baseline:
    input:
        model=rules.train_base.output.model,
        train=rules.prepare_data.output.train,
        target=VAL_TARGET,
    output:
        f"{VAL_DIR}/full/baseline_seed{{seed}}.csv",
    params:
        py=PY,
        recipe=VAL_RECIPE,
        target=TARGET_SPLIT,
        device=config["train"]["device"],
        truncation=TRUNCATION,
        script=script("validate_full"),
        code=code("validate_full"),
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{R}/logs/validation/baseline_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/validation/baseline_seed{{seed}}.tsv"
    shell:
        "{params.py:q} {params.script:q} --recipe {params.recipe:q} --seeds {wildcards.seed} --baseline --model {input.model:q}"
        " --train {input.train:q} --target {input.target:q} --target-name {params.target} --device {params.device:q}"
        " --threads {threads} {params.truncation} --out {output:q} > {log:q} 2>&1"


rule validate_full:
    input:
        model=rules.train_base.output.model,
        train=rules.prepare_data.output.train,
        target=VAL_TARGET,
        chosen=rules.validate_choose.output[0],
    output:
        f"{VAL_DIR}/full/chunk{{chunk}}.csv",
    wildcard_constraints:
        chunk=r"\d+",
    params:
        py=PY,
        recipe=VAL_RECIPE,
        seeds=VAL_SEEDS,
        chunk_size=VAL["chunk_size"],
        target=TARGET_SPLIT,
        device=config["train"]["device"],
        truncation=TRUNCATION,
        script=script("validate_full"),
        code=code("validate_full"),
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{R}/logs/validation/full_chunk{{chunk}}.log",
    benchmark:
        f"{R}/benchmarks/validation/full_chunk{{chunk}}.tsv"
    shell:
        "{params.py:q} {params.script:q} --recipe {params.recipe:q} --seeds {params.seeds} --chosen {input.chosen:q}"
        " --chunk {wildcards.chunk} --chunk-size {params.chunk_size} --model {input.model:q} --train {input.train:q}"
        " --target {input.target:q} --target-name {params.target} --device {params.device:q} --threads {threads}"
        " {params.truncation} --out {output:q} > {log:q} 2>&1"


rule validate_convex:
    input:
        model=rules.train_base.output.model,
        train=rules.prepare_data.output.train,
        target=VAL_TARGET,
        chosen=rules.validate_choose.output[0],
    output:
        effects=f"{VAL_DIR}/convex/effects.csv",
        scores=f"{VAL_DIR}/convex/scores.csv",
        stats=f"{VAL_DIR}/convex/stats.json",
    params:
        py=PY,
        # the configured estimator and damping; params is replaced by "head" (score_batch_size is used here)
        influence=jarg(influence_options("validate_convex", INF)),
        seeds=VAL_SEEDS,
        target=TARGET_SPLIT,
        device=config["train"]["device"],
        truncation=TRUNCATION,
        script=script("validate_convex"),
        code=code("validate_convex"),
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{R}/logs/validation/convex.log",
    benchmark:
        f"{R}/benchmarks/validation/convex.tsv"
    shell:
        "{params.py:q} {params.script:q} --influence {params.influence:q} --seeds {params.seeds} --model {input.model:q}"
        " --train {input.train:q} --target {input.target:q} --target-name {params.target} --chosen {input.chosen:q}"
        " --device {params.device:q} --threads {threads} {params.truncation} --out-effects {output.effects:q}"
        " --out-scores {output.scores:q} --out-stats {output.stats:q} > {log:q} 2>&1"


rule validate_estimators:
    input:
        model=rules.train_base.output.model,
        train=rules.prepare_data.output.train,
        target=VAL_TARGET,
        chosen=rules.validate_choose.output[0],
    output:
        scores=f"{VAL_DIR}/estimators/scores.csv",
        stats=f"{VAL_DIR}/estimators/stats.json",
    params:
        py=PY,
        influence=jarg(influence_options("validate_estimators", INF)),
        estimators=jarg({"estimators": VAL["estimators"]}),
        target=TARGET_SPLIT,
        device=config["train"]["device"],
        truncation=TRUNCATION,
        script=script("validate_estimators"),
        code=code("validate_estimators"),
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{R}/logs/validation/estimators.log",
    benchmark:
        f"{R}/benchmarks/validation/estimators.tsv"
    shell:
        "{params.py:q} {params.script:q} --influence {params.influence:q} --estimators {params.estimators:q}"
        " --model {input.model:q} --train {input.train:q} --target {input.target:q} --target-name {params.target}"
        " --chosen {input.chosen:q} --device {params.device:q} --threads {threads} {params.truncation}"
        " --out-scores {output.scores:q} --out-stats {output.stats:q} > {log:q} 2>&1"


rule validate_influence:
    input:
        chosen=rules.validate_choose.output[0],
        train=rules.prepare_data.output.train,
        influence_stats=rules.influence_ihvp.output.stats,
        baselines=expand(f"{VAL_DIR}/full/baseline_seed{{seed}}.csv", seed=VAL["seeds"]),
        chunks=expand(f"{VAL_DIR}/full/chunk{{chunk}}.csv", chunk=VAL_CHUNKS),
        convex_effects=rules.validate_convex.output.effects,
        convex_scores=rules.validate_convex.output.scores,
        convex_stats=rules.validate_convex.output.stats,
        estimator_scores=rules.validate_estimators.output.scores,
        estimator_stats=rules.validate_estimators.output.stats,
    output:
        json=report(
            f"{VAL_DIR}/influence_validation.json",
            category="3. Influence validation",
            caption=str(REPORT / "influence_validation.rst"),
        ),
        table=f"{VAL_DIR}/effects.csv",
        plot=report(
            f"{VAL_DIR}/influence_validation.png",
            category="3. Influence validation",
            caption=str(REPORT / "influence_validation.rst"),
        ),
        plot_convex=report(
            f"{VAL_DIR}/influence_validation_convex.png",
            category="3. Influence validation",
            caption=str(REPORT / "influence_validation_convex.rst"),
        ),
        estimators=report(
            f"{VAL_DIR}/estimators.csv",
            category="3. Influence validation",
            caption=str(REPORT / "influence_estimators.rst"),
        ),
        plot_estimators=report(
            f"{VAL_DIR}/estimators.png",
            category="3. Influence validation",
            caption=str(REPORT / "influence_estimators.rst"),
        ),
    params:
        py=PY,
        recipe=VAL_RECIPE,
        bootstrap=VAL["bootstrap"],
        seed=VAL["seed"],
        topk=VAL["topk"],
        target=TARGET_SPLIT,
        script=script("validate_summary"),
        code=code("validate_summary"),
    conda:
        ENV
    log:
        f"{R}/logs/validation/summary.log",
    benchmark:
        f"{R}/benchmarks/validation/summary.tsv"
    shell:
        "{params.py:q} {params.script:q} --recipe {params.recipe:q} --bootstrap {params.bootstrap} --seed {params.seed}"
        " --chosen {input.chosen:q} --train {input.train:q} --target-name {params.target}"
        " --influence-stats {input.influence_stats:q} --full {input.baselines:q} {input.chunks:q}"
        " --convex-effects {input.convex_effects:q} --convex-scores {input.convex_scores:q}"
        " --convex-stats {input.convex_stats:q} --estimator-scores {input.estimator_scores:q}"
        " --estimator-stats {input.estimator_stats:q} --topk {params.topk} --out-json {output.json:q}"
        " --out-table {output.table:q} --out-plot {output.plot:q} --out-plot-convex {output.plot_convex:q}"
        " --out-estimators {output.estimators:q} --out-plot-estimators {output.plot_estimators:q} > {log:q} 2>&1"

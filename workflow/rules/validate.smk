# Influence validation (optional, validation.enabled): does the score predict the measured effect of adding a sample?
# m external samples spread over the score range; for each, continued training with and without it (per-seed
# baselines, then chunks of samples with every seed inside), and the convex reference (head on frozen features,
# damped objective minimised to convergence, head-only IHVP at its optimum) in one job; a summary correlates
# predicted and measured effects, with bootstrap intervals and the noise of the measurement. validate_estimators
# scores the same samples with every estimator of validation.estimators; its table (validate_estimator_table) is a
# summary of its own, so the influence summary does not wait for the estimator comparison.
# Every job here runs a script: params **job(name) (py, script, code hash); the jobs that start from the base model take
# **validation_inputs() and pass {params.base} (base_args: model, splits, device, truncation) (common.smk).

import math

VAL = config["validation"]
VAL_DIR = f"{R}/validation"
VAL_SEEDS = " ".join(str(s) for s in VAL["seeds"])
# What a retraining run depends on: changing m, the bootstrap or the chunking reruns no baseline.
VAL_RECIPE = jarg({k: VAL[k] for k in ("steps", "lr", "weight_decay", "batch_size", "train_mode")})
VAL_CHUNKS = range(math.ceil(VAL["m"] / VAL["chunk_size"]))  # one full-model job per chunk of chosen samples
VAL_FULL_RUNS = {
    "baselines": expand(f"{VAL_DIR}/full/baseline_seed{{seed}}.csv", seed=VAL["seeds"]),
    "chunks": expand(f"{VAL_DIR}/full/chunk{{chunk}}.csv", chunk=VAL_CHUNKS),
}
VAL_SUMMARY_PARAMS = {"bootstrap": VAL["bootstrap"], "seed": VAL["seed"], "target": TARGET_SPLIT}


localrules:
    validate_choose,
    validate_influence,
    validate_estimator_table,


rule validate_choose:
    input:
        scores=rules.influence_scores.output.table,
    output:
        f"{VAL_DIR}/chosen.csv",
    params:
        **job("validate_choose"),
        m=VAL["m"],
        seed=VAL["seed"],
    conda:
        ENV
    log:
        stage_log("validation", "choose"),
    benchmark:
        stage_benchmark("validation", "choose")
    shell:
        "{params.py:q} {params.script:q} --scores {input.scores:q} --m {params.m} --seed {params.seed} --out {output:q}"
        " > {log:q} 2>&1"


rule validate_baseline:
    input:
        **validation_inputs(chosen=False),
    output:
        f"{VAL_DIR}/full/baseline_seed{{seed}}.csv",
    params:
        **job("validate_full"),
        base=base_args,
        recipe=VAL_RECIPE,
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        stage_log("validation", "baseline_seed{seed}"),
    benchmark:
        stage_benchmark("validation", "baseline_seed{seed}")
    shell:
        "{params.py:q} {params.script:q} --recipe {params.recipe:q} --seeds {wildcards.seed} --baseline {params.base}"
        " --threads {threads} --out {output:q} > {log:q} 2>&1"


rule validate_full:
    input:
        **validation_inputs(),
    output:
        f"{VAL_DIR}/full/chunk{{chunk}}.csv",
    wildcard_constraints:
        chunk=r"\d+",
    params:
        **job("validate_full"),
        base=base_args,
        recipe=VAL_RECIPE,
        seeds=VAL_SEEDS,
        chunk_size=VAL["chunk_size"],
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        stage_log("validation", "full_chunk{chunk}"),
    benchmark:
        stage_benchmark("validation", "full_chunk{chunk}")
    shell:
        "{params.py:q} {params.script:q} --recipe {params.recipe:q} --seeds {params.seeds} --chosen {input.chosen:q}"
        " --chunk {wildcards.chunk} --chunk-size {params.chunk_size} {params.base} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"


rule validate_convex:
    input:
        **validation_inputs(),
    output:
        effects=f"{VAL_DIR}/convex/effects.csv",
        scores=f"{VAL_DIR}/convex/scores.csv",
        stats=f"{VAL_DIR}/convex/stats.json",
    params:
        **job("validate_convex"),
        base=base_args,
        # the configured estimator and damping; params is replaced by "head" (score_batch_size is used here)
        influence=jarg(influence_options("validate_convex", INF)),
        seeds=VAL_SEEDS,
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        stage_log("validation", "convex"),
    benchmark:
        stage_benchmark("validation", "convex")
    shell:
        "{params.py:q} {params.script:q} --influence {params.influence:q} --seeds {params.seeds} --chosen {input.chosen:q}"
        " {params.base} --threads {threads} --out-effects {output.effects:q} --out-scores {output.scores:q}"
        " --out-stats {output.stats:q} > {log:q} 2>&1"


rule validate_estimators:
    input:
        **validation_inputs(),
    output:
        scores=f"{VAL_DIR}/estimators/scores.csv",
        stats=f"{VAL_DIR}/estimators/stats.json",
    params:
        **job("validate_estimators"),
        base=base_args,
        influence=jarg(influence_options("validate_estimators", INF)),
        estimators=jarg({"estimators": VAL["estimators"]}),
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        stage_log("validation", "estimators"),
    benchmark:
        stage_benchmark("validation", "estimators")
    shell:
        "{params.py:q} {params.script:q} --influence {params.influence:q} --estimators {params.estimators:q}"
        " --chosen {input.chosen:q} {params.base} --threads {threads} --out-scores {output.scores:q}"
        " --out-stats {output.stats:q} > {log:q} 2>&1"


rule validate_influence:
    input:
        chosen=rules.validate_choose.output[0],
        train=rules.prepare_data.output.train,
        influence_stats=rules.influence_ihvp.output.stats,
        **VAL_FULL_RUNS,
        convex_effects=rules.validate_convex.output.effects,
        convex_scores=rules.validate_convex.output.scores,
        convex_stats=rules.validate_convex.output.stats,
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
    params:
        **job("validate_summary"),
        **VAL_SUMMARY_PARAMS,
        recipe=VAL_RECIPE,
    conda:
        ENV
    log:
        stage_log("validation", "summary"),
    benchmark:
        stage_benchmark("validation", "summary")
    shell:
        "{params.py:q} {params.script:q} --recipe {params.recipe:q} --bootstrap {params.bootstrap} --seed {params.seed}"
        " --chosen {input.chosen:q} --train {input.train:q} --target-name {params.target}"
        " --influence-stats {input.influence_stats:q} --full {input.baselines:q} {input.chunks:q}"
        " --convex-effects {input.convex_effects:q} --convex-scores {input.convex_scores:q}"
        " --convex-stats {input.convex_stats:q} --out-json {output.json:q} --out-table {output.table:q}"
        " --out-plot {output.plot:q} --out-plot-convex {output.plot_convex:q} > {log:q} 2>&1"


rule validate_estimator_table:
    input:
        chosen=rules.validate_choose.output[0],
        train=rules.prepare_data.output.train,
        influence_stats=rules.influence_ihvp.output.stats,
        **VAL_FULL_RUNS,
        scores=rules.validate_estimators.output.scores,
        stats=rules.validate_estimators.output.stats,
    output:
        table=report(
            f"{VAL_DIR}/estimators.csv",
            category="3. Influence validation",
            caption=str(REPORT / "influence_estimators.rst"),
        ),
        plot=report(
            f"{VAL_DIR}/estimators.png",
            category="3. Influence validation",
            caption=str(REPORT / "influence_estimators.rst"),
        ),
    params:
        **job("validate_estimator_table"),
        **VAL_SUMMARY_PARAMS,
        topk=VAL["topk"],
    conda:
        ENV
    log:
        stage_log("validation", "estimator_table"),
    benchmark:
        stage_benchmark("validation", "estimator_table")
    shell:
        "{params.py:q} {params.script:q} --bootstrap {params.bootstrap} --seed {params.seed} --topk {params.topk}"
        " --chosen {input.chosen:q}"
        " --train {input.train:q} --target-name {params.target} --influence-stats {input.influence_stats:q}"
        " --full {input.baselines:q} {input.chunks:q} --scores {input.scores:q} --stats {input.stats:q}"
        " --out-table {output.table:q} --out-plot {output.plot:q} > {log:q} 2>&1"

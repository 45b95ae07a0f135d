# The planted-label audit (optional, audit.enabled; molinfluence/audit.py): does a selector avoid known-bad data on
# this model and data? A seeded part of the prepared training split becomes a pool with known labels, a seeded share
# corrupted (audit_split); a base model trains on the rest with the base recipe (audit_base, scripts/train.py); every
# audit.selectors entry ranks the pool with it (audit_rank, scripts/rank_pool.py; audit_ihvp for those that read an
# IHVP); each arm -- a selector's first k, k random rows, k clean rows (the oracle) -- is added and fine-tuned from the
# audit base with the fine-tune recipe over audit.seeds (audit_finetune: one job per arm and k); audit_summary judges
# them with the test bed's verdict (molinfluence.bed.judge). audit_check refuses an audit.k above the pool's clean rows
# before anything is fine-tuned (the pool itself does not depend on audit.k, so changing k retrains nothing).
# Helpers (AUD*, audit_*) are in common.smk.


localrules:
    audit_split,
    audit_check,
    audit_summary,


rule audit_split:
    input:
        train=rules.prepare_data.output.train,
    output:
        train=f"{AUD_DIR}/train.csv",
        pool=f"{AUD_DIR}/pool.csv",
    params:
        **job("audit_split"),
        args=jarg({k: AUD[k] for k in ("pool_fraction", "pool_size", "corrupted", "mode", "offset_sd", "noise_sd", "seed")}),
    conda:
        ENV
    log:
        stage_log("audit", "split"),
    benchmark:
        stage_benchmark("audit", "split")
    shell:
        "{params.py:q} {params.script:q} --train {input.train:q} --args {params.args:q}"
        " --out-train {output.train:q} --out-pool {output.pool:q} > {log:q} 2>&1"


rule audit_check:
    input:
        pool=rules.audit_split.output.pool,
    output:
        f"{AUD_DIR}/k_checked.json",
    params:
        **job("audit_check"),
        k=" ".join(str(k) for k in sorted(AUD["k"])),
    conda:
        ENV
    log:
        stage_log("audit", "check"),
    benchmark:
        stage_benchmark("audit", "check")
    shell:
        "{params.py:q} {params.script:q} --pool {input.pool:q} --k {params.k} --out {output:q} > {log:q} 2>&1"


rule audit_base:
    input:
        encoder=rules.pretrained_encoder.output[0],
        train=rules.audit_split.output.train,
        validation=rules.prepare_data.output.validation,
        test=rules.prepare_data.output.test,
    output:
        model=directory(f"{AUD_DIR}/base/model"),
        metrics=f"{AUD_DIR}/base/metrics.json",
        predictions=f"{AUD_DIR}/base/predictions.csv",
        log=f"{AUD_DIR}/base/train_log.csv",
    params:
        **job("train"),
        args=train_args(config["train"]["epochs"], config["train"]["seed"]),
        spec=jarg({k: config["model"][k] for k in ("pooling", "head_dropout", "max_length")}),
        resume=f"{R}/.resume/audit_base",
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        stage_log("audit", "base"),
    benchmark:
        stage_benchmark("audit", "base")
    shell:
        "{params.py:q} {params.script:q} --args {params.args:q} --spec {params.spec:q} --init fresh"
        " --encoder {input.encoder:q} --train {input.train:q} --validation {input.validation:q} --test {input.test:q}"
        " --resume-dir {params.resume:q} --code {params.code} --threads {threads}"
        " --out-model {output.model:q} --out-metrics {output.metrics:q} --out-predictions {output.predictions:q}"
        " --out-log {output.log:q} > {log:q} 2>&1"


rule audit_ihvp:
    input:
        model=rules.audit_base.output.model,
        train=rules.audit_split.output.train,
        target=f"{R}/data/{TARGET_SPLIT}.csv",
    output:
        ihvp=f"{AUD_DIR}/influence/hessian_inverse_fast.pt",
        stats=f"{AUD_DIR}/influence/ihvp_stats.json",
    params:
        **job("influence_ihvp"),
        args=jarg(influence_options("influence_ihvp", INF)),
        target=TARGET_SPLIT,
        device=config["train"]["device"],
        truncation=TRUNCATION,
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        stage_log("audit", "ihvp"),
    benchmark:
        stage_benchmark("audit", "ihvp")
    shell:
        "{params.py:q} {params.script:q} --args {params.args:q} --model {input.model:q} --train {input.train:q}"
        " --target {input.target:q} --target-name {params.target} --device {params.device:q} --threads {threads}"
        " {params.truncation} --out {output.ihvp:q} --out-stats {output.stats:q} > {log:q} 2>&1"


rule audit_rank:
    input:
        unpack(audit_rank_inputs),
        model=rules.audit_base.output.model,
        train=rules.audit_split.output.train,
        target=f"{R}/data/{TARGET_SPLIT}.csv",
        external=rules.audit_split.output.pool,
    output:
        f"{AUD_DIR}/ranking/{{selector}}.csv",
    wildcard_constraints:
        selector=choice(AUD["selectors"]),
    params:
        **job("rank_pool"),
        k=max(AUD["k"]),
        args=audit_rank_args,
        device=config["train"]["device"],
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        stage_log("audit", "rank_{selector}"),
    benchmark:
        stage_benchmark("audit", "rank_{selector}")
    shell:
        "{params.py:q} {params.script:q} --selector {wildcards.selector} --k {params.k} --model {input.model:q}"
        " --train {input.train:q} --target {input.target:q} --external {input.external:q} {params.args:q}"
        " --device {params.device:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule audit_finetune:
    input:
        unpack(audit_arm_inputs),
        checked=rules.audit_check.output[0],
        start=rules.audit_base.output.model,
        train=rules.audit_split.output.train,
        validation=rules.prepare_data.output.validation,
        test=rules.prepare_data.output.test,
        pool=rules.audit_split.output.pool,
    output:
        f"{AUD_DIR}/finetune/{{arm}}_k{{k}}.csv",
    wildcard_constraints:
        arm=choice(AUD_ARMS),
        k=r"\d+",
    params:
        **job("audit_finetune"),
        seeds=" ".join(str(s) for s in AUD["seeds"]),
        draw_seed=AUD["seed"],
        args=train_args(FT["epochs"], None),
        spec=jarg({k: config["model"][k] for k in ("pooling", "head_dropout", "max_length")}),
        ranking=audit_arm_args,
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        stage_log("audit", "finetune_{arm}_k{k}"),
    benchmark:
        stage_benchmark("audit", "finetune_{arm}_k{k}")
    shell:
        "{params.py:q} {params.script:q} --arm {wildcards.arm} --k {wildcards.k} --seeds {params.seeds}"
        " --draw-seed {params.draw_seed} --args {params.args:q} --spec {params.spec:q} --start {input.start:q}"
        " --train {input.train:q} --validation {input.validation:q} --test {input.test:q} --pool {input.pool:q}"
        " {params.ranking} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule audit_summary:
    input:
        pool=rules.audit_split.output.pool,
        train=rules.audit_split.output.train,
        base=rules.audit_base.output.metrics,
        rankings=[f"{AUD_DIR}/ranking/{s}.csv" for s in AUD["selectors"]],
        runs=audit_runs(),
    output:
        table=f"{AUD_DIR}/audit.csv",
        markdown=f"{AUD_DIR}/audit.md",
        figure=f"{AUD_DIR}/audit.png",
    params:
        **job("audit_summary"),
        rankings=lambda w, input: [f"{s}={path}" for s, path in zip(AUD["selectors"], input.rankings)],
        k=" ".join(str(k) for k in sorted(AUD["k"])),
        seeds=" ".join(str(s) for s in AUD["seeds"]),
        alpha=AUD["alpha"],
        mode=AUD["mode"],
    conda:
        ENV
    log:
        stage_log("audit", "summary"),
    benchmark:
        stage_benchmark("audit", "summary")
    shell:
        "{params.py:q} {params.script:q} --pool {input.pool:q} --train {input.train:q} --base-metrics {input.base:q}"
        " --rankings {params.rankings:q} --runs {input.runs:q} --k {params.k} --seeds {params.seeds}"
        " --alpha {params.alpha} --mode {params.mode} --out-table {output.table:q} --out-markdown {output.markdown:q}"
        " --out-figure {output.figure:q} > {log:q} 2>&1"

# Base training: pretrained encoder + a new regression head on the training split, early stopping on validation,
# evaluated once on test. Resume checkpoints live under results/.resume (not a declared output: Snakemake deletes
# declared outputs before a job starts, which would throw the checkpoint away).


TRAIN_CODE = code("train")


rule train_base:
    input:
        encoder=rules.pretrained_encoder.output[0],
        train=rules.prepare_data.output.train,
        validation=rules.prepare_data.output.validation,
        test=rules.prepare_data.output.test,
    output:
        model=directory(f"{R}/base/model"),
        metrics=f"{R}/base/metrics.json",
        predictions=f"{R}/base/predictions.csv",
        log=f"{R}/base/train_log.csv",
    params:
        py=PY,
        args=train_args(config["train"]["epochs"], config["train"]["seed"]),
        spec=jarg({k: config["model"][k] for k in ("pooling", "head_dropout", "max_length")}),
        resume=f"{R}/.resume/base",
        script=script("train"),
        code=TRAIN_CODE,
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{R}/logs/train_base.log",
    benchmark:
        f"{R}/benchmarks/train_base.tsv"
    shell:
        "{params.py:q} {params.script:q} --args {params.args:q} --spec {params.spec:q} --init fresh"
        " --encoder {input.encoder:q} --train {input.train:q} --validation {input.validation:q} --test {input.test:q}"
        " --resume-dir {params.resume:q} --code {params.code} --threads {threads}"
        " --out-model {output.model:q} --out-metrics {output.metrics:q} --out-predictions {output.predictions:q}"
        " --out-log {output.log:q} > {log:q} 2>&1"

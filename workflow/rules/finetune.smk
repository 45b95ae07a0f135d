# The fine-tuning grid: one job per condition (init, strategy, k) trains every seed of finetune.seeds in one process
# (imports, device start-up and reading the splits paid once per condition). Each seed writes its own run directory
# (molinfluence.grid.Condition.path); a seed whose finished result is cached under results/.cache with the same code,
# recipe and inputs is restored instead of retrained, so adding a seed trains only that seed. `continue` starts from
# the trained base model (the report's "same model"), `fresh` from the pretrained encoder with a new head (its "fresh
# model"). Same recipe as base training, with finetune.epochs. Weights only with finetune.keep_models (187 MB each).
# finetune.concurrent_seeds > 1 trains that many seeds at once in worker processes sharing the GPU (and asks for that
# many cores; the job's cores are divided among them), each seed's numbers unchanged.

FINETUNE_CODE = code("finetune")


rule finetune:
    input:
        start=finetune_start,
        selections=finetune_selections,
        train=rules.prepare_data.output.train,
        validation=rules.prepare_data.output.validation,
        test=rules.prepare_data.output.test,
    output:
        **finetune_outputs(),
    params:
        py=PY,
        results=lambda w, output: Condition.results_of(output.metrics[0]),
        seeds=" ".join(str(s) for s in FT["seeds"]),
        args=train_args(FT["epochs"], None),
        spec=jarg({k: config["model"][k] for k in ("pooling", "head_dropout", "max_length")}),
        keep_models="--keep-models" if FT["keep_models"] else "",
        concurrent=FT["concurrent_seeds"],
        script=script("finetune"),
        code=FINETUNE_CODE,
    threads: FT["concurrent_seeds"]
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{run_pattern(f'{R}/logs')}.log",
    benchmark:
        f"{run_pattern(f'{R}/benchmarks')}.tsv"
    shell:
        "{params.py:q} {params.script:q} --results {params.results:q} --init {wildcards.init}"
        " --strategy {wildcards.strategy} --k {wildcards.k} --seeds {params.seeds} --args {params.args:q}"
        " --spec {params.spec:q} --start {input.start:q} --train {input.train:q} --validation {input.validation:q}"
        " --test {input.test:q} --code {params.code} --concurrent {params.concurrent} --threads {threads}"
        " {params.keep_models} > {log:q} 2>&1"

# The fine-tuning grid: every (init, strategy, k, seed) is its own job. `continue` starts from the trained base model
# (the report's "same model"), `fresh` from the pretrained encoder with a new head (its "fresh model"). Same recipe as
# base training, with finetune.epochs. Model weights are kept only with finetune.keep_models (187 MB each at full size).


FT_OUT = "{init}/{strategy}/k{k}/seed{seed}"
_ft_outputs = dict(
    metrics=f"{R}/finetune/{FT_OUT}/metrics.json",
    predictions=f"{R}/finetune/{FT_OUT}/predictions.csv",
    log=f"{R}/finetune/{FT_OUT}/train_log.csv",
)
if FT["keep_models"]:
    _ft_outputs["model"] = directory(f"{R}/finetune/{FT_OUT}/model")


rule finetune:
    input:
        start=finetune_start,
        selection=selection_file,
        train=rules.prepare_data.output.train,
        validation=rules.prepare_data.output.validation,
        test=rules.prepare_data.output.test,
    output:
        **_ft_outputs,
    params:
        py=PY,
        args=lambda w: train_args(FT["epochs"], int(w.seed)),
        spec=jarg({k: config["model"][k] for k in ("pooling", "head_dropout", "max_length")}),
        resume=lambda w: f"{R}/.resume/finetune/{w.init}/{w.strategy}/k{w.k}/seed{w.seed}",
        model_arg=lambda w, output: f"--out-model {shlex.quote(output.model)}" if FT["keep_models"] else "",
        script=script("train"),
        code=TRAIN_CODE,
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{R}/logs/finetune/{FT_OUT}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{FT_OUT}.tsv"
    shell:
        "{params.py:q} {params.script:q} --args {params.args:q} --spec {params.spec:q} --init {wildcards.init}"
        " --encoder {input.start:q} --train {input.train:q} --validation {input.validation:q} --test {input.test:q}"
        " --extra {input.selection:q} --resume-dir {params.resume:q} --threads {threads} {params.model_arg}"
        " --out-metrics {output.metrics:q} --out-predictions {output.predictions:q} --out-log {output.log:q}"
        " > {log:q} 2>&1"
